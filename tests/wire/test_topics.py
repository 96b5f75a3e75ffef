"""Topics: the topic tree of one device, and which command a topic carries."""

from __future__ import annotations

import pytest

from agent.wire.topics import TopicError, Topics

TOPICS = Topics("edge", "cam-7")


def test_device_topics_live_under_prefix_and_id():
    assert TOPICS.status == "edge/cam-7/status"
    assert TOPICS.model == "edge/cam-7/model"
    assert TOPICS.deployment == "edge/cam-7/deployment"
    assert TOPICS.reply == "edge/cam-7/reply"
    assert TOPICS.events == "edge/cam-7/events"
    assert TOPICS.telemetry("latency") == "edge/cam-7/telemetry/latency"


def test_command_filters_cover_the_device_and_each_group():
    assert TOPICS.command_filters(["line-1", "hall"]) == [
        "edge/cam-7/cmd/+",
        "edge/group/line-1/cmd/+",
        "edge/group/hall/cmd/+",
    ]
    assert TOPICS.command_filters() == ["edge/cam-7/cmd/+"]


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("edge/cam-7/cmd/deploy", "deploy"),
        ("edge/group/line-1/cmd/rollback", "rollback"),
        ("edge/cam-8/cmd/deploy", None),
        ("other/cam-7/cmd/deploy", None),
        ("edge/cam-7/cmd/", None),
        ("edge/cam-7/cmd/deploy/extra", None),
        ("edge/cam-7/status", None),
        ("edge/group//cmd/ping", None),
        ("edge", None),
    ],
)
def test_command_name_parses_own_and_group_topics_and_ignores_foreign_ones(topic, name):
    assert TOPICS.command_name(topic) == name


def test_a_prefix_with_levels_round_trips():
    topics = Topics("site-3/edge", "cam-7")
    assert topics.command_name(topics.command("ping")) == "ping"
    assert topics.command_name(topics.group_command("hall", "status")) == "status"
    assert topics.command_name("site-3/cam-7/cmd/ping") is None


@pytest.mark.parametrize(
    ("prefix", "device", "complaint"),
    [
        ("edge", "a/b", "device id"),
        ("edge", "a+", "device id"),
        ("edge", "", "device id"),
        ("edge", "x" * 129, "device id"),
        ("/edge", "cam", "prefix"),
        ("edge/", "cam", "prefix"),
        ("ed#ge", "cam", "prefix level"),
        ("", "cam", "prefix"),
    ],
)
def test_invalid_prefix_or_device_id_is_refused_by_name(prefix, device, complaint):
    with pytest.raises(TopicError, match=complaint):
        Topics(prefix, device)


def test_invalid_kind_group_or_command_name_is_refused_by_name():
    with pytest.raises(TopicError, match="telemetry kind"):
        TOPICS.telemetry("a/b")
    with pytest.raises(TopicError, match="group"):
        TOPICS.command_filters(["+"])
    with pytest.raises(TopicError, match="command name"):
        TOPICS.command("#")
