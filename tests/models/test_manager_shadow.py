"""Shadow deploys through the real deployment manager and pipeline (in process), with the agent's shadow observer.

The candidate is v4 re-versioned (the same model: agreement 1.0), so that each run is cheap;
tests/e2e/test_shadow_e2e.py runs v6 and a pruned v4 through the whole agent.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.models import DeployFailed, DeployRequest
from agent.models.shadow import ShadowDecision, ShadowSpec
from agent.vision.shadow import ShadowRunner
from agent.wire import DeploymentState, DeploymentStep
from tests.support.artifacts import bundle_of, sha256
from tests.support.deploy_rig import LONG_PROBATION, Rig

MIN_FRAMES = 3
WAIT_S = 180.0
"""Bound on waiting for the candidate to load and compare its frames on a loaded machine."""


def _rig(tmp_path, demo_dir) -> Rig:
    rig = Rig(tmp_path, demo_dir)
    rig.pipeline.observers.append(ShadowRunner(rig.manager.shadow, rig.manager.run_beside, None))
    return rig


def _request(server, demo_dir, version: str, duration_s: float, auto_promote: bool) -> DeployRequest:
    bundle = bundle_of(demo_dir, "text-det-v4", server.root, version=version)
    return DeployRequest(name="text-det", version=version, url=server.url(bundle.name), sha256=sha256(bundle),
                         format="bundle", probation=LONG_PROBATION, deployment_id=f"shadow-{version}",
                         shadow=ShadowSpec(min_agreement=0.9, min_frames=MIN_FRAMES, every_nth=1,
                                           auto_promote=auto_promote),
                         shadow_duration_s=duration_s)


async def _until(condition, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.1)


def test_a_waiting_shadow_run_is_promoted_by_command_and_nothing_else_may_run_meanwhile(tmp_path, demo_dir, server):
    async def scenario():
        rig = _rig(tmp_path, demo_dir)
        await rig.start()
        try:
            with pytest.raises(DeployFailed) as nothing:
                await rig.manager.promote()
            assert nothing.value.code == "no_shadow"
            deploy = asyncio.create_task(rig.manager.deploy(_request(server, demo_dir, "v4b", WAIT_S, False)))
            await _until(lambda: rig.manager.shadow.running, "the shadow run starts")
            with pytest.raises(DeployFailed) as busy:
                await rig.manager.deploy(_request(server, demo_dir, "v4c", WAIT_S, True))
            assert busy.value.code == "busy"
            await _until(lambda: rig.manager.shadow.decide()[0] is ShadowDecision.READY, "the bound is met")
            promoted = await rig.manager.promote()
            serving = await deploy
            await rig.frames_past(len(rig.frames) + 3)
        finally:
            rig.stop()
        return rig, promoted, serving

    rig, promoted, serving = asyncio.run(scenario())
    assert promoted.version == serving.version == "v4b"
    assert rig.frames[-1][1] == "v4b"
    states = [r.state for r in rig.reports if r.deployment_id == "shadow-v4b"]
    assert DeploymentState.SHADOW in states and states[-1] is DeploymentState.ACTIVE, states
    final = rig.reports[-1]
    assert final.shadow is not None and final.shadow["frames"] >= MIN_FRAMES and final.shadow["agreement"] == 1.0
    rig.assert_no_frame_skipped()


def test_a_run_whose_promote_never_comes_is_discarded_and_never_serves(tmp_path, demo_dir, server):
    async def scenario():
        rig = _rig(tmp_path, demo_dir)
        await rig.start()
        try:
            deploy = asyncio.create_task(rig.manager.deploy(_request(server, demo_dir, "v4d", 0.1, False)))
            await _until(lambda: deploy.done(), "the shadow run ends")
            with pytest.raises(DeployFailed) as discarded:
                await deploy
            await rig.frames_past(len(rig.frames) + 3)
        finally:
            rig.stop()
        return rig, discarded.value

    rig, failure = asyncio.run(scenario())
    assert (failure.step, failure.code) == (DeploymentStep.SHADOW, "shadow_discarded")
    assert "frames compared" in failure.message or "no promote" in failure.message, failure.message
    assert {version for _, version in rig.frames} == {"v4"}
    assert rig.reports[-1].state is DeploymentState.DISCARDED
    assert "v4d" not in rig.store.versions("text-det")
    rig.assert_no_frame_skipped()
