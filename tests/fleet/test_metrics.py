"""Prometheus exposition: escaped labels, one series per device and model, bounded device labels."""

from __future__ import annotations

from agent.fleet.metrics import OVERFLOW, DeviceLabels, Registry, closed
from agent.fleet.sinks import FleetMetrics
from agent.fleet.view import FleetView


def test_exposition_has_help_type_and_escaped_labels() -> None:
    registry = Registry()
    family = registry.add("edge_test_total", "counter", "A test counter", ("device",))
    family.inc(('cam "7"\\n',), 2)
    text = registry.render()
    assert "# HELP edge_test_total A test counter\n# TYPE edge_test_total counter\n" in text
    assert 'edge_test_total{device="cam \\"7\\"\\\\n"} 2\n' in text


def test_a_new_model_version_replaces_the_device_series() -> None:
    registry = Registry()
    fps = registry.add("edge_test_fps", "gauge", "fps", ("device",), ("model", "version"))
    fps.set(("cam",), 14.0, ("det", "1"))
    fps.set(("cam",), 15.5, ("det", "2"))
    lines = [line for line in registry.render().splitlines() if not line.startswith("#")]
    assert lines == ['edge_test_fps{device="cam",model="det",version="2"} 15.5']


def test_devices_past_the_bound_share_one_overflow_label() -> None:
    labels = DeviceLabels(max_devices=2)
    assert [labels.label(d) for d in ("a", "b", "c", "a", "d")] == ["a", "b", OVERFLOW, "a", OVERFLOW]
    assert labels.overflowed == 2


def test_open_ended_label_values_are_folded_into_other() -> None:
    assert closed("telemetry/latency", ("telemetry/latency",)) == "telemetry/latency"
    assert closed("telemetry/whatever-a-device-invents", ("telemetry/latency",)) == "other"


def test_overflow_devices_count_but_get_no_gauges() -> None:
    metrics = FleetMetrics(max_devices=1)
    view = FleetView()
    for device in ("a", "b"):
        for topic, payload in (
            ("status", f'{{"device_id":"{device}","ts":1.0,"seq":1,"state":"online","agent_version":"x",'
                       '"started_at":1.0,"groups":[]}'),
            ("events", f'{{"device_id":"{device}","ts":1.0,"seq":1,"kind":"alarm_raised","severity":"alarm",'
                       '"message":"m","data":{}}'),
        ):
            message = view.apply(f"edge/{device}/{topic}", payload.encode())
            assert message is not None
            metrics.observe(message, view)
    text = metrics.registry.render()
    assert 'edge_fleet_device_up{device="a"} 1' in text
    assert 'device="b"' not in text
    assert f'edge_fleet_alarm_events_total{{device="{OVERFLOW}",severity="alarm"}} 1' in text
    assert "edge_fleet_label_overflow_devices 1" in text
    assert 'edge_fleet_devices{state="online"} 2' in text
