"""The unit file, its drop-in, sysusers.d and tmpfiles.d entries, checked by systemd's own tools
where they are installed (Debian/Ubuntu package ``systemd``) and by reading them everywhere."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import EXIT_USAGE
from agent.core.config import AgentSection, WatchdogSection, load_config

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
UNIT = UNIT_DIR / "edge-agent.service"
CPU_ONLY = UNIT_DIR / "cpu-only.conf"
NETWORK_EXAMPLE = UNIT_DIR / "network.conf.example"
SYSUSERS = UNIT_DIR / "edge-agent.sysusers"
TMPFILES = UNIT_DIR / "edge-agent.tmpfiles"
EXEC_START = "/opt/edge-agent/.venv/bin/edge-agent run --config /etc/edge-agent/config.toml"
TOOL_TIMEOUT_S = 60

Directives = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Directives:
    """systemd's unit syntax: sections, repeatable keys, comments, backslash continuations."""
    sections: Directives = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} is outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{line!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(directives: dict[str, list[str]], key: str) -> str:
    values = directives.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def words(directives: dict[str, list[str]], key: str) -> set[str]:
    return {word for value in directives.get(key, []) for word in value.split()}


def test_the_agent_is_a_notify_service_with_a_watchdog(service: dict[str, list[str]]) -> None:
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": EXEC_START,
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "2",
        "TimeoutStopSec": "20",
        "User": "edge-agent",
        "Group": "edge-agent",
        "StateDirectory": "edge-agent",
        "ConfigurationDirectory": "edge-agent",
        "LoadCredential": "mqtt-password:/etc/edge-agent/mqtt-password",
        "UMask": "0027",
    }
    assert {key: one(service, key) for key in expected} == expected
    assert {"video", "render"} <= words(service, "SupplementaryGroups")


def test_the_hardening_options_are_all_there(service: dict[str, list[str]]) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "MemoryDenyWriteExecute": "no",
        "CapabilityBoundingSet": "",
        "IPAddressDeny": "any",
        "ProcSubset": "pid",
        "MemoryMax": "75%",
        "TasksMax": "512",
    }
    assert {key: one(service, key) for key in expected} == expected
    assert words(service, "RestrictAddressFamilies") == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }


def test_ip_traffic_is_denied_but_loopback_and_the_private_ranges_a_fleet_broker_lives_in(
    service: dict[str, list[str]],
) -> None:
    allowed = words(service, "IPAddressAllow")
    assert {"localhost", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= allowed
    assert "any" not in allowed
    example = parse_unit(NETWORK_EXAMPLE.read_text())["Service"]
    assert set(example) == {"IPAddressAllow"}, "the example drop-in only adds addresses"
    assert "" not in example["IPAddressAllow"], "an empty IPAddressAllow= would reset the unit's list"


def test_nothing_closes_the_device_policy_that_jetson_gpu_nodes_need(
    service: dict[str, list[str]],
) -> None:
    # DeviceAllow=, PrivateDevices= and ProtectClock= (which adds DeviceAllow=char-rtc)
    # would all turn the device cgroup into an allow-list without /dev/nvgpu, /dev/nvmap.
    for key in ("DevicePolicy", "DeviceAllow", "PrivateDevices", "ProtectClock"):
        assert key not in service, f"{key}= would close the device policy"


def test_the_frame_stall_bound_and_stop_timeout_fit_inside_systemds_limits(
    service: dict[str, list[str]],
) -> None:
    # A hung frame loop must stop the pings well before systemd's own patience runs out,
    # and the agent's clean stop must finish before systemd's SIGKILL.
    assert WatchdogSection().stall_s < float(one(service, "WatchdogSec"))
    assert AgentSection().stop_timeout_s < float(one(service, "TimeoutStopSec"))
    assert str(AgentSection().state_dir) == "/var/lib/" + one(service, "StateDirectory")


def test_the_unit_puts_state_and_store_where_systemd_lets_the_agent_write(
    service: dict[str, list[str]], tmp_path: Path
) -> None:
    # The shipped config.toml uses relative paths (next to the file, for `make run`);
    # under the unit they would land in read-only /etc/edge-agent.
    environ = dict(value.partition("=")[::2] for value in service["Environment"])
    config_file = tmp_path / "config.toml"
    shutil.copy(REPO / "config.toml", config_file)
    config = load_config(config_file, environ=environ)
    state = Path("/var/lib") / one(service, "StateDirectory")
    assert config.agent.state_dir == state
    assert config.store_dir == state / "engines"


def test_an_invalid_configuration_is_not_restarted_over_and_over(
    service: dict[str, list[str]],
) -> None:
    assert one(service, "RestartPreventExitStatus") == str(EXIT_USAGE)


def test_the_cpu_only_drop_in_closes_devices_to_v4l2_and_denies_wx_memory() -> None:
    drop_in = parse_unit(CPU_ONLY.read_text())["Service"]
    assert one(drop_in, "DevicePolicy") == "closed"
    assert one(drop_in, "DeviceAllow") == "char-video4linux rw"
    assert one(drop_in, "MemoryDenyWriteExecute") == "yes"


def test_sysusers_creates_the_user_in_the_video_and_render_groups() -> None:
    entries = [line.split() for line in SYSUSERS.read_text().splitlines() if line[:1] not in "#"]
    entries = [entry for entry in entries if entry]
    assert entries[0][:2] == ["u", "edge-agent"]
    assert ["m", "edge-agent", "video"] in entries
    assert ["m", "edge-agent", "render"] in entries


def verify(unit_dir: Path) -> str:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_dir / UNIT.name)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, output
    return output


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_analyze
def test_systemd_analyze_verifies_the_unit_and_its_drop_in(tmp_path: Path) -> None:
    # verify fails when ExecStart='s binary is missing, and /opt/edge-agent exists only on
    # an installed device: check a copy whose ExecStart runs this interpreter instead.
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START}\n" in text
    (tmp_path / UNIT.name).write_text(
        text.replace(f"ExecStart={EXEC_START}", f"ExecStart={sys.executable} -m agent run")
    )
    assert verify(tmp_path) == ""
    drop_ins = tmp_path / f"{UNIT.name}.d"
    drop_ins.mkdir()
    shutil.copy(CPU_ONLY, drop_ins / CPU_ONLY.name)
    assert verify(tmp_path) == ""
    shutil.copy(NETWORK_EXAMPLE, drop_ins / "network.conf")
    assert verify(tmp_path) == ""


