"""A model artifact for the simulated fleet: a tar the devices never open."""

from __future__ import annotations

import tarfile
from pathlib import Path


def fake_artifact(folder: Path) -> Path:
    """``folder``/model.tar with one manifest.json (``fleet deploy`` reads the format from its content)."""
    path = folder / "model.tar"
    inner = folder / "manifest.json"
    inner.write_text("a model bundle, as the devices would download it")
    with tarfile.open(path, "w") as bundle:
        bundle.add(inner, arcname="manifest.json")
    return path
