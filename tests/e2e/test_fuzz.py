"""Fuzzing: the config loader and the command router in-process, and every command topic of
a running agent.

The config loader must answer any text and any environment with a valid config or a
ConfigError naming what is wrong, never another exception. Every command, whatever its
bytes, gets exactly one reply that fits the schema and carries its id (or null when the id
cannot be read); the agent keeps inferring and its memory stays flat.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.core.config import AgentConfig, ConfigError, parse_config
from agent.core.names import NAME_PATTERN
from agent.device.commands import CommandJournal, CommandRouter, Outcome
from agent.device.systemd import one_line
from agent.monitor.telemetry import Telemetry
from agent.wire import (
    ARTIFACT_URL_SCHEMES,
    COMMANDS,
    ERROR_CODE_PATTERN,
    MAX_COMMAND_BYTES,
    MAX_ID_LENGTH,
    CommandError,
    DeployCommand,
    ReplyPayload,
    decode_payload,
)
from agent.wire.topics import Topics
from tests.support.agentproc import AgentProcess, agent_config
from tests.support.artifacts import ArtifactServer
from tests.support.artifacts import sha256 as sha256_of

SECTIONS = ("agent", "mqtt", "source", "model", "telemetry", "watchdog", "deploy", "commands")
KEYS = (
    "device_id", "groups", "state_dir", "log_level", "stop_timeout_s", "url", "prefix", "protocol",
    "keepalive_s", "username", "password_file", "password", "ca_file", "reconnect_min_s",
    "reconnect_max_s", "outbox_max_messages", "outbox_max_age_s", "uri", "loop", "pace",
    "name", "runtime", "threads", "providers", "store", "health_period_s", "stall_s",
    "allowed_schemes", "max_artifact_mb", "public_key_file", "max_clock_skew_s", "nope",
)
DEEP = 2000
"""Deeper than Python's recursion limit: a recursive parser must not crash on it."""

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=40).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.text(alphabet=string.printable, max_size=40),
    st.sampled_from(['"mqtt://u:p@host:1883"', '"mqtts://h"', '"embedded"', '"ftp://x"', "[]",
                     '["a", 1]', "{a = 1}", "1979-05-27T07:32:00Z", "nan", "-inf", '"0"',
                     "[" * DEEP + "]" * DEEP, "{a=" * DEEP + "1" + "}" * DEEP]),
)


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"[{draw(st.sampled_from(SECTIONS) | st.text(max_size=8))}]")
        for _ in range(draw(st.integers(0, 4))):
            lines.append(f"{draw(st.sampled_from(KEYS))} = {draw(scalars)}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=60)))
    return "\n".join(lines)


environments = st.dictionaries(
    st.one_of(
        st.tuples(st.sampled_from(SECTIONS), st.sampled_from(KEYS)).map(
            lambda p: f"EDGE_AGENT__{p[0].upper()}__{p[1].upper()}"
        ),
        st.text(alphabet=string.ascii_uppercase + "_", max_size=30).map(
            lambda s: "EDGE_AGENT__" + s
        ),
    ),
    scalars,
    max_size=4,
)


def parses_or_names_the_error(text: str, environ: dict[str, str]) -> None:
    try:
        config = parse_config(text, "fuzz.toml", environ)
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml: ") or "EDGE_AGENT__" in str(exc), str(exc)
        return
    assert isinstance(config, AgentConfig)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(toml_documents(), environments)
def test_the_config_loader_gives_a_config_or_a_config_error(text: str, environ: dict[str, str]):
    parses_or_names_the_error(text, environ)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), environments)
def test_arbitrary_text_gives_a_config_or_a_config_error(text: str, environ: dict[str, str]):
    parses_or_names_the_error(text, environ)


def test_nesting_deeper_than_the_parser_can_follow_is_a_config_error():
    arrays = "a = " + "[" * DEEP + "]" * DEEP
    tables = "[mqtt]\nurl = " + "{a=" * DEEP + "1" + "}" * DEEP
    for text in (arrays, tables):
        with pytest.raises(ConfigError, match="nested too deep"):
            parse_config(text, "deep.toml", {})
    nested = "[" * DEEP + "]" * DEEP
    with pytest.raises(ConfigError, match=r"model\.threads"):
        parse_config("", "deep.toml", {"EDGE_AGENT__MODEL__THREADS": nested})


