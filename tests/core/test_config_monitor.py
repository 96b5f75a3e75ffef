import pytest
from pydantic import ValidationError

from agent.core.config import MonitorSection
from agent.monitor.bias import BiasMonitor
from agent.monitor.drift import DriftMonitor
from agent.monitor.egress import EgressGuard
from agent.monitor.leak import RESOURCES, LeakMonitor
from agent.wire import PAYLOADS


def test_the_defaults_are_valid_and_reach_every_monitor():
    section = MonitorSection()
    drift = DriftMonitor(section)
    assert (drift.settings.drift_psi_warn, drift.settings.drift_psi_alarm) == (0.1, 0.25)
    assert BiasMonitor(section).settings.bias_ratio_alarm == 0.8
    resources = LeakMonitor(section, sampler=lambda: None).snapshot()["resources"]
    assert set(resources) == set(RESOURCES)
    assert {name: (r["bound_per_hour"], r["bound_per_swap"]) for name, r in resources.items()} == {
        "rss": (50.0, 5.0), "fds": (30.0, 0.5), "threads": (10.0, 0.5), "device_memory": (50.0, 5.0),
        "nvmap": (50.0, 5.0)}
    assert EgressGuard(PAYLOADS, section).max_payload_bytes == 65_536


@pytest.mark.parametrize(
    ("values", "message"),
    [({"drift_psi_warn": 0.3}, "drift_psi_warn must be <= drift_psi_alarm"),
     ({"bias_ratio_warn": 0.7}, "bias_ratio_warn"),
     ({"drift_min_samples": 2000}, "drift_min_samples"),
     ({"bias_brightness_bands": (200.0, 100.0)}, "bias_brightness_bands"),
     ({"drift_windw": 10}, "drift_windw"),
     ({"leak_consecutive": 0}, "leak_consecutive")],
)
def test_bad_settings_are_refused_naming_the_key(values, message):
    with pytest.raises(ValidationError, match=message):
        MonitorSection(**values)
