"""The deployment manager in-process, on the real models, real video and real files over HTTP.

Every failure must leave the old model serving with no frame skipped: an observer
records each processed frame's index and model version.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from pathlib import Path

import pytest

from agent.models import DeployFailed, DeployRequest
from agent.models.fetch import (
    Statement,
    generate_keypair,
    load_private_key,
    sign_file,
    sign_statement,
)
from agent.models.probation import Probation
from agent.wire import DeploymentState, DeploymentStep
from tests.support.artifacts import bundle_of, nan_model, sha256, slow_bundle
from tests.support.deploy_rig import LONG_PROBATION, Rig, deploy_request, refused


def run(coro):
    return asyncio.run(coro)


def test_hot_swap_to_v6_serves_every_frame_and_closes_the_old_engine(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)

    async def scenario():
        rig = Rig(tmp_path, demo_dir)
        await rig.start()
        old = rig.slot.serving
        try:
            new = await rig.manager.deploy(DeployRequest(
                "text-det", "v6", server.url(bundle.name), sha256(bundle), format="bundle",
                probation=LONG_PROBATION))
            await rig.frames_past(len(rig.frames) + 5)
        finally:
            rig.stop()
        return rig, old, new

    rig, old, new = run(scenario())
    assert new.version == "v6" and old.closed
    versions = [v for _, v in rig.frames]
    first_new = versions.index("v6")
    assert set(versions[:first_new]) == {"v4"} and set(versions[first_new:]) == {"v6"}
    rig.assert_no_frame_skipped()
    states = [r.state for r in rig.reports]
    assert states[:2] == [DeploymentState.RECEIVED, DeploymentState.DOWNLOADING]
    for step in (DeploymentState.VERIFYING, DeploymentState.LOADING, DeploymentState.WARMING,
                 DeploymentState.VALIDATING, DeploymentState.ACTIVE):
        assert step in states
    assert rig.store.current_version("text-det") == "v6"
    assert rig.store.previous_version("text-det") == "v4"
    assert rig.swaps == [("v6", "v4", "deploy")]


@pytest.mark.parametrize("batched_first", [True, False], ids=["batched-to-single", "single-to-batched"])
def test_hot_swaps_between_a_batched_and_an_unbatched_model_skip_no_frame_on_any_camera(
        tmp_path, demo_dir, server, batched_first):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)

    async def scenario():
        rig = Rig(tmp_path, demo_dir, cameras=3, batched_first=batched_first)
        await rig.start()
        try:
            await rig.frames_past(len(rig.frames) + 6)
            await rig.manager.deploy(DeployRequest(
                "text-det", "v6", server.url(bundle.name), sha256(bundle), format="bundle",
                probation=LONG_PROBATION))
            await rig.frames_past(len(rig.frames) + 6)
            await rig.manager.rollback("back to v4")
            await rig.frames_past(len(rig.frames) + 6)
        finally:
            rig.stop()
        return rig

    rig = run(scenario())
    assert [s[:2] for s in rig.swaps] == [("v6", "v4"), ("v4", "v6")]
    assert set(rig.by_camera) == {"cam0", "cam1", "cam2"}
    rig.assert_no_frame_skipped()
    phases: list[tuple[str, set[int]]] = []
    for version, size in rig.batches:
        if not phases or phases[-1][0] != version:
            phases.append((version, set()))
        phases[-1][1].add(size)
    assert [v for v, _ in phases] == ["v4", "v6", "v4"], "each swap falls between two batches"
    first, second, third = (sizes for _, sizes in phases)
    batched, single = (first, second) if batched_first else (second, first)
    assert max(batched) > 1, "the unfused model (dynamic batch) takes several cameras at once"
    assert single == {1}, "the fused model (batch 1) takes one frame at a time"
    assert third == second, "rolled back v4 is loaded like v6 was"


def test_unreachable_url_is_refused(tmp_path, demo_dir):
    failure, _ = refused(tmp_path, demo_dir, deploy_request("http://127.0.0.1:9/model.onnx"))
    assert (failure.step, failure.code) == (DeploymentStep.DOWNLOADING, "unreachable")


def test_404_is_refused(tmp_path, demo_dir, server):
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url("missing.onnx")))
    assert failure.code == "http_error" and "404" in failure.message


def test_truncated_download_is_refused(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url(f"truncated/{bundle.name}"), sha256(bundle),
                                                   format="bundle", version="v6"))
    assert failure.code == "truncated"


def test_hash_mismatch_is_refused_before_anything_is_unpacked(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url(bundle.name), "a" * 64, format="bundle",
                                                            version="v6"))
    assert (failure.step, failure.code) == (DeploymentStep.VERIFYING, "hash_mismatch")


def _statement(key: Path, bundle: Path, version: str = "v6", **fields: object) -> dict[str, object]:
    signed = sign_file(load_private_key(key), bundle, name="text-det", version=version, format="bundle")
    return {**signed, **fields}


@pytest.mark.parametrize(("case", "code"), [
    ("none", "signature_missing"),
    ("bytes_only", "signature_missing"),
    ("other_key", "bad_signature"),
    ("edited", "bad_signature"),
    ("expired", "signature_expired"),
    ("other_version", "statement_mismatch"),
])
def test_a_deploy_without_a_valid_statement_naming_it_is_refused_before_download(
        tmp_path, demo_dir, server, case, code):
    generate_keypair(tmp_path / "ok.key", tmp_path / "ok.pub")
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)
    good = _statement(tmp_path / "ok.key", bundle)
    fields: dict[str, object] = {
        "none": {},
        "bytes_only": {"signature": base64.b64encode(bytes(64)).decode()},
        "other_key": {"statement": _statement(tmp_path / "other.key", bundle)},
        "edited": {"statement": {**good, "version": "v7"}, "version": "v7"},
        "expired": {"statement": sign_statement(load_private_key(tmp_path / "ok.key"), Statement(
            "text-det", "v6", "bundle", sha256(bundle), int(time.time()) - 1))},
        # An old signed artifact (v6's statement) deployed as another version.
        "other_version": {"statement": good, "version": "v7"},
    }[case]
    request = deploy_request(server.url(f"slow/{bundle.name}"), sha256(bundle), format="bundle",
                       **{"version": "v6", **fields})
    failure, rig = refused(tmp_path / "rig", demo_dir, request, public_key_file=tmp_path / "ok.pub")
    assert (failure.step, failure.code) == (DeploymentStep.RECEIVED, code), failure.message
    assert DeploymentState.DOWNLOADING not in [r.state for r in rig.reports], "refused before any byte was fetched"
    if case == "bytes_only":
        assert "no longer accepted" in failure.message


def test_a_bundle_with_its_signed_statement_is_accepted(tmp_path, demo_dir, server):
    generate_keypair(tmp_path / "ok.key", tmp_path / "ok.pub")
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)
    statement = _statement(tmp_path / "ok.key", bundle)

    async def scenario():
        rig = Rig(tmp_path, demo_dir, public_key_file=tmp_path / "ok.pub")
        await rig.start()
        try:
            return await rig.manager.deploy(deploy_request(server.url(bundle.name), sha256(bundle), format="bundle",
                                                     version="v6", statement=statement))
        finally:
            rig.stop()

    assert run(scenario()).version == "v6"


def test_a_file_that_is_not_onnx_is_refused(tmp_path, demo_dir, server):
    junk = server.root / "junk.onnx"
    junk.write_bytes(b"this is not a model" * 100)
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url("junk.onnx"), sha256(junk)))
    assert (failure.step, failure.code) == (DeploymentStep.LOADING, "load_failed")


def test_a_model_whose_output_does_not_fit_the_head_is_refused(tmp_path, demo_dir, server):
    other = server.root / "orientation.onnx"
    shutil.copy(demo_dir / "models" / "orientation-0.0.11" / "model.onnx", other)
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url(other.name), sha256(other)))
    assert failure.step in (DeploymentStep.LOADING, DeploymentStep.VALIDATING)
    assert failure.code in ("does_not_fit_head", "load_failed")


def test_a_model_that_outputs_nan_is_refused(tmp_path, demo_dir, server):
    bad = nan_model(demo_dir / "models" / "text-det-v4" / "model.onnx", server.root / "nan.onnx")
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url(bad.name), sha256(bad)))
    assert (failure.step, failure.code) == (DeploymentStep.WARMING, "non_finite_output")


def test_a_model_over_the_latency_budget_is_refused(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url(bundle.name), sha256(bundle), format="bundle",
                                                   version="v6"), latency_budget_ms=0.01)
    assert (failure.step, failure.code) == (DeploymentStep.VALIDATING, "over_latency_budget")


def test_a_scheme_that_is_not_allowed_is_refused(tmp_path, demo_dir):
    model = demo_dir / "models" / "text-det-v6" / "model.onnx"
    failure, _ = refused(tmp_path, demo_dir, deploy_request(model.as_uri(), sha256(model)), allowed_schemes=("https",),
                      file_roots=(demo_dir,))
    assert failure.code == "scheme_not_allowed"


def test_a_bundle_whose_manifest_names_another_version_is_refused(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url(bundle.name), sha256(bundle), format="bundle",
                                                   version="v7"))
    assert failure.code == "bad_bundle" and "v6" in failure.message


def test_probation_rolls_back_a_model_much_slower_than_the_old_one(tmp_path, demo_dir, server):
    """v4 with a busy chain added infers about 3.5x slower than v4 (the same outputs): a 1.3x bound
    trips, with margin for a machine whose load moves either figure."""
    bundle = slow_bundle(demo_dir, server.root, "v6")

    async def scenario():
        rig = Rig(tmp_path, demo_dir)
        await rig.start()
        await rig.frames_past(20)
        try:
            await rig.manager.deploy(deploy_request(server.url(bundle.name), sha256(bundle), format="bundle",
                                              version="v6", probation=Probation(20.0, 1.0, 0, 1.3, 5)))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 180
            while rig.reports[-1].state not in (DeploymentState.ROLLED_BACK, DeploymentState.COMMITTED):
                assert loop.time() < deadline
                await asyncio.sleep(0.2)
            await rig.frames_past(len(rig.frames) + 3)
        finally:
            rig.stop()
        return rig

    rig = run(scenario())
    final = rig.reports[-1]
    assert final.state == DeploymentState.ROLLED_BACK, final
    assert "p95 latency" in final.error["message"]
    assert [s[0] for s in rig.swaps] == ["v6", "v4"]
    assert rig.frames[-1][1] == "v4"
    assert rig.store.current_version("text-det") == "v4"
    rig.assert_no_frame_skipped()


def test_rollback_command_swaps_to_previous(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)

    async def scenario():
        rig = Rig(tmp_path, demo_dir)
        await rig.start()
        try:
            await rig.manager.deploy(deploy_request(server.url(bundle.name), sha256(bundle), format="bundle",
                                              version="v6"))
            restored = await rig.manager.rollback("operator asked")
            await rig.frames_past(len(rig.frames) + 3)
        finally:
            rig.stop()
        return rig, restored

    rig, restored = run(scenario())
    assert restored.version == "v4"
    assert rig.reports[-1].state == DeploymentState.ROLLED_BACK
    assert rig.frames[-1][1] == "v4"
    rig.assert_no_frame_skipped()


def test_a_second_deploy_while_one_runs_is_refused_clearly(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)

    async def scenario():
        rig = Rig(tmp_path, demo_dir)
        await rig.start()
        try:
            first = asyncio.create_task(rig.manager.deploy(deploy_request(
                server.url(f"slow/{bundle.name}"), sha256(bundle), format="bundle", version="v6")))
            await asyncio.sleep(0.3)
            with pytest.raises(DeployFailed) as caught:
                await rig.manager.deploy(deploy_request(server.url(bundle.name), sha256(bundle), format="bundle",
                                                  version="v6"))
            await first
        finally:
            rig.stop()
        return caught.value

    failure = run(scenario())
    assert failure.code == "busy" and "in progress" in failure.message
