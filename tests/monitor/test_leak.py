"""Leak trends: injected samples for the arithmetic, real engines and /proc for the real thing.

The clock is injected (one sample stands for a minute or an hour of a device's
life), so every outcome is decided by what the process really holds, never by
how fast this machine runs.
"""

import itertools
import os

import numpy as np
import pytest

from agent.core.config import LeakSection
from agent.monitor.egress import EgressGuard
from agent.monitor.leak import (
    LeakMonitor,
    ResourceSample,
    ResourceSampler,
    parse_nvmap_clients,
)
from agent.runtime.onnxrt import OnnxRuntimeEngine
from agent.runtime.slot import EngineSlot, Serving
from agent.vision.transforms import Preprocessor
from agent.wire.signals import MONITOR_PAYLOADS, LeakPayload
from tests.support.monitor_support import ORIENTATION, open_model, video

MB = 1024 * 1024
MINUTE = 60.0
HOUR = 3600.0
ENVELOPE = {"device_id": "dev1", "ts": 1.0, "seq": 1}


class FakeClock:
    """Stands in for time.monotonic: advances by ``step`` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def scripted(values: list[float], step: float = MINUTE, field: str = "rss_bytes"):
    """A sampler that replays ``values`` (MB) for one resource, ``step`` seconds apart."""
    feed = iter(values)
    clock = FakeClock(step)

    def sample() -> ResourceSample:
        base = {"rss_bytes": 100 * MB, "fds": 20, "threads": 8}
        base[field] = int(next(feed) * MB)
        return ResourceSample(clock(), **base)

    return sample


def evaluate(leak: LeakMonitor, samples: int, every: int = 5) -> list[dict]:
    snapshots = []
    for n in range(1, samples + 1):
        leak.sample()
        if n % every == 0:
            snapshots.append(leak.snapshot())
    return snapshots


SETTINGS = LeakSection(leak_window=60, leak_min_samples=20, leak_consecutive=3)


def test_flat_noisy_memory_with_outliers_raises_nothing():
    rng = np.random.default_rng(3)
    values = list(300 + rng.normal(0, 2, 120))
    for i in range(5, 120, 17):
        values[i] += 80.0
    leak = LeakMonitor(SETTINGS, sampler=scripted(values))
    snapshots = evaluate(leak, 120)
    assert {s["resources"]["rss"]["state"] for s in snapshots} <= {"insufficient_samples", "ok"}
    assert snapshots[-1]["resources"]["rss"]["state"] == "ok"
    assert leak.take_events() == []


def test_steady_growth_raises_the_alarm_after_consecutive_evaluations_then_clears():
    growth = [300 + 2.0 * i for i in range(60)]
    flat = [growth[-1]] * 120
    leak = LeakMonitor(SETTINGS, sampler=scripted(growth + flat))
    states = [s["resources"]["rss"]["state"] for s in evaluate(leak, 180)]
    first_judged = states.index("ok")
    assert states[first_judged:first_judged + 2] == ["ok", "ok"]
    assert states[first_judged + 2] == "alarm"
    assert states[-1] == "ok"
    events = leak.take_events()
    assert [(e.metric, e.kind) for e in events] == [("rss", "alarm_raised"),
                                                    ("rss", "alarm_cleared")]
    assert events[0].measure == "slope_per_hour"
    assert events[0].value == pytest.approx(2.0 * 60)
    assert events[0].threshold == SETTINGS.leak_rss_mb_per_hour


class LeakyEngine:
    """A real ONNX Runtime engine that keeps a buffer after every inference (a leak, on purpose)."""

    def __init__(self, engine: OnnxRuntimeEngine, leak_bytes: int) -> None:
        self.engine = engine
        self.runtime = engine.runtime
        self.inputs = engine.inputs
        self.outputs = engine.outputs
        self.leak_bytes = leak_bytes
        self.kept: list[np.ndarray] = []

    def infer(self, feeds):
        if self.leak_bytes:
            self.kept.append(np.ones(self.leak_bytes, dtype=np.uint8))
        return self.engine.infer(feeds)

    def close(self) -> None:
        self.engine.close()


@pytest.mark.parametrize(("leak_bytes", "expected"), [(4 * MB, "alarm"), (0, "ok")],
                         ids=["leaking", "not-leaking"])
def test_an_engine_leaking_a_buffer_per_frame_raises_the_rss_alarm_and_a_sound_one_does_not(
        leak_bytes, expected):
    engine = LeakyEngine(OnnxRuntimeEngine.load(ORIENTATION / "model.onnx", threads=1), leak_bytes)
    name = engine.inputs[0].name
    preprocessor = Preprocessor(open_model(ORIENTATION).manifest.preprocess, engine.inputs[0])
    images = itertools.cycle(video()[::9])

    def tensor():
        return preprocessor.prep(next(images))[0]

    for _ in range(5):
        engine.infer({name: tensor()})
    leak = LeakMonitor(SETTINGS, sampler=ResourceSampler(clock=FakeClock(MINUTE), nvmap_path=None))
    states = []
    for n in range(1, 61):
        engine.infer({name: tensor()})
        leak.sample()
        if n % 5 == 0:
            states.append(leak.snapshot()["resources"]["rss"]["state"])
    engine.close()
    assert states[-1] == expected
    raised = [e for e in leak.take_events() if e.metric == "rss" and e.raised]
    assert len(raised) == (1 if expected == "alarm" else 0)


class FileHoldingEngine(LeakyEngine):
    """A real engine that opens its model file when loaded; the leaking kind forgets to close it."""

    def __init__(self, leaky: bool) -> None:
        super().__init__(OnnxRuntimeEngine.load(ORIENTATION / "model.onnx", threads=1), 0)
        self.handle = os.open(ORIENTATION / "model.onnx", os.O_RDONLY)
        self.leaky = leaky

    def close(self) -> None:
        super().close()
        if not self.leaky:
            os.close(self.handle)


@pytest.mark.parametrize(("leaky", "expected"), [(True, "alarm"), (False, "ok")],
                         ids=["leaking", "not-leaking"])
def test_a_swap_that_leaks_a_file_descriptor_raises_the_per_swap_alarm(leaky, expected):
    slot = EngineSlot()
    settings = LeakSection(leak_window=60, leak_swap_window=20, leak_min_samples=3, leak_min_swaps=4,
                           leak_consecutive=2)
    leak = LeakMonitor(settings, sampler=ResourceSampler(clock=FakeClock(HOUR), nvmap_path=None))
    opened = []
    for n in range(10):
        engine = FileHoldingEngine(leaky)
        opened.append(engine.handle)
        slot.swap(Serving(engine, "orientation", f"v{n}", "0" * 64, None))
        leak.on_swap()
        leak.sample()
        fds = leak.snapshot()["resources"]["fds"]
    slot.clear()
    for handle in opened if leaky else ():
        os.close(handle)
    assert fds["state"] == expected
    if leaky:
        assert fds["slope_per_swap"] == pytest.approx(1.0)
        event = next(e for e in leak.take_events() if e.metric == "fds")
        assert event.measure == "slope_per_swap"
        assert event.threshold == settings.leak_fds_per_swap
    else:
        assert fds["slope_per_swap"] == pytest.approx(0.0)


def test_device_memory_is_trended_when_a_reader_is_given_and_unavailable_otherwise():
    used = itertools.count(start=1000, step=20)

    def reader() -> tuple[int, int]:
        return (8000 - next(used)) * MB, 8000 * MB

    sampler = ResourceSampler(clock=FakeClock(MINUTE), device_reader=reader, nvmap_path=None)
    leak = LeakMonitor(SETTINGS, sampler=sampler)
    snapshot = evaluate(leak, 60)[-1]
    assert snapshot["resources"]["device_memory"]["slope_per_hour"] == pytest.approx(20 * 60)
    assert snapshot["resources"]["device_memory"]["state"] == "alarm"
    assert snapshot["resources"]["nvmap"]["state"] == "unavailable"
    blind = LeakMonitor(SETTINGS,
                        sampler=ResourceSampler(device_reader=lambda: None, nvmap_path=None))
    blind.sample()
    assert blind.snapshot()["resources"]["device_memory"]["state"] == "unavailable"


def test_the_nvmap_clients_table_is_read_for_this_process_only():
    table = """CLIENT                        PROCESS      PID        SIZE
user                       edge-agent     4242     10240K
user                       edge-agent     4242      2M
user                   gst-launch-1.0     1111     99999K
total                                              112239K
"""
    assert parse_nvmap_clients(table, 4242) == 10240 * 1024 + 2 * MB
    assert parse_nvmap_clients(table, 7) is None


def test_the_real_sampler_reads_this_process():
    sample = ResourceSampler(nvmap_path=None)()
    assert sample.rss_bytes > 10 * MB and sample.fds >= 3 and sample.threads >= 1
    assert sample.device_used_bytes is None


def test_the_snapshot_is_a_valid_leak_payload_with_the_egress_counts():
    guard = EgressGuard(MONITOR_PAYLOADS)
    guard.allows("telemetry/leak", b"\x89PNG\r\n")
    leak = LeakMonitor(SETTINGS, sampler=scripted([300.0] * 30), egress=guard)
    evaluate(leak, 30)
    payload = LeakPayload(**ENVELOPE, **leak.snapshot())
    assert payload.egress.blocked == 1 and payload.egress.by_reason == {"not_json": 1}
    assert payload.resources["rss"].unit == "MB" and payload.resources["fds"].unit == "count"
    assert LeakPayload.model_validate_json(payload.model_dump_json()) == payload
