"""Shared fixtures: the demo assets, a real mosquitto per test and a subscriber watching it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import MOSQUITTO, Mosquitto, MqttProbe

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
LONG_FIRST = ("tests/e2e/", "tests/dev/", "tests/models/test_fuzz_bundle.py", "tests/models/test_loader_tensorrt.py",
              "tests/models/test_build.py", "tests/fleet/test_rollout.py", "tests/fleet/test_status.py",
              "tests/device/test_liveview.py", "tests/tools/test_quantize.py", "tests/models/test_behaviour.py",
              "tests/models/test_manager.py", "tests/monitor/test_drift.py",
              "tests/results/test_stage_deploy.py", "tests/models/test_shadow_text.py", "tests/tools/test_pack.py",
              "tests/tools/test_recover.py")
"""Where the tests take many seconds each (the agent, brokers and the CLI as subprocesses, fuzzing, model
builds): the slowest of a run's ``--durations``. A test marked ``slow`` counts too."""


def _runs_long(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None or item.nodeid.startswith(LONG_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests first, each group in its collected order: under ``-n`` (pytest-xdist) the workers
    start on them and fill in with the short ones, instead of one worker finishing a long test alone at
    the end. The order is the same in every worker (xdist checks it)."""
    items.sort(key=lambda item: not _runs_long(item))


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    if not (DEMO / "video.mp4").is_file():
        pytest.fail("demo assets missing: run `make setup` (make test does it)")
    return DEMO


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running anonymous mosquitto on a free loopback port, stopped after the test."""
    if not MOSQUITTO.exists():
        pytest.fail(f"{MOSQUITTO} is missing: install mosquitto to run the MQTT tests")
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto that saves sessions and queues when stopped (SIGTERM); killed after the test."""
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def mqtt_probe() -> Iterator[Callable[..., MqttProbe]]:
    """Make probes: ``mqtt_probe(port, filters, persistent=False)``; all closed after the test."""
    probes: list[MqttProbe] = []

    def make(port: int, filters: list[str], **options: object) -> MqttProbe:
        probe = MqttProbe(port, filters, **options)  # type: ignore[arg-type]
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.close()
