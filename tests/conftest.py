"""Shared fixtures: the demo assets, a real mosquitto per test and a subscriber watching it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import MOSQUITTO, Mosquitto, MqttProbe

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"


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
