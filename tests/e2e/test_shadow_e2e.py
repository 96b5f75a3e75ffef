"""Shadow deploys end to end: the real agent as a subprocess, a real mosquitto, bundles over HTTP.

The camera is the demo video's page scene (as in test_behaviour_e2e), where v4 and v6 both find
about six text boxes a frame and agree 0.99 frame by frame. v6 in shadow agrees above the bound and
is promoted; v4 pruned to 50% (it runs clean and fast, and finds almost nothing: box F1 0) is
discarded in shadow and never serves a frame. Every frame's result is published (``every_frame``)
so that the test sees the serving model's frame ids stay consecutive through the shadow runs.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from agent.fleet.control import ControlClient
from tests.support import agentproc
from tests.support.artifacts import bundle_of, pruned_bundle, sha256
from tests.support.page_scene import page_scene_agent

pytestmark = pytest.mark.slow

DEVICE = "dev-shadow"
CAMERA = "page"
MIN_AGREEMENT = 0.9
"""Chosen on the page scene: v6 agrees with v4 0.99 there (tests/models/test_shadow.py), the 50%-pruned
v4 0.0; over the whole video v6 agrees only 0.40, so the bound holds for this scene, not in general."""
MIN_FRAMES = 10
"""Compared frames a shadow run needs: v6 infers slowly on a shared CI core, beside v4."""
BUDGET = 2
"""The candidate sees every second frame."""
SHADOW_S = 240.0
"""The shadow runs' longest duration: MIN_FRAMES of v6 on a loaded machine come well within it."""
BASELINE_FRAMES = 30
"""v4 frames seen before the first deploy (behavioural probation's baseline after a promote)."""
SETTLE_S = 400.0
"""Bound on waiting for a deployment's end (v6 loads, warms and shadows beside v4 on two shared cores)."""


