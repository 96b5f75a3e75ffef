"""The deploy-gap bench's arithmetic (agent.dev.bench_deploy.measure) on made-up timelines: per camera,
the largest gap inside a deployment window over the steady median of the model that served it, named
by the step it began in; gaps outside every window make the medians and are never the figure."""

from __future__ import annotations

import pytest

from agent.dev.bench_deploy import Timeline, measure


def timeline(cam0: list[tuple[float, str]], cam1: list[tuple[float, str]]) -> Timeline:
    frames = sorted([(t, "cam0", v) for t, v in cam0] + [(t, "cam1", v) for t, v in cam1])
    return Timeline(frames=frames)


def test_the_largest_gap_in_a_window_is_divided_by_its_cameras_steady_median_and_named_by_its_step():
    cam0 = [(i * 0.1, "v4") for i in range(40)]  # steady 0.1 s everywhere
    cam1 = [(i * 0.1, "v4") for i in range(20)] + [(2.3, "v4")] + [(2.3 + i * 0.1, "v4") for i in range(1, 20)]
    cam1 += [(0.0 + 40.0, "v4")]  # a huge gap long after the window: not the figure
    run = timeline(cam0, sorted(cam1))
    run.steps = [(1.0, "received"), (1.5, "loading"), (2.4, "warming"), (2.8, "active")]
    run.windows = [(1.0, 3.0)]
    gaps = measure(run)
    assert gaps.worst["cam0"] == pytest.approx(1.0)
    assert gaps.worst["cam1"] == pytest.approx(4.0)  # 1.9 -> 2.3, in the window, begun while loading
    assert gaps.worst_step["cam1"] == "loading"
    assert gaps.medians["cam1"]["v4"] == pytest.approx(0.1)


def test_at_the_swap_a_gap_is_measured_against_the_slower_model():
    cam = [(i * 0.1, "v4") for i in range(20)] + [(2.0 + i * 0.4, "v6") for i in range(1, 20)]
    run = timeline(cam, cam)
    run.steps = [(1.5, "received"), (1.9, "active")]
    run.windows = [(1.5, 2.5)]
    gaps = measure(run)
    assert gaps.medians["cam0"] == {"v4": pytest.approx(0.1), "v6": pytest.approx(0.4)}
    assert gaps.worst["cam0"] == pytest.approx(1.25)  # 1.9 -> 2.4: 0.5 s against v6's 0.4, not v4's 0.1
    assert gaps.worst_step["cam0"] == "swap/close"


def test_a_camera_rate_that_is_not_above_zero_is_refused_by_name(capsys):
    from agent.cli.bench import main

    with pytest.raises(SystemExit) as refused:
        main(["--only", "deploy-gap", "--camera-fps", "0"])
    assert refused.value.code == 2
    assert "--camera-fps must be above 0, got 0" in capsys.readouterr().err
