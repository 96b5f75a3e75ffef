from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    if not (DEMO / "video.mp4").is_file():
        pytest.fail("demo assets missing: run `make setup` (make test does it)")
    return DEMO