# --- commands -------------------------------------------------------------------------------

DEVICE = "dev1"
GROUP = "lab"
TOPICS = Topics("edge", DEVICE)
NAMES = (*COMMANDS, "reboot", "deploy2", "x" * 200, "ping ", "é", "cmd")
"""Command levels; an empty one (``edge/<id>/cmd/``) is not a command topic and is ignored.
Generated levels hold no control characters, surrogates or non-characters: the broker
refuses such topic names (malformed packet), so they never reach an agent."""
FIELDS = ("id", "name", "version", "url", "sha256", "signature", "format", "probation", "reason",
          "ts", "nonce", "command_signature", "extra")
NESTED = 30_000
"""A payload nested this deep: deeper than any recursive parser can follow, yet under the
64 KiB limit, so that it is parsed rather than refused unread."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
ids = st.one_of(st.text(min_size=1, max_size=40), st.just(""), st.just("\ud800"),
                st.text(min_size=MAX_ID_LENGTH + 1, max_size=MAX_ID_LENGTH + 5), json_values)
command_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).flatmap(
    lambda d: ids.map(lambda i: {**d, "id": i} if not isinstance(i, str) or i != "\ud800" else d)
)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    command_like.map(lambda d: json.dumps(d).encode()),
    ids.map(lambda i: json.dumps({"id": i}).encode()),
    st.sampled_from([
        b'{"id": "\\ud800"}',
        b'{"id": "dup", "id": "dup2"}',
        b'{"id": "n", "ts": NaN}',
        b"[" * NESTED + b"]" * NESTED,
        b'{"id": "deep", "x": ' + b"[" * 500 + b"]" * 500 + b"}",
        json.dumps({"id": "big", "reason": "r" * 60_000}).encode(),
        json.dumps({"id": "huge", "reason": "r" * (MAX_COMMAND_BYTES + 1)}).encode(),
        json.dumps({"id": "many", **{f"unknown_field_{n:04d}" * 4: n for n in range(400)}}).encode(),
        b"\xff\xfe\x00{",
        b"",
    ]),
)
command_topics = st.tuples(st.sampled_from([TOPICS.base, f"edge/group/{GROUP}"]),
                           st.sampled_from(NAMES) | st.text(
                               alphabet=st.characters(blacklist_characters="/+#",
                                                      blacklist_categories=("Cc", "Cs", "Cn")),
                               min_size=1, max_size=30)
                           ).map(lambda p: f"{p[0]}/cmd/{p[1]}")


def expected_id(payload: bytes) -> str | None:
    """The id a reply must echo: the command's, when it is readable as the schema says."""
    if len(payload) > MAX_COMMAND_BYTES:
        return None
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    value = document.get("id") if isinstance(document, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if not value.isprintable():
        return None  # control characters: the id is refused, not echoed
    return value


class Answers:
    """The router's reply callback, building and encoding the wire payload as the agent does."""

    def __init__(self) -> None:
        self.telemetry = Telemetry(TOPICS, DEVICE, "fuzz")
        self.replies: list[ReplyPayload] = []
        self.rejected: list[str] = []

    async def reply(self, command_id: str | None, outcome: Outcome) -> None:
        payload = self.telemetry.reply(command_id, outcome.command, outcome.ok, outcome.error,
                                       outcome.result)
        self.replies.append(decode_payload(ReplyPayload, self.telemetry.encode(payload)))

    async def reject(self, name: str, error: CommandError) -> None:
        event = self.telemetry.event("command_rejected", "warning",
                                     f"command {name!r} rejected: {error.message}",
                                     {"command": name, "code": error.code})
        self.telemetry.encode(event)
        self.rejected.append(error.code)


async def handled(command: Any) -> dict[str, Any]:
    return {"id": command.id}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=command_topics, payload=payloads)
def test_every_command_gets_one_reply_that_fits_the_schema_and_echoes_its_id(
    tmp_path_factory, topic: str, payload: bytes
):
    answers = Answers()
    journal = CommandJournal(tmp_path_factory.mktemp("journal") / "journal.json", 100)
    router = CommandRouter(TOPICS, journal, dict.fromkeys(COMMANDS, handled), answers.reply,
                           answers.reject)

    async def scenario() -> None:
        await router.on_message(topic, payload)
        await router.wait_idle()

    asyncio.run(scenario())
    assert len(answers.replies) == 1
    reply = answers.replies[0]
    assert reply.id == expected_id(payload)
    assert reply.ok == (reply.error is None)


