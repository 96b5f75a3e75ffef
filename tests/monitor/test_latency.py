import numpy as np

from agent.monitor.latency import LatencyRecorder


def test_percentiles_over_the_window_only():
    recorder = LatencyRecorder(window=100)
    for i in range(300):
        recorder.record({"infer": float(i)}, at=float(i) / 10)
    snap = recorder.snapshot()
    assert snap.frames_processed == 300 and snap.window_frames == 100
    infer = snap.stages["infer"]
    assert infer.count == 100
    assert infer.p50_ms == float(np.percentile(np.arange(200, 300), 50))
    assert infer.max_ms == 299.0
    assert abs(snap.fps - 10.0) < 1e-6


def test_stages_never_recorded_are_absent():
    recorder = LatencyRecorder(window=10)
    recorder.record({"infer": 1.0})
    assert set(recorder.snapshot().stages) == {"infer"}
