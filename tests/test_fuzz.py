"""Fuzzing: the config loader in-process, and every command topic of a running agent.

The config loader must answer any text and any environment with a valid config or a
ConfigError naming what is wrong, never another exception.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig, ConfigError, parse_config

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
