"""``edge-agent deploy --shadow DURATION --min-agreement X``: the deploy's shadow terms, bad ones refused here."""

from __future__ import annotations

import argparse

import pytest

from agent.cli.control import parse_agreement, shadow_terms
from agent.cli.main import main
from agent.fleet.plan import PlanError

UNREACHABLE = "mqtt://127.0.0.1:9"
"""No broker: these commands end before they connect."""


def _args(shadow: str | None = None, min_agreement: str | None = None, budget: int | None = None):
    return argparse.Namespace(shadow=shadow, min_agreement=min_agreement, shadow_budget=budget)


@pytest.mark.parametrize(("text", "value"), [("95%", 0.95), ("0.95", 0.95), ("100%", 1.0), ("0", 0.0)])
def test_an_agreement_is_a_share_or_a_percentage(text, value):
    assert parse_agreement(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1.5", "-0.1", "150%", "most"])
def test_an_agreement_outside_zero_one_is_refused(text):
    with pytest.raises(PlanError, match="--min-agreement"):
        parse_agreement(text)


def test_shadow_terms_carry_the_duration_in_seconds_and_what_was_given():
    assert shadow_terms(_args("10m", "95%", 3)) == {"duration_s": 600.0, "min_agreement": 0.95, "budget": 3}
    assert shadow_terms(_args("90s")) == {"duration_s": 90.0}
    assert shadow_terms(_args()) is None


def test_a_zero_budget_or_terms_without_shadow_are_refused():
    with pytest.raises(PlanError, match="n >= 1"):
        shadow_terms(_args("1m", budget=0))
    with pytest.raises(PlanError, match="need --shadow"):
        shadow_terms(_args(min_agreement="0.9"))


def test_the_cli_refuses_a_bad_min_agreement_before_it_connects(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["deploy", "--broker", UNREACHABLE, "--device", "d", "--name", "text-det", "--version", "v6",
              "--url", "https://models.example/v6.tar", "--timeout", "1", "--shadow", "10m",
              "--min-agreement", "150%"])
    assert exited.value.code == 2
    assert "--min-agreement '150%' is over 100%" in capsys.readouterr().err
