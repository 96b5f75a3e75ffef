"""A virtual environment over Debian's system Python, made the way docs/jetson.md tells users on JetPack.

``python3 -m venv --system-site-packages`` sees the distribution's OpenCV (built
with GStreamer) and NumPy; the agent's pure-Python needs that the distribution
lacks or ships too old (pydantic 2, structlog) are pip-installed into it at the
versions the project's own venv has. It is cached between runs under
``$XDG_CACHE_HOME/edge-agent-tests`` (one per set of versions), built in a
temporary folder and moved into place, so a half-built one is never used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from contextlib import suppress
from importlib import metadata
from pathlib import Path

SYSTEM_PYTHON = Path("/usr/bin/python3")
NEEDED = ("pydantic", "structlog")
"""What ``agent.core.config`` and ``agent.vision.sources`` import beyond the system's OpenCV and NumPy."""
PIP_TIMEOUT_S = 300.0
PROBE_TIMEOUT_S = 60.0
GSTREAMER_PROBE = (
    "import re, cv2; line = re.search(r'GStreamer:\\s*(\\S+)', cv2.getBuildInformation()); "
    "print(cv2.__version__, line.group(1) if line else 'absent')"
)


class SystemVenvError(RuntimeError):
    """The system Python or its venv cannot run the agent's capture code; the message says why."""


def system_opencv_gstreamer() -> str | None:
    """Why the system Python has no OpenCV with GStreamer, or None when it has one."""
    if not SYSTEM_PYTHON.is_file():
        return f"{SYSTEM_PYTHON} does not exist"
    done = subprocess.run([str(SYSTEM_PYTHON), "-c", GSTREAMER_PROBE], capture_output=True, text=True,
                          timeout=PROBE_TIMEOUT_S, check=False)
    if done.returncode != 0:
        return f"{SYSTEM_PYTHON} has no cv2 (install python3-opencv): {done.stderr.strip().splitlines()[-1:]}"
    version, gstreamer = done.stdout.split()
    if not gstreamer.upper().startswith("YES"):
        return f"{SYSTEM_PYTHON}'s OpenCV {version} was built without GStreamer"
    return None


def pins() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in NEEDED]


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-agent-tests"


def system_venv() -> Path:
    """The venv's python, built on first use; SystemVenvError when pip cannot get what it needs."""
    key = hashlib.sha256(" ".join(pins()).encode()).hexdigest()[:12]
    home = cache_root() / f"system-venv-{key}"
    python = home / "bin" / "python"
    if python.is_file():
        return python
    home.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="building-", dir=home.parent))
    try:
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--system-site-packages", str(building)],
                       check=True, capture_output=True, timeout=PROBE_TIMEOUT_S)
        done = subprocess.run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--only-binary=:all:", *pins()],
            capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False,
        )
        if done.returncode != 0:
            raise SystemVenvError(f"pip could not install {pins()} into a system-site-packages venv: "
                                  f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        with suppress(OSError):  # another run finished first: use that one
            building.rename(home)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return python
