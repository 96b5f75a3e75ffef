"""Command authority: signed commands are done; unsigned, forged, stale and replayed ones are
refused with a named code, in the verify function, the nonce cache and the command router."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.device.commands import CommandJournal, CommandRouter, Outcome
from agent.mqtt.authority import (
    SIGNATURE_FIELD,
    AuthorityError,
    CommandAuthority,
    NonceCache,
    canonical_command,
    load_command_key,
    parse_document,
    sign_command,
    signed_message,
    verify_command,
)
from agent.wire import CommandError, parse_command
from agent.wire.topics import Topics
from tests.support.agentproc import AgentProcess, agent_config
from tests.support.mosquitto import Mosquitto

NOW = 1_800_000_000.0
SKEW = 120.0
TOPICS = Topics("edge", "dev1")
PING = TOPICS.command("ping")
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


def signed(payload: dict[str, Any] | None = None, topic: str = PING, key=KEY, **options) -> dict:
    return sign_command(payload or {"id": "c-1"}, key, topic=topic, now=options.pop("now", NOW),
                        **options)


def refusal(document: Any, topic: str = PING, now: float = NOW) -> AuthorityError:
    with pytest.raises(AuthorityError) as caught:
        verify_command(document, topic, KEY.public_key(), now=now, max_skew_s=SKEW)
    return caught.value


def test_canonical_form_is_sorted_compact_utf8_without_the_signature():
    document = {"b": 1, "a": "é", SIGNATURE_FIELD: "x", "c": [1, {"z": 0, "y": None}]}
    assert canonical_command(document) == '{"a":"é","b":1,"c":[1,{"y":null,"z":0}]}'.encode()
    message = signed_message("edge/dev1/cmd/ping", {"id": "1"})
    assert message == b'edge-agent command v1\nedge/dev1/cmd/ping\n{"id":"1"}'


def test_a_signed_command_verifies_and_still_parses_as_its_command():
    document = signed({"id": "c-1"}, nonce="n" * 16)
    fields = verify_command(document, PING, KEY.public_key(), now=NOW + 5, max_skew_s=SKEW)
    assert (fields.ts, fields.nonce) == (NOW, "n" * 16)
    command = parse_command("ping", json.dumps(document).encode())
    assert (command.id, command.ts, command.nonce) == ("c-1", NOW, "n" * 16)
    assert base64.b64decode(document[SIGNATURE_FIELD]) and len(document["nonce"]) >= 16


def test_signing_keeps_a_given_ts_and_nonce_and_replaces_an_old_signature():
    first = signed({"id": "c-1", "ts": NOW - 1, "nonce": "abcdefghijklmnop"})
    again = sign_command(first, KEY, topic=PING)
    assert (again["ts"], again["nonce"]) == (NOW - 1, "abcdefghijklmnop")
    verify_command(again, PING, KEY.public_key(), now=NOW, max_skew_s=SKEW)


@pytest.mark.parametrize("missing", [SIGNATURE_FIELD, "ts", "nonce"])
def test_a_command_without_signature_ts_or_nonce_is_unsigned(missing: str):
    document = signed()
    del document[missing]
    error = refusal(document)
    assert (error.code, error.command_id) == ("unsigned", "c-1")
    assert missing in error.message


def test_a_non_object_is_unsigned_with_a_null_id():
    error = refusal([1, 2])
    assert (error.code, error.command_id) == ("unsigned", None)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("ts", "1800000000", "'ts'"),
        ("ts", True, "'ts'"),
        ("nonce", "short", "'nonce'"),
        ("nonce", "has spaces in it ok", "'nonce'"),
        (SIGNATURE_FIELD, "not base64!", SIGNATURE_FIELD),
        (SIGNATURE_FIELD, base64.b64encode(bytes(10)).decode(), SIGNATURE_FIELD),
    ],
)
def test_malformed_signing_fields_are_a_bad_signature_naming_the_field(field, value, named):
    document = signed()
    document[field] = value
    error = refusal(document)
    assert error.code == "bad_signature"
    assert named in error.message


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.update(id="c-2"),
        lambda d: d.update(reason="added after signing"),
        lambda d: d.update(ts=d["ts"] + 1),
        lambda d: d.update(nonce="x" * 20),
    ],
    ids=["changed-id", "added-field", "changed-ts", "changed-nonce"],
)
def test_any_change_after_signing_is_a_bad_signature(tamper):
    document = signed()
    tamper(document)
    assert refusal(document).code == "bad_signature"


def test_a_command_signed_by_another_key_is_a_bad_signature():
    assert refusal(signed(key=OTHER_KEY)).code == "bad_signature"


ELSEWHERE = [TOPICS.command("rollback"), Topics("edge", "dev2").command("ping")]


@pytest.mark.parametrize("topic", ELSEWHERE)
def test_a_command_signed_for_another_topic_is_a_bad_signature(topic: str):
    error = refusal(signed(topic=PING), topic=topic)
    assert error.code == "bad_signature" and topic in error.message


@pytest.mark.parametrize(("offset", "where"), [(-(SKEW + 1), "behind"), (SKEW + 1, "ahead of")])
def test_a_command_outside_the_clock_skew_is_stale(offset: float, where: str):
    error = refusal(signed(now=NOW + offset))
    assert error.code == "stale"
    assert where in error.message


def test_strict_parsing_refuses_duplicate_keys_and_nan():
    for payload in (b'{"id":"a","id":"b"}', b'{"id":"a","ts":NaN}', b"[" * 50_000):
        with pytest.raises(CommandError) as caught:
            parse_document(payload)
        assert caught.value.code == "bad_json"
    with pytest.raises(CommandError, match="payload_too_large"):
        parse_document(b" " * 70_000)


def test_a_nonce_is_refused_as_replayed_until_its_command_would_be_stale(tmp_path: Path):
    cache = NonceCache(SKEW, tmp_path / "nonces.json")
    fields = verify_command(signed(), PING, KEY.public_key(), now=NOW, max_skew_s=SKEW)
    cache.remember(fields, NOW)
    with pytest.raises(AuthorityError, match="replayed"):
        cache.remember(fields, NOW + SKEW - 1)
    restarted = NonceCache(SKEW, tmp_path / "nonces.json")
    with pytest.raises(AuthorityError, match="replayed"):
        restarted.remember(fields, NOW + 1)
    restarted.remember(fields, NOW + SKEW + 1)  # forgotten: the clock check refuses it by now
    assert len(restarted) == 1


def test_the_nonce_cache_is_bounded():
    cache = NonceCache(SKEW, capacity=3)
    for n in range(10):
        fields = verify_command(signed(nonce=f"nonce-{n:012d}"), PING, KEY.public_key(), now=NOW,
                                max_skew_s=SKEW)
        cache.remember(fields, NOW)
    assert len(cache) <= 3


def test_the_key_loader_names_the_file_when_it_is_not_an_ed25519_key(tmp_path: Path):
    good = tmp_path / "control.pub.pem"
    good.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert load_command_key(good).public_bytes_raw() == KEY.public_key().public_bytes_raw()
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match=r"bad\.pem"):
        load_command_key(bad)
    with pytest.raises(ValueError, match=r"missing\.pem"):
        load_command_key(tmp_path / "missing.pem")


# --- in the command router ------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.replies: list[tuple[str | None, Outcome]] = []
        self.rejections: list[tuple[str, str]] = []
        self.handled: list[str] = []

    async def reply(self, command_id: str | None, outcome: Outcome) -> None:
        self.replies.append((command_id, outcome))

    async def rejected(self, name: str, error: CommandError) -> None:
        self.rejections.append((name, error.code))

    async def ping(self, command: Any) -> dict[str, Any]:
        self.handled.append(command.id)
        return {"pong": True}


def route(tmp_path: Path, payloads: list[tuple[str, bytes]], now: float = NOW) -> Recorder:
    recorder = Recorder()
    authority = CommandAuthority(KEY.public_key(), SKEW, NonceCache(SKEW, tmp_path / "nonces.json"),
                                 clock=lambda: now)
    router = CommandRouter(TOPICS, CommandJournal(tmp_path / "journal.json", 100),
                           {"ping": recorder.ping}, recorder.reply, recorder.rejected, authority)

    async def scenario() -> None:
        for topic, payload in payloads:
            await router.on_message(topic, payload)
            await router.wait_idle()

    asyncio.run(scenario())
    return recorder


def encoded(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_the_router_does_a_signed_command_and_refuses_every_other_kind_with_an_event(tmp_path):
    good = signed({"id": "good"})
    forged = signed({"id": "forged"})
    forged["id"] = "forged-2"
    payloads = [
        (PING, encoded(good)),
        (PING, encoded({"id": "plain"})),
        (PING, encoded(forged)),
        (PING, encoded(signed({"id": "old"}, now=NOW - 3600))),
        (PING, encoded(good)),
        (PING, b"not json"),
    ]
    recorder = route(tmp_path, payloads)
    assert recorder.handled == ["good"]
    answers = [(i, o.ok, o.error["code"] if o.error else None) for i, o in recorder.replies]
    assert answers == [
        ("good", True, None),
        ("plain", False, "unsigned"),
        ("forged-2", False, "bad_signature"),
        ("old", False, "stale"),
        ("good", False, "replayed"),
        (None, False, "bad_json"),
    ]
    assert [code for _, code in recorder.rejections] == [
        "unsigned", "bad_signature", "stale", "replayed", "bad_json"]


def test_a_retry_signed_anew_with_the_same_id_is_answered_from_the_journal_not_redone(tmp_path):
    first = signed({"id": "same"})
    retry = signed({"id": "same"})
    assert first["nonce"] != retry["nonce"]
    recorder = route(tmp_path, [(PING, encoded(first)), (PING, encoded(retry))])
    assert recorder.handled == ["same"]
    assert [(i, o.ok) for i, o in recorder.replies] == [("same", True), ("same", True)]


# A signed-looking command whose values have no canonical JSON: a lone surrogate (UTF-8 cannot
# encode it) and 1e400 (a float overflows to infinity). The signature is never reached.
FAKE_SIGNATURE = base64.b64encode(bytes(64)).decode()
NO_CANONICAL_FORM = [
    b'{"id": "%s", "ts": %d, "nonce": "abcdefghijklmnop", "command_signature": "%s", '
    b'"reason": "\\ud800"}',
    b'{"id": "%s", "ts": %d, "nonce": "abcdefghijklmnop", "command_signature": "%s", '
    b'"extra": 1e400}',
]


def no_canonical_form(template: bytes, command_id: str, now: float) -> bytes:
    return template % (command_id.encode(), int(now), FAKE_SIGNATURE.encode())


@pytest.mark.parametrize("template", NO_CANONICAL_FORM, ids=["lone-surrogate", "1e400"])
def test_a_command_without_canonical_form_is_a_bad_payload_with_its_id(tmp_path, template):
    recorder = route(tmp_path, [(PING, no_canonical_form(template, "odd", NOW))])
    assert [(i, o.ok, o.error and o.error["code"]) for i, o in recorder.replies] == [
        ("odd", False, "bad_payload")]
    assert recorder.rejections == [("ping", "bad_payload")]


def test_an_id_with_a_lone_surrogate_is_refused_with_a_null_id(tmp_path):
    payload = no_canonical_form(NO_CANONICAL_FORM[0], "bad\\udfff", NOW)
    recorder = route(tmp_path, [(PING, payload)])
    assert [(i, o.error and o.error["code"]) for i, o in recorder.replies] == [(None, "bad_payload")]


@pytest.mark.slow
def test_a_running_signing_agent_answers_every_command_without_canonical_form(
    tmp_path: Path, demo_dir: Path, mosquitto: Mosquitto, mqtt_probe
):
    public = tmp_path / "control.pub.pem"
    public.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    config = agent_config(tmp_path, demo_dir, mosquitto.url,
                          commands={"public_key_file": str(public), "max_clock_skew_s": 60.0})
    probe = mqtt_probe(mosquitto.port, ["edge/dev1/reply", "edge/dev1/status"])
    agent = AgentProcess(config)
    try:
        probe.wait_for(lambda m: m.topic == "edge/dev1/status"
                       and json.loads(m.payload)["state"] == "online", timeout=90, what="online")
        for n, template in enumerate(NO_CANONICAL_FORM):
            probe.publish("edge/dev1/cmd/ping", no_canonical_form(template, f"odd-{n}", time.time()))
            probe.wait_for(lambda m, n=n: m.topic == "edge/dev1/reply"
                           and json.loads(m.payload)["id"] == f"odd-{n}", timeout=30,
                           what=f"the reply to odd-{n}")
        replies = [json.loads(m.payload) for m in probe.snapshot("edge/dev1/reply")]
        assert [(r["id"], r["error"]["code"]) for r in replies] == [
            ("odd-0", "bad_payload"), ("odd-1", "bad_payload")]
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
