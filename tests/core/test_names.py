"""Names, versions, nonces and plan values are checked whole: a trailing newline is not a name."""

from __future__ import annotations

import json

import pytest

from agent.core.names import check_name
from agent.fleet.plan import PlanError, parse_duration, parse_percent
from agent.mqtt.authority import NONCE_PATTERN
from agent.wire import CommandError, parse_command

SHA = "0" * 64


@pytest.mark.parametrize("bad", ["v5\n", "text-det\n", "v5\r", "v5\n\n", "\nv5", "v 5", "v5\t"])
def test_a_name_with_a_line_break_or_blank_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must be 1-64"):
        check_name(bad)


@pytest.mark.parametrize("good", ["v5", "text-det", "a", "1.2.3_rc-1", "a" * 64])
def test_ordinary_names_are_accepted_unchanged(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize("field", ["name", "version"])
def test_a_deploy_whose_name_or_version_ends_in_a_newline_is_refused_with_bad_payload(field: str) -> None:
    document = {"id": "c-1", "name": "text-det", "version": "v5",
                "url": "https://example.com/m.onnx", "sha256": SHA}
    document[field] += "\n"
    with pytest.raises(CommandError) as refused:
        parse_command("deploy", json.dumps(document).encode())
    assert refused.value.code == "bad_payload"
    assert field in refused.value.message
    assert refused.value.command_id == "c-1"


def test_a_nonce_with_a_trailing_newline_does_not_match() -> None:
    assert NONCE_PATTERN.fullmatch("n" * 16)
    assert not NONCE_PATTERN.fullmatch("n" * 16 + "\n")


def test_plan_values_are_parsed_whole() -> None:
    assert parse_duration(" 2m ") == 120.0
    assert parse_percent("5%") == 5.0
    with pytest.raises(PlanError):
        parse_duration("2m\nx")
    with pytest.raises(PlanError):
        parse_percent("5%%")
