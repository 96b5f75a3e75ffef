"""Deploying the second stage by name, end to end: the real agent subprocess, a real mosquitto, the
demo video, text-det v4 as the first stage and the real recognizers (PP-OCRv4 rec in the store,
PP-OCRv6 rec_small deployed, a NaN v4 refused), through the CLI and the control client.

The agent starts with one camera and no second stage: a deploy of text-rec is refused (no camera
names it). A camera added by command that names text-rec gets its text without a restart (v4, the
store's current); ``edge-agent deploy --name text-rec`` then puts v6 in the recognizer's slot (the
detector keeps serving) and the results carry v6 and the page's words; a broken recognizer is
refused and v6 reads on; ``edge-agent rollback --name text-rec`` brings v4 back.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from agent.fleet.control import ControlClient
from agent.models.store import ModelStore
from tests.e2e.test_results_e2e import PAGE_WORDS, camera_config
from tests.support.agentproc import REPO, AgentProcess
from tests.support.artifacts import sha256
from tests.support.mosquitto import MqttProbe, poll
from tests.support.rec_bundles import nan_rec_bundle, rec_bundle

pytestmark = pytest.mark.slow

DEVICE = "dev1"
CAMERA = "page"
RESULTS = f"edge/{DEVICE}/results/{CAMERA}"
READ_WAIT_S = 150.0
"""A loop of the video is 18 s, the page is on for 3 s of it; the recognizer sets the rate on 2 loaded cores."""
COMMAND_WAIT_S = 240.0


def body(message: Any) -> dict[str, Any]:
    return json.loads(message.payload)  # type: ignore[no-any-return]


def send(url: str, name: str, command: dict[str, Any]) -> dict[str, Any]:
    replies = asyncio.run(ControlClient(url).send(name, command, device=DEVICE, timeout_s=COMMAND_WAIT_S))
    return replies[0].payload.model_dump(mode="json")


def cli(url: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """``edge-agent <args>`` against the device: exit status, its JSON reply, what it told a person."""
    result = subprocess.run([sys.executable, "-m", "agent", *args, "--broker", url, "--device", DEVICE,
                             "--timeout", str(COMMAND_WAIT_S)], capture_output=True, text=True, cwd=REPO,
                            timeout=COMMAND_WAIT_S + 60)
    return result.returncode, json.loads(result.stdout.splitlines()[-1]), result.stderr


def reads(probe: MqttProbe, version: str, after: int = 0) -> list[str]:
    """The texts of results past the first ``after`` whose second stage was text-rec ``version``."""
    return [item["text"] for m in probe.snapshot(RESULTS)[after:]
            if (b := body(m))["second_stage"] == {"name": "text-rec", "version": version}
            for item in b["prediction"]["texts"] if item["text"]]


def wait_reading(probe: MqttProbe, version: str, after: int = 0) -> None:
    poll(lambda: any(word in t for t in reads(probe, version, after) for word in PAGE_WORDS), READ_WAIT_S,
         f"the page's words read by text-rec {version}")


def test_text_rec_is_deployed_by_name_refused_when_broken_and_rolled_back(tmp_path, demo_dir, mosquitto, mqtt_probe):
    www = tmp_path / "www"
    www.mkdir()
    config = camera_config(tmp_path, demo_dir, mosquitto.url,
                           deploy={"allowed_schemes": ["file"], "file_roots": [str(www)], "probation_s": 2.0,
                                   "max_latency_ratio": 100.0, "latency_budget_ms": 60_000.0, "load_nice": 5})
    ModelStore(tmp_path / "engines").install(demo_dir / "models" / "text-rec-v4")
    v6 = rec_bundle(demo_dir, www, "v6")
    broken = nan_rec_bundle(demo_dir, www, "v7")
    url = mosquitto.url
    probe = mqtt_probe(mosquitto.port, [RESULTS, f"edge/{DEVICE}/model", f"edge/{DEVICE}/events",
                                        f"edge/{DEVICE}/status"])
    agent = AgentProcess(config)
    try:
        probe.wait_for(lambda m: m.topic.endswith("/status") and body(m)["state"] == "online", what="agent online")
        early = send(url, "deploy", {"id": "early", "name": "text-rec", "version": "v6", "url": v6.as_uri(),
                                     "sha256": sha256(v6), "format": "bundle"})
        assert early["ok"] is False and early["error"]["code"] == "wrong_model", early
        assert "no camera names a second stage" in early["error"]["message"]

        # A camera added later names text-rec: the store's current v4 is loaded into a new slot.
        added = send(url, "cameras", {"id": "add", "action": "add", "camera": {
            "name": CAMERA, "uri": str(demo_dir / "video.mp4"), "results": {"second_stage": "text-rec"}}})
        assert added["ok"], added
        assert send(url, "cameras", {"id": "rm", "action": "remove", "name": "front"})["ok"]
        wait_reading(probe, "v4")

        code, reply, said = cli(url, "deploy", "--name", "text-rec", "--version", "v6", "--url", v6.as_uri())
        assert code == 0 and reply["ok"], said
        assert reply["result"]["stage"] == "second stage" and reply["result"]["version"] == "v6"
        mark = len(probe.snapshot(RESULTS))
        wait_reading(probe, "v6", mark)
        model = body(probe.snapshot(f"edge/{DEVICE}/model")[-1])
        assert (model["name"], model["version"]) == ("text-det", "v4"), "the detector keeps serving"
        assert [(s["name"], s["version"], s["previous"]) for s in model["second_stages"]] == [
            ("text-rec", "v6", {"name": "text-rec", "version": "v4"})]

        refused = send(url, "deploy", {"id": "nan", "name": "text-rec", "version": "v7", "url": broken.as_uri(),
                                       "sha256": sha256(broken), "format": "bundle"})
        assert refused["ok"] is False and refused["error"]["code"] == "non_finite_output", refused
        mark = len(probe.snapshot(RESULTS))
        wait_reading(probe, "v6", mark)
        assert not reads(probe, "v7"), "the broken recognizer never read a frame"

        unknown = send(url, "rollback", {"id": "rb-unknown", "name": "text-foo"})
        assert unknown["ok"] is False and unknown["error"]["code"] == "wrong_model", unknown
        code, reply, said = cli(url, "rollback", "--name", "text-rec", "--reason", "test")
        assert code == 0 and reply["result"] == {"name": "text-rec", "version": "v4"}, said
        mark = len(probe.snapshot(RESULTS))
        wait_reading(probe, "v4", mark)
    finally:
        exit_code = agent.terminate()
    assert exit_code == 0, agent.log()[-3000:]
    store = ModelStore(tmp_path / "engines")
    assert store.current_version("text-rec") == "v4" and store.versions("text-rec") == ["v4", "v6"]
    assert store.current_version("text-det") == "v4"
    swaps = [body(m)["data"] for m in probe.snapshot(f"edge/{DEVICE}/events") if body(m)["kind"] == "engine_swapped"]
    assert [(s["model"], s["stage"], s["from_version"], s["to_version"]) for s in swaps] == [
        ("text-rec", "second", None, "v4"), ("text-rec", "second", "v4", "v6"), ("text-rec", "second", "v6", "v4")]
    frames = [body(m)["frame_id"] for m in probe.snapshot(RESULTS)]
    assert frames == sorted(set(frames)), "no frame published twice or out of order across the swaps"