@needs_analyze
def test_systemd_analyze_would_catch_a_misspelt_directive(tmp_path: Path) -> None:
    text = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    (tmp_path / UNIT.name).write_text(text.replace(EXEC_START, f"{sys.executable} -m agent run"))
    assert "Unknown key 'ProtectSytem'" in verify(tmp_path)


def read_colon_file(path: Path) -> dict[str, list[str]]:
    rows = [line.split(":") for line in path.read_text().splitlines()]
    return {row[0]: row for row in rows}


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles are not installed",
)
@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfiles.d ownership needs root (chown)")
def test_sysusers_and_tmpfiles_lay_out_a_fresh_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "edge-agent").mkdir(parents=True)
    password = root / "etc" / "edge-agent" / "mqtt-password"
    password.write_text("s3cret\n")
    password.chmod(0o644)
    for tool, *args in (
        ["systemd-sysusers", str(SYSUSERS)],
        ["systemd-tmpfiles", "--create", str(TMPFILES)],
    ):
        done = subprocess.run(
            [tool, f"--root={root}", *args],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    passwd = read_colon_file(root / "etc/passwd")
    groups = read_colon_file(root / "etc/group")
    uid, gid = int(passwd["edge-agent"][2]), int(passwd["edge-agent"][3])
    assert passwd["edge-agent"][6].endswith("/nologin")
    assert "edge-agent" in groups["video"][3].split(",")
    assert "edge-agent" in groups["render"][3].split(",")
    for folder in ("var/lib/edge-agent", "var/lib/edge-agent/engines", "var/cache/edge-agent/cuda"):
        info = (root / folder).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o750), folder
    info = password.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600)


W_X_PROBE = """
import ctypes, mmap, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(3)  # the kernel predates PR_SET_MDWE (Linux 6.3)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("a writable+executable mapping was allowed: W^X is not enforced")
except PermissionError:
    pass
import cv2, numpy as np, onnxruntime as ort
demo = sys.argv[1]
capture = cv2.VideoCapture(demo + "/video.mp4")
ok, frame = capture.read()
assert ok and frame.shape == (480, 640, 3)
for model, shape in (("text-det-v4", (1, 3, 320, 320)), ("orientation-0.0.11", (1, 3, 224, 224))):
    session = ort.InferenceSession(demo + f"/models/{model}/model.onnx",
                                   providers=["CPUExecutionProvider"])
    (out, *_) = session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})
    assert np.isfinite(out).all()
print("ok")
"""


def test_the_cpu_path_runs_with_writable_executable_memory_denied(demo_dir: Path) -> None:
    # What cpu-only.conf's MemoryDenyWriteExecute=yes relies on: ONNX Runtime on the CPU,
    # OpenCV decoding and numpy never need a W+X mapping. The kernel's PR_SET_MDWE refuses
    # the same mappings systemd's filter does.
    done = subprocess.run(
        [sys.executable, "-c", W_X_PROBE, str(demo_dir)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S * 2,
        check=False,
    )
    if done.returncode == 3:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
