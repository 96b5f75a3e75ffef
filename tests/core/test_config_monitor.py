import pytest
from pydantic import ValidationError

from agent.core.config import MonitorSection
from agent.monitor.bias import BiasSettings
from agent.monitor.drift import DriftThresholds
from agent.monitor.leak import RESOURCES, LeakSettings


def test_the_defaults_are_valid_and_reach_every_monitor():
    section = MonitorSection()
    drift = DriftThresholds.from_settings(section)
    assert (drift.psi_warn, drift.psi_alarm) == (0.1, 0.25)
    assert BiasSettings.from_settings(section).ratio_alarm == 0.8
    leak = LeakSettings.from_settings(section)
    assert {name for name, _ in leak.per_hour} == set(RESOURCES) == {n for n, _ in leak.per_swap}


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
