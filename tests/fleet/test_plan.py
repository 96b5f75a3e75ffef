"""Rollout plans: options parsed with errors that name them, waves cumulative and disjoint."""

from __future__ import annotations

import pytest

from agent.fleet.plan import PlanError, RolloutPlan, assign_waves, parse_duration, parse_percent, parse_percents
from agent.fleet.record import MAX_DEPLOYMENT_ID, RecordError, RolloutStore, deployment_id_for

PLAN = RolloutPlan(5, (25, 50, 100), 10, 60)


def test_percentages_and_durations_parse() -> None:
    assert parse_percent("5%") == 5.0
    assert parse_percent("12.5") == 12.5
    assert parse_percents("25%, 50%,100%") == (25.0, 50.0, 100.0)
    assert parse_duration("60s") == 60.0
    assert parse_duration("2m") == 120.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("3") == 3.0


@pytest.mark.parametrize(("text", "named"), [("five", "--canary"), ("150%", "over 100%"), ("-5%", "--canary")])
def test_bad_percentages_name_the_option(text: str, named: str) -> None:
    with pytest.raises(PlanError, match=named):
        parse_percent(text, "--canary")


def test_bad_duration_names_the_option() -> None:
    with pytest.raises(PlanError, match="--wait-healthy '1 minute'"):
        parse_duration("1 minute", "--wait-healthy")


@pytest.mark.parametrize(("waves", "message"), [
    ((25, 20, 100), "must increase"),
    ((25, 50), "last wave must be 100%"),
    ((), "at least one"),
    ((5, 100), "must increase after the canary"),
])
def test_plans_that_make_no_sense_are_refused(waves: tuple[float, ...], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        RolloutPlan(5, waves, 10, 60)


def test_waves_are_cumulative_shares_and_every_device_is_in_exactly_one() -> None:
    devices = [f"cam-{i:02d}" for i in range(20)]
    waves = assign_waves("ro-1", devices, PLAN)
    assert [len(w) for w in waves] == [1, 4, 5, 10]
    flat = [d for wave in waves for d in wave]
    assert sorted(flat) == devices
    assert waves == assign_waves("ro-1", list(reversed(devices)), PLAN)
    assert waves != assign_waves("ro-2", devices, PLAN)


def test_a_small_group_still_gets_a_canary_and_no_empty_wave() -> None:
    waves = assign_waves("ro-1", ["a", "b", "c"], PLAN)
    assert [len(w) for w in waves] == [1, 1, 1]
    assert assign_waves("ro-1", ["a"], PLAN) == [["a"]]


def test_abort_bound_is_a_share_of_the_devices_tried() -> None:
    assert not PLAN.aborts(0, 1)
    assert PLAN.aborts(1, 1)
    assert not PLAN.aborts(1, 10)
    assert PLAN.aborts(2, 10)
    assert RolloutPlan(5, (100,), 0, 0).aborts(1, 100)


def test_deployment_ids_are_stable_and_fit_the_contract() -> None:
    assert deployment_id_for("ro-1", "cam-7") == "ro-1-cam-7"
    long_id = deployment_id_for("ro-1", "x" * 128)
    assert len(long_id) <= MAX_DEPLOYMENT_ID
    assert long_id == deployment_id_for("ro-1", "x" * 128)


def test_a_damaged_record_is_an_error_naming_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = RolloutStore(tmp_path)
    (tmp_path / "ro-1.json").write_text('{"rollout_id": "ro-1"}')
    with pytest.raises(RecordError, match=r"ro-1\.json: not a rollout record"):
        store.load("ro-1")
    with pytest.raises(RecordError, match="rollout id"):
        store.load("../etc/passwd")
    assert store.load("ro-2") is None
