"""A shadow deploy's terms and the promote command on the wire: bad terms are refused at parse."""

from __future__ import annotations

import json

import pytest

from agent.wire import CommandError, DeployCommand, PromoteCommand, parse_command

DEPLOY = {"id": "d1", "name": "text-det", "version": "v6", "url": "https://models.example/v6.tar",
          "sha256": "a" * 64, "format": "bundle"}


def _deploy(**fields: object) -> bytes:
    return json.dumps({**DEPLOY, **fields}).encode()


def test_a_shadow_deploy_carries_its_terms():
    command = parse_command("deploy", _deploy(mode="shadow", shadow={"min_agreement": 0.95, "min_frames": 20,
                                                                     "min_text_agreement": 0.7, "budget": 3,
                                                                     "duration_s": 60, "auto_promote": False}))
    assert isinstance(command, DeployCommand)
    assert command.mode == "shadow"
    assert command.shadow is not None and command.shadow.budget == 3 and command.shadow.auto_promote is False
    assert command.shadow.min_text_agreement == 0.7


def test_a_deploy_without_a_mode_swaps():
    command = parse_command("deploy", _deploy())
    assert isinstance(command, DeployCommand) and command.mode == "swap" and command.shadow is None


@pytest.mark.parametrize("field", ["min_agreement", "min_text_agreement"])
@pytest.mark.parametrize("agreement", [-0.1, 1.5])
def test_a_min_agreement_outside_zero_one_is_refused(agreement, field):
    with pytest.raises(CommandError) as caught:
        parse_command("deploy", _deploy(mode="shadow", shadow={field: agreement}))
    assert caught.value.code == "bad_payload" and field in caught.value.message
    assert caught.value.command_id == "d1"


def test_a_zero_shadow_budget_is_refused():
    with pytest.raises(CommandError) as caught:
        parse_command("deploy", _deploy(mode="shadow", shadow={"budget": 0}))
    assert caught.value.code == "bad_payload" and "budget" in caught.value.message


def test_shadow_terms_on_a_swap_deploy_are_refused():
    with pytest.raises(CommandError) as caught:
        parse_command("deploy", _deploy(shadow={"min_agreement": 0.9}))
    assert caught.value.code == "bad_payload" and "mode" in caught.value.message


def test_promote_is_a_command():
    assert isinstance(parse_command("promote", b'{"id": "p1"}'), PromoteCommand)
