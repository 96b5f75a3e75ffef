"""The wire contract: command parsing with named errors, payload models, sequence numbers."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from agent.wire import (
    MAX_COMMAND_BYTES,
    PAYLOADS,
    CommandError,
    DeployCommand,
    HealthPayload,
    LatencyPayload,
    PayloadError,
    PingCommand,
    ReplyPayload,
    RollbackCommand,
    Sequencer,
    StatusPayload,
    decode_payload,
    encode_payload,
    json_schemas,
    parse_command,
)

SHA = "ab" * 32
DEPLOY = {
    "id": "d-1",
    "name": "text-det",
    "version": "4.0.1",
    "url": "https://models.example/x.onnx",
    "sha256": SHA,
}
ENVELOPE = {"device_id": "cam-7", "ts": 1_800_000_000.5, "seq": 3}


def command_error(name: str, payload: bytes | dict) -> CommandError:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(CommandError) as caught:
        parse_command(name, data)
    return caught.value


def test_a_valid_deploy_is_parsed_with_defaults_and_a_normalised_hash():
    command = parse_command("deploy", json.dumps({**DEPLOY, "sha256": SHA.upper()}).encode())
    assert isinstance(command, DeployCommand)
    assert (command.id, command.name, command.version) == ("d-1", "text-det", "4.0.1")
    assert command.sha256 == SHA
    assert command.format == "onnx"
    assert command.signature is None and command.probation is None


def test_deploy_with_signature_and_probation():
    signature = base64.b64encode(bytes(64)).decode()
    probation = {"window_s": 60, "max_error_rate": 0.01, "max_latency_ratio": 1.5}
    command = parse_command(
        "deploy",
        json.dumps(
            {**DEPLOY, "signature": signature, "format": "bundle", "probation": probation}
        ).encode(),
    )
    assert isinstance(command, DeployCommand)
    assert command.probation is not None and command.probation.window_s == 60.0
    assert command.format == "bundle"


def test_deploy_with_its_own_behaviour_bounds_leaves_the_others_to_the_agent():
    probation = {"window_s": 60, "max_error_rate": 0.01, "max_latency_ratio": 1.5,
                 "behaviour": {"min_count_ratio": 0.2, "max_reference_psi": 3}}
    command = parse_command("deploy", json.dumps({**DEPLOY, "probation": probation}).encode())
    assert isinstance(command, DeployCommand) and command.probation is not None
    behaviour = command.probation.behaviour
    assert behaviour is not None and behaviour.min_count_ratio == 0.2 and behaviour.max_reference_psi == 3.0
    assert behaviour.max_score_js is None


def test_simple_commands():
    assert parse_command("ping", b'{"id":"p"}') == PingCommand(id="p")
    rollback = parse_command("rollback", b'{"id":"r","reason":"too slow"}')
    assert rollback == RollbackCommand(id="r", reason="too slow")


def test_bad_json_is_bad_json():
    error = command_error("ping", b'{"id": ')
    assert error.code == "bad_json"
    assert "not valid JSON" in error.message


def test_unknown_command_names_the_known_ones_and_keeps_the_id():
    error = command_error("reboot", {"id": "x-1"})
    assert error.code == "unknown_command"
    assert "'reboot'" in error.message and "deploy" in error.message
    assert error.command_id == "x-1"


def test_oversized_payload_is_refused_before_parsing():
    error = command_error("ping", b" " * (MAX_COMMAND_BYTES + 1))
    assert error.code == "payload_too_large"
    assert str(MAX_COMMAND_BYTES) in error.message


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        ({"url": None}, "url", "valid string"),
        ({"sha256": "abc"}, "sha256", "64 hexadecimal"),
        ({"name": "../etc"}, "name", "no '..'"),
        ({"version": "a/b"}, "version", "path separator"),
        ({"url": "ftp://host/x"}, "url", "scheme"),
        ({"signature": "***"}, "signature", "base64"),
        ({"signature": base64.b64encode(b"short").decode()}, "signature", "64 bytes"),
        ({"format": "tflite"}, "format", "onnx"),
        (
            {"probation": {"window_s": 0, "max_error_rate": 0.1, "max_latency_ratio": 2}},
            "probation.window_s",
            "greater than 0",
        ),
        (
            {"probation": {"window_s": 5, "max_error_rate": 0.1, "max_latency_ratio": 2,
                           "behaviour": {"max_score_js": 1.5}}},
            "probation.behaviour.max_score_js",
            "less than or equal to 1",
        ),
        (
            {"probation": {"window_s": 5, "max_error_rate": 0.1, "max_latency_ratio": 2,
                           "behaviour": {"min_count_ratio": 2.0, "max_count_ratio": 1.0}}},
            "probation.behaviour",
            "must be below",
        ),
        ({"id": 5}, "id", "valid string"),
        ({"id": ""}, "id", "at least 1"),
        ({"extra": 1}, "extra", "not a known field"),
    ],
)
def test_bad_deploy_fields_are_named_with_the_reason(change, field, why):
    error = command_error("deploy", {**DEPLOY, **change})
    assert error.code == "bad_payload"
    assert f"field '{field}'" in error.message
    assert why in error.message


def test_missing_fields_are_named_as_required_and_the_id_is_kept():
    error = command_error("deploy", {"id": "d-2", "name": "text-det"})
    assert error.code == "bad_payload"
    for field in ("version", "url", "sha256"):
        assert f"field '{field}': is required" in error.message
    assert error.command_id == "d-2"


def test_a_json_value_that_is_not_an_object_is_a_bad_payload():
    error = command_error("ping", b"[1, 2]")
    assert error.code == "bad_payload"
    assert "JSON object" in error.message


def test_every_published_payload_round_trips():
    status = StatusPayload(
        **ENVELOPE, state="online", agent_version="0.1.0", started_at=1.0, groups=("hall",)
    )
    health = HealthPayload(
        **ENVELOPE,
        uptime_s=12.5,
        camera={"state": "open", "reopens": 0, "last_error": None, "fps": 15.0},
        broker={"state": "connected", "reconnects": 2},
        model={"name": "text-det", "version": "4", "runtime": "onnxruntime"},
        cpu_percent=87.5,
        memory_rss_bytes=1 << 28,
        memory_available_bytes=1 << 31,
        temperatures_c={"cpu-thermal": 48.5},
        gpu_load=None,
        disk_free_bytes=1 << 33,
        outbox_depth=0,
        frames_processed=1500,
    )
    latency = LatencyPayload(
        **ENVELOPE,
        window_frames=600,
        fps=14.8,
        frames_processed=1500,
        frames_dropped=3,
        stages={
            "infer": {"p50_ms": 20.0, "p95_ms": 25.0, "p99_ms": 31.0, "max_ms": 40.0, "count": 600}
        },
    )
    for payload in (status, health, latency):
        wire = encode_payload(payload)
        assert json.loads(wire)["schema_version"] == 1
        assert decode_payload(type(payload), wire) == payload


def test_a_reply_has_an_error_exactly_when_not_ok():
    ReplyPayload(**ENVELOPE, id="a", ok=True, command="ping", result={"pong": True})
    ReplyPayload(
        **ENVELOPE, id="a", ok=False, command="ping", error={"code": "bad_payload", "message": "m"}
    )
    with pytest.raises(ValueError, match="error exactly when ok is false"):
        ReplyPayload(**ENVELOPE, id="a", ok=False, command="ping")


def test_a_reply_to_an_unreadable_command_has_a_null_id_and_is_never_ok():
    error = {"code": "bad_json", "message": "not valid JSON"}
    reply = ReplyPayload(**ENVELOPE, id=None, ok=False, command="deploy", error=error)
    assert json.loads(encode_payload(reply))["id"] is None
    with pytest.raises(ValueError, match="echoes the command's id"):
        ReplyPayload(**ENVELOPE, id=None, ok=True, command="ping")


def test_decoding_names_the_wrong_field():
    with pytest.raises(PayloadError, match="field 'state'"):
        decode_payload(
            StatusPayload,
            json.dumps(
                {**ENVELOPE, "state": "sleeping", "agent_version": "1", "started_at": 0}
            ).encode(),
        )
    with pytest.raises(PayloadError, match="not valid JSON"):
        decode_payload(StatusPayload, b"{")
    with pytest.raises(PayloadError, match="field 'seq'"):
        decode_payload(
            StatusPayload,
            json.dumps(
                {**ENVELOPE, "seq": "3", "state": "online", "agent_version": "1", "started_at": 0}
            ).encode(),
        )


def test_not_a_number_is_refused_on_the_wire():
    with pytest.raises(ValueError, match="finite"):
        LatencyPayload(
            **ENVELOPE,
            window_frames=1,
            fps=float("nan"),
            frames_processed=1,
            frames_dropped=0,
            stages={},
        )


def test_json_schemas_cover_every_payload_and_command():
    schemas = json_schemas()
    commands = {"cmd/ping", "cmd/status", "cmd/deploy", "cmd/rollback", "cmd/promote", "cmd/feedback",
                "cmd/cameras"}
    assert set(PAYLOADS) | commands == set(schemas)
    assert {"telemetry/drift", "telemetry/bias", "telemetry/leak"} <= set(PAYLOADS)
    deploy = schemas["cmd/deploy"]
    assert {"id", "name", "version", "url", "sha256"} <= set(deploy["required"])
    assert deploy["additionalProperties"] is False
    assert "seq" in schemas["telemetry/health"]["required"]


def test_sequencer_counts_per_key_and_continues_from_a_snapshot():
    sequencer = Sequencer()
    assert [sequencer.next("events") for _ in range(3)] == [1, 2, 3]
    assert sequencer.next("telemetry/health") == 1
    restored = Sequencer(sequencer.snapshot())
    assert restored.next("events") == 4
    with pytest.raises(ValueError, match="events"):
        Sequencer({"events": -1})


def test_sequencer_hands_out_each_number_once_across_threads():
    sequencer = Sequencer()
    taken: list[int] = []

    def take() -> None:
        numbers = [sequencer.next("events") for _ in range(500)]
        taken.extend(numbers)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == list(range(1, 2001))


def test_clip_text_keeps_short_text_and_cuts_long_text_saying_how_much():
    from agent.wire import MAX_TEXT_LENGTH, clip_text

    assert clip_text("field 'x': is required") == "field 'x': is required"
    long = "field 'unknown': is not a known field; " * 200
    clipped = clip_text(long)
    assert len(clipped) == MAX_TEXT_LENGTH
    assert clipped.startswith(long[:100])
    assert clipped.endswith(f"({len(long) - MAX_TEXT_LENGTH} more characters)")
    assert clip_text("bad \ud800 id").encode("utf-8") == b"bad \\ud800 id"


def test_an_id_that_is_not_valid_unicode_is_answered_with_a_null_id():
    error = command_error("ping", b'{"id": "\\ud800"}')
    assert (error.code, error.command_id) == ("bad_payload", None)


def test_nesting_too_deep_to_read_is_bad_json_not_a_crash():
    error = command_error("ping", b"[" * 30_000 + b"]" * 30_000)  # within the size limit
    assert error.code == "bad_json" and "nested too deep" in error.message


def test_a_cameras_command_needs_the_fields_of_its_action():
    from agent.wire import CamerasCommand

    assert parse_command("cameras", b'{"id": "c1", "action": "list"}') == CamerasCommand(id="c1", action="list")
    for body, text in ((b'{"id": "c2", "action": "add"}', "'add' needs 'camera'"),
                       (b'{"id": "c3", "action": "remove"}', "'remove' needs 'name'"),
                       (b'{"id": "c4", "action": "rename", "name": "x"}', "field 'action'")):
        with pytest.raises(CommandError, match=text) as caught:
            parse_command("cameras", body)
        assert caught.value.code == "bad_payload"