def _config_with_camera(path):
    """agent_config's camera, named ``CAMERA``, with every frame's result published."""
    text = path.read_text(encoding="utf-8")
    text = text.replace(f'[[camera]]\nname = "{agentproc.CAMERA}"\n', f'[[camera]]\nname = "{CAMERA}"\n', 1)
    path.write_text(text + '\n[camera.results.rate]\nmode = "every_frame"\n', encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rig(tmp_path_factory, demo_dir):
    deploy = {"allowed_schemes": ["http"], "probation_s": 5.0, "max_latency_ratio": 100.0, "load_nice": 5,
              "latency_budget_ms": 60_000.0, "shadow_min_agreement": MIN_AGREEMENT,
              "shadow_min_frames": MIN_FRAMES, "shadow_every_nth": BUDGET, "shadow_duration_s": SHADOW_S}
    with page_scene_agent(tmp_path_factory.mktemp("shadow"), demo_dir, DEVICE, deploy,
                          baseline_frames=BASELINE_FRAMES, timeout_s=SETTLE_S, edit=_config_with_camera) as rig:
        yield rig


def _send(rig, name: str, body: dict, timeout_s: float = SETTLE_S):
    client = ControlClient(rig["broker"].url)
    replies = asyncio.run(client.send(name, body, device=DEVICE, timeout_s=timeout_s))
    return replies[0].payload


def _shadow_deploy(rig, deployment_id: str, bundle, **shadow) -> dict:
    server = rig["server"]
    return {"id": deployment_id, "name": "text-det", "version": _version(bundle), "url": server.url(bundle.name),
            "sha256": sha256(bundle), "format": "bundle", "mode": "shadow", **({"shadow": shadow} if shadow else {})}


def _version(bundle) -> str:
    return bundle.name.removeprefix("text-det-").removesuffix(".tar")


def _results(rig) -> list[dict]:
    return [json.loads(m.payload) for m in rig["probe"].snapshot(f"edge/{DEVICE}/results/{CAMERA}")]


def _deployments(rig, deployment_id: str) -> list[dict]:
    payloads = [json.loads(m.payload) for m in rig["probe"].snapshot(f"edge/{DEVICE}/deployment")]
    return [p for p in payloads if p["deployment_id"] == deployment_id]


def _wait_state(rig, deployment_id: str, states: tuple[str, ...], what: str) -> dict:
    """The first deployment status of ``deployment_id`` in one of ``states``, waited for: the command's
    reply comes to the sender's own client, so the probe may see the status after it."""
    message = rig["probe"].wait_for(lambda m: m.topic == f"edge/{DEVICE}/deployment"
                                    and json.loads(m.payload)["deployment_id"] == deployment_id
                                    and json.loads(m.payload)["state"] in states, timeout=SETTLE_S, what=what)
    return json.loads(message.payload)


def _event(rig, kind: str, deployment_id: str) -> dict:
    message = rig["probe"].wait_for(
        lambda m: m.topic == f"edge/{DEVICE}/events" and json.loads(m.payload)["kind"] == kind
        and json.loads(m.payload)["data"].get("deployment_id") == deployment_id,
        what=f"a {kind} event for {deployment_id}")
    return json.loads(message.payload)


def _serving_version(rig) -> str:
    return json.loads(rig["probe"].snapshot(f"edge/{DEVICE}/model")[-1].payload)["version"]


def _assert_consecutive(results: list[dict]) -> None:
    """The serving model's frame ids rise by one (a looping file keeps counting): no frame was dropped
    or skipped for the candidate."""
    ids = [r["frame_id"] for r in results]
    assert ids and ids == list(range(ids[0], ids[0] + len(ids))), ids


def test_bad_shadow_requests_are_refused_and_change_nothing(rig, demo_dir):
    reply = _send(rig, "promote", {"id": "promote-nothing"}, timeout_s=30)
    assert not reply.ok and reply.error.code == "no_shadow", reply
    v6 = bundle_of(demo_dir, "text-det-v6", rig["server"].root)
    for deployment_id, shadow, field in (("shadow-agreement", {"min_agreement": 1.5}, "min_agreement"),
                                         ("shadow-zero-budget", {"budget": 0}, "budget")):
        reply = _send(rig, "deploy", _shadow_deploy(rig, deployment_id, v6, **shadow), timeout_s=30)
        assert not reply.ok and reply.error.code == "bad_payload" and field in reply.error.message, reply
        assert not _deployments(rig, deployment_id)
    assert _serving_version(rig) == "v4"


def test_a_pruned_model_is_discarded_in_shadow_and_never_serves_a_frame(rig, demo_dir):
    pruned = pruned_bundle(demo_dir, rig["server"].root)
    version = _version(pruned)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(reply=_send(rig, "deploy", _shadow_deploy(
        rig, "shadow-pruned", pruned))))
    thread.start()
    _wait_state(rig, "shadow-pruned", ("shadow",), "the pruned model in shadow")
    first_in_shadow = len(_results(rig))
    v6 = bundle_of(demo_dir, "text-det-v6", rig["server"].root)
    busy = _send(rig, "deploy", _shadow_deploy(rig, "shadow-while-busy", v6), timeout_s=30)
    thread.join(SETTLE_S)
    assert not thread.is_alive()
    assert not busy.ok and busy.error.code == "busy", busy  # one shadow at a time: the other is refused

    reply = outcome["reply"]
    assert not reply.ok and reply.error.code == "shadow_discarded", reply
    assert f"below the bound {MIN_AGREEMENT}" in reply.error.message, reply.error.message
    report = reply.result["shadow"]
    assert report["frames"] >= MIN_FRAMES and report["agreement"] < MIN_AGREEMENT, report
    assert report["cameras"][CAMERA]["serving_detections_per_frame"] > 1, report  # v4 saw text
    final = _wait_state(rig, "shadow-pruned", ("discarded",), "the pruned model discarded")
    assert final["state"] == "discarded" and final["error"]["code"] == "shadow_discarded", final
    assert final["shadow"]["cameras"][CAMERA]["frames"] == report["cameras"][CAMERA]["frames"]
    event = _event(rig, "shadow_discarded", "shadow-pruned")
    assert event["data"]["shadow"]["agreement"] == report["agreement"]

    results = _results(rig)
    assert all(r["model"]["version"] == "v4" for r in results), "the pruned model served a frame"
    assert len(results) > first_in_shadow
    _assert_consecutive(results)
    assert _serving_version(rig) == "v4"
    status = _send(rig, "status", {"id": "status-after-discard"}, timeout_s=30)
    assert version not in status.result["store"]["versions"], status.result


def test_v6_agrees_in_shadow_and_is_promoted(rig, demo_dir):
    v6 = bundle_of(demo_dir, "text-det-v6", rig["server"].root)
    before = len(_results(rig))
    reply = _send(rig, "deploy", _shadow_deploy(rig, "shadow-v6", v6))
    assert reply.ok, reply
    assert reply.result["state"] == "active" and reply.result["version"] == "v6"
    report = reply.result["shadow"]
    assert report["frames"] >= MIN_FRAMES and report["agreement"] >= MIN_AGREEMENT, report
    camera = report["cameras"][CAMERA]
    assert camera["latency_ratio"] is not None and camera["score_js"] is not None, camera
    assert camera["text"] is None and report["text"] is None, "the camera has no second stage: no text compared"
    event = _event(rig, "shadow_promoted", "shadow-v6")
    assert event["data"]["shadow"]["frames"] == report["frames"]
    states = [d["state"] for d in _deployments(rig, "shadow-v6")]
    assert "shadow" in states and states.index("shadow") < states.index("active"), states
    final = _wait_state(rig, "shadow-v6", ("committed", "rolled_back"), "v6 committed or rolled back")
    assert final["state"] == "committed", final
    assert final["shadow"]["agreement"] == report["agreement"]
    results = _results(rig)[before:]
    versions = [r["model"]["version"] for r in results]
    assert "v6" in versions and versions.index("v6") > 0, "v4 served the shadow run, then v6"
    assert all(v == "v4" for v in versions[:versions.index("v6")])
    _assert_consecutive(results)