# --- a running agent ------------------------------------------------------------------------

AGENT_EXAMPLES = 150
"""Enough to cover every strategy above several times and stay well under a minute."""
RSS_GROWTH_BOUND = 64 * 1024 * 1024
"""Resident memory may grow this much over the whole fuzzing run (allocator noise, the
command journal filling up); a leak per command would exceed it."""
REPLY_WAIT_S = 60.0


@pytest.mark.slow
def test_fuzzed_commands_never_crash_or_stall_the_agent_and_memory_stays_flat(
    tmp_path: Path, demo_dir: Path, mosquitto, mqtt_probe
):
    config = agent_config(tmp_path, demo_dir, mosquitto.url, device_id=DEVICE,
                          agent={"groups": [GROUP]}, deploy={"allowed_schemes": ["http"]})
    probe = mqtt_probe(mosquitto.port, [TOPICS.reply, TOPICS.telemetry("health"), TOPICS.status])
    agent = AgentProcess(config)

    def health() -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in probe.snapshot(TOPICS.telemetry("health"))]

    try:
        probe.wait_for(lambda m: m.topic == TOPICS.status and json.loads(m.payload)["state"] == "online",
                       timeout=REPLY_WAIT_S, what="the agent online")
        probe.wait_for(lambda m: len(health()) >= 3 and health()[-1]["frames_processed"] > 0,
                       timeout=REPLY_WAIT_S, what="the agent warmed up")
        start = health()[-1]

        @settings(max_examples=AGENT_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(topic=command_topics, payload=payloads)
        def one_command(topic: str, payload: bytes) -> None:
            before = len(probe.snapshot(TOPICS.reply))
            probe.publish(topic, payload)
            probe.wait_for(lambda m: len(probe.snapshot(TOPICS.reply)) > before,
                           timeout=REPLY_WAIT_S, what=f"a reply to {payload[:80]!r} on {topic}")
            reply = decode_payload(ReplyPayload, probe.snapshot(TOPICS.reply)[before].payload)
            assert reply.id == expected_id(payload)
            assert reply.ok == (reply.error is None)

        one_command()
        assert agent.proc.poll() is None, agent.log()[-3000:]
        done = time.time()
        end = json.loads(probe.wait_for(
            lambda m: m.topic == TOPICS.telemetry("health") and json.loads(m.payload)["ts"] > done
            and json.loads(m.payload)["frames_processed"] > start["frames_processed"],
            timeout=REPLY_WAIT_S, what="health after the fuzzing, frames still rising").payload)
        growth = end["memory_rss_bytes"] - start["memory_rss_bytes"]
        assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth / 2**20:.1f} MiB"
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]


# --- deploy field values --------------------------------------------------------------------

DEPLOY_FIELDS = ("name", "version", "url", "sha256", "signature", "format", "probation")
LINE_BREAKS = ("\n", "\r\n", "\r", "\x00", "\t", " ", "\u2028", "\x85", "\x1b[2J")
PATH_LIKE = ("../etc", "/etc/passwd", "a/b", "..", ".", "~root", "C:\\x", "./v5", "v5/..", "%2e%2e",
             "v5\\..\\x", "file:///etc/passwd", "http://127.0.0.1:9/x", "https://h/../../x",
             "http://[::1/x", "http://h:99999/x", "data:,x", "v" * 64, "v" * 65)
LONG = 20_000
"""Longer than any field allows, and than a topic level or a path component can be; still
under the 64 KiB command limit once JSON-encoded."""
near_names = st.one_of(
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.tuples(st.sampled_from(["text-det", "v7", "x" * 63]), st.sampled_from(LINE_BREAKS),
              st.booleans()).map(lambda t: t[1] + t[0] if t[2] else t[0] + t[1]),
    st.sampled_from(PATH_LIKE),
)
"""Names and versions at the edge of valid: every valid form, and valid ones one character off."""
field_values = st.one_of(
    st.text(alphabet=st.characters(whitelist_categories=("Cc", "Cf", "Zl", "Zp", "Zs")), max_size=20),
    st.text(max_size=80),
    near_names,
    st.text(min_size=65, max_size=300),
    st.just("a" * LONG),
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True), st.booleans(), st.none(),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
DEPLOY_BASE = {"name": "text-det", "version": "v7", "url": "https://example.com/m.onnx", "sha256": "0" * 64}


