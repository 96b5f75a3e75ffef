import threading

import numpy as np
import pytest

from agent.runtime.base import TensorSpec
from agent.runtime.slot import EngineSlot, Serving, SlotEmptyError


class CountingEngine:
    """A stand-in engine that records close(); the slot's logic does not depend on inference."""

    runtime = "test"
    inputs = (TensorSpec("x", (1,), np.dtype(np.float32)),)
    outputs = inputs

    def __init__(self):
        self.closed = 0

    def infer(self, feeds):
        return dict(feeds)

    def close(self):
        self.closed += 1


def _serving(version):
    return Serving(engine=CountingEngine(), name="m", version=version, sha256="", manifest=None)


def test_empty_slot_refuses_a_lease():
    with pytest.raises(SlotEmptyError), EngineSlot().lease():
        pass


def test_swap_without_frames_in_flight_closes_old_engine_at_once():
    slot = EngineSlot()
    a, b = _serving("a"), _serving("b")
    slot.swap(a)
    slot.swap(b)
    assert slot.drain()
    assert a.engine.closed == 1 and b.engine.closed == 0
    assert slot.serving is b


def test_old_engine_finishes_its_frame_then_closes_exactly_once():
    slot = EngineSlot()
    a, b = _serving("a"), _serving("b")
    slot.swap(a)
    in_frame, swapped = threading.Event(), threading.Event()
    seen = []

    def worker():
        with slot.lease() as serving:
            in_frame.set()
            swapped.wait(5)
            seen.append((serving.version, serving.engine.closed))

    thread = threading.Thread(target=worker)
    thread.start()
    in_frame.wait(5)
    slot.swap(b)
    slot.drain()
    assert a.engine.closed == 0  # still leased by the frame in flight
    with slot.lease() as serving:
        assert serving is b  # the next frame already gets the new engine
    swapped.set()
    thread.join(5)
    assert slot.drain()
    assert seen == [("a", 0)]
    assert a.engine.closed == 1


def test_clear_closes_the_last_engine():
    slot = EngineSlot()
    a = _serving("a")
    slot.swap(a)
    assert slot.clear()
    assert a.engine.closed == 1 and slot.serving is None


class SlowClose(CountingEngine):
    """Its close takes a while, as a big session's does; it says when the close has finished."""

    def __init__(self):
        super().__init__()
        self.finished = threading.Event()

    def close(self):
        self.finished.wait(0.3)  # nobody sets it early: a close that takes 0.3 s
        super().close()


def test_clear_returns_once_the_engines_close_has_finished_so_a_process_may_exit():
    slot = EngineSlot()
    slow = Serving(engine=SlowClose(), name="m", version="slow", sha256="", manifest=None)
    slot.swap(slow)
    assert slot.clear()
    assert slow.engine.closed == 1, "clear returned while the close was still running on its thread"


def test_drain_racing_a_close_that_is_starting_waits_for_it_instead_of_failing(monkeypatch):
    """A close starts on the frame worker (its last lease) while the deploying thread drains: drain
    must never see a closer thread that is listed but not yet started (found by make bench-swaps)."""
    import agent.runtime.slot as slot_module

    real_thread = threading.Thread
    starting = threading.Event()

    class SlowStart(real_thread):
        def start(self):
            starting.set()
            threading.Event().wait(0.3)  # the closer is slow to start
            super().start()

    monkeypatch.setattr(slot_module.threading, "Thread", SlowStart)
    slot = EngineSlot()
    a = _serving("a")
    slot.swap(a)
    swapper = real_thread(target=lambda: slot.swap(_serving("b")))
    swapper.start()
    assert starting.wait(5.0)
    errors = []
    try:
        assert slot.drain(5.0)
    except RuntimeError as exc:  # "cannot join thread before it is started"
        errors.append(exc)
    swapper.join(5.0)
    assert errors == []
    assert a.engine.closed == 1