def fuzzed_deploy(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with one to four fields given fuzzed values, and sometimes one dropped; or with
    its name or version alone replaced by a near-valid one."""
    anything = st.tuples(st.dictionaries(st.sampled_from(DEPLOY_FIELDS), field_values, min_size=1, max_size=4),
                         st.none() | st.sampled_from(DEPLOY_FIELDS)).map(
        lambda t: {k: v for k, v in {**base, **t[0]}.items() if k != t[1]})
    one_name = st.tuples(st.sampled_from(["name", "version"]), near_names).map(lambda t: {**base, t[0]: t[1]})
    return anything | one_name


def assert_deploy_is_safe(command: DeployCommand) -> None:
    """What an accepted deploy may carry: names and versions that are one path component and
    one printable line, a URL of an artifact scheme."""
    for value in (command.name, command.version):
        assert NAME_PATTERN.fullmatch(value) and ".." not in value, value
        assert one_line(value) == value
    assert command.url.split(":", 1)[0] in ARTIFACT_URL_SCHEMES


DEPLOY_EXAMPLES = 600
"""In-process cases: cheap (no I/O), so enough to reach every strategy's corners."""


@settings(max_examples=DEPLOY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=fuzzed_deploy(DEPLOY_BASE))
def test_fuzzed_deploy_field_values_are_refused_with_a_code_or_accepted_only_when_safe(
    tmp_path_factory, document: dict[str, Any]
):
    accepted: list[DeployCommand] = []

    async def deploy(command: Any) -> dict[str, Any]:
        accepted.append(command)
        return {"id": command.id}

    answers = Answers()
    journal = CommandJournal(tmp_path_factory.mktemp("journal") / "journal.json", 100)
    handlers = {**dict.fromkeys(COMMANDS, handled), "deploy": deploy}
    router = CommandRouter(TOPICS, journal, handlers, answers.reply, answers.reject)
    payload = json.dumps({"id": "fz", **document}).encode()

    async def scenario() -> None:
        await router.on_message(TOPICS.command("deploy"), payload)
        await router.wait_idle()

    asyncio.run(scenario())
    assert len(answers.replies) == 1
    reply = answers.replies[0]
    assert reply.id == expected_id(payload)
    event("accepted" if reply.ok else f"refused: {reply.error.code if reply.error else '?'}")
    if reply.ok:
        assert len(accepted) == 1
        assert_deploy_is_safe(accepted[0])
    else:
        assert not accepted and reply.error is not None
        assert reply.error.code in ("bad_payload", "payload_too_large"), reply.error
        assert re.fullmatch(ERROR_CODE_PATTERN.strip("^$"), reply.error.code)


AGENT_DEPLOY_EXAMPLES = 80
"""Running-agent cases: each valid one is a real download, load, warm-up, swap and probation
(a few seconds on two shared cores), so a bounded number."""
FINAL_STATES = ("committed", "failed", "rolled_back")
UNIQUE = "unique"
"""A base case's version, replaced by one no earlier case used, so that it is a real deploy."""
DEPLOY_WAIT_S = 180.0
"""Only bounds a hang: a deploy of the demo model takes seconds."""


@pytest.mark.slow
def test_fuzzed_deploys_to_a_running_agent_end_in_a_coded_reply_or_a_clean_serve(
    tmp_path: Path, demo_dir: Path, mosquitto, mqtt_probe
):
    www = tmp_path / "www"
    www.mkdir()
    for version in ("text-det-v4", "text-det-v6"):
        (www / f"{version}.onnx").write_bytes((demo_dir / "models" / version / "model.onnx").read_bytes())
    (www / "junk.onnx").write_bytes(b"\x00not onnx" * 50)
    server = ArtifactServer(www)
    artifacts = [(server.url(f.name), sha256_of(f)) for f in sorted(www.iterdir())]
    config = agent_config(tmp_path, demo_dir, mosquitto.url, device_id=DEVICE,
                          source={"pace": "none"},
                          deploy={"allowed_schemes": ["http"], "probation_s": 1.0, "min_probation_frames": 1,
                                  "max_latency_ratio": 100.0, "latency_budget_ms": 60_000.0})
    probe = mqtt_probe(mosquitto.port, [TOPICS.reply, TOPICS.deployment, TOPICS.model,
                                        TOPICS.telemetry("health"), TOPICS.status])
    agent = AgentProcess(config)
    counts = {"cases": 0, "served": 0, "refused": 0}
    codes: dict[str, int] = {}

    def deployment_of(command_id: str) -> list[dict[str, Any]]:
        return [d for d in (json.loads(m.payload) for m in probe.snapshot(TOPICS.deployment))
                if d["deployment_id"] == command_id]

    try:
        probe.wait_for(lambda m: m.topic == TOPICS.status and json.loads(m.payload)["state"] == "online",
                       timeout=REPLY_WAIT_S, what="the agent online")
        artifact = st.sampled_from(artifacts).map(lambda a: {"url": a[0], "sha256": a[1]})
        bases = artifact.map(lambda a: {"name": "text-det", "version": UNIQUE, "format": "onnx", **a})
        url_values = st.sampled_from([server.url("missing.onnx"), server.url("../../etc/passwd"),
                                      server.url("truncated/text-det-v6.onnx"), "http://127.0.0.1:9/x",
                                      (demo_dir / "models" / "text-det-v6" / "model.onnx").as_uri()])
        kinds = (bases, bases.flatmap(fuzzed_deploy), st.tuples(bases, url_values).map(
            lambda t: {**t[0], "url": t[1]}))
        # About a third real deploys, the rest fuzzed field values and bad artifact URLs.
        cases = st.integers(0, 8).flatmap(lambda i: kinds[0] if i < 3 else kinds[1] if i < 7 else kinds[2])

        @settings(max_examples=AGENT_DEPLOY_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(document=cases)
        def one_deploy(document: dict[str, Any]) -> None:
            counts["cases"] += 1
            command_id = f"fz-{counts['cases']}"
            if document.get("version") == UNIQUE:
                document = {**document, "version": f"f{counts['cases']}"}
            payload = json.dumps({"id": command_id, **document}).encode()
            before = len(probe.snapshot(TOPICS.reply))
            probe.publish(TOPICS.command("deploy"), payload)
            probe.wait_for(lambda m: len(probe.snapshot(TOPICS.reply)) > before,
                           timeout=DEPLOY_WAIT_S, what=f"a reply to deploy {document!r:.200}")
            reply = decode_payload(ReplyPayload, probe.snapshot(TOPICS.reply)[before].payload)
            assert reply.id == expected_id(payload)  # None: too large to read
            if reply.ok:
                counts["served"] += 1
                assert reply.result is not None and reply.result["version"] == document["version"]
            else:
                counts["refused"] += 1
                assert reply.error is not None and re.fullmatch(ERROR_CODE_PATTERN.strip("^$"), reply.error.code)
                codes[reply.error.code] = codes.get(reply.error.code, 0) + 1
            if deployment_of(command_id):  # the manager took it: it must end, not stay half-way
                probe.wait_for(lambda m: m.topic == TOPICS.deployment
                               and json.loads(m.payload)["deployment_id"] == command_id
                               and json.loads(m.payload)["state"] in FINAL_STATES,
                               timeout=DEPLOY_WAIT_S, what=f"deployment {command_id} in a final state")
            assert agent.proc.poll() is None, agent.log()[-3000:]

        one_deploy()
        assert counts["cases"] == AGENT_DEPLOY_EXAMPLES and counts["served"] > 0 and counts["refused"] > 0, counts
        last = json.loads(probe.snapshot(TOPICS.deployment)[-1].payload)
        assert last["state"] in FINAL_STATES, last
        done = time.time()
        probe.wait_for(lambda m: m.topic == TOPICS.telemetry("health") and json.loads(m.payload)["ts"] > done
                       and json.loads(m.payload)["frames_processed"] > 0 and json.loads(m.payload)["model"],
                       timeout=REPLY_WAIT_S, what="health after the fuzzing, still serving")
        print(f"running-agent deploy fuzz: {counts}, refusals by code: {codes}")
    finally:
        code = agent.terminate()
        server.close()
    assert code == 0, agent.log()[-3000:]
