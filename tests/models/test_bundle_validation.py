"""Bundle validation: every manifest field the agent parses is checked at unpack, before any swap.

A malformed ``reference`` or ``slices`` used to pass every deploy step, get swapped
in and made ``current``, and only then raise in the monitors: the reply was
``internal_error``, the deployment stuck at ``validating`` and every restart died.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.config import AgentConfig
from agent.device.monitors import Signals
from agent.fleet.control import ControlClient
from agent.models.bundle import MAX_MEMBERS, MAX_UNPACKED_BYTES, BundleError, unpack_bundle, unpack_limit
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeployFailed
from agent.models.manifest import Manifest, ManifestError, sha256_file
from agent.models.store import ModelStore
from agent.monitor.telemetry import Telemetry
from agent.vision.summary import Monitors
from agent.wire import DeploymentStep
from agent.wire.topics import Topics
from tests.models.test_loader_tensorrt import OPTIONS as TRT_OPTIONS
from tests.models.test_loader_tensorrt import double_gpu  # noqa: F401 (the fixture)
from tests.support.agentproc import AgentProcess, agent_config
from tests.support.artifacts import ArtifactServer, sha256
from tests.support.bundles import DEMO_SOURCE, demo_files, demo_manifest, manifest_bundle, member, write_tar
from tests.support.deploy_rig import Rig, deploy_request, refused
from tests.support.tmpfs import small_tmpfs

BAD_MONITOR_DATA = [
    pytest.param({"reference": {"format": 1, "task": "detect"}}, "reference", id="reference-incomplete"),
    pytest.param({"reference": {"format": 7}}, "reference", id="reference-wrong-format"),
    pytest.param({"slices": {"regions": {"left": [0.5, 0, 0.1, 1]}}}, "slices", id="slices-inverted-box"),
    pytest.param({"slices": {"zones": {}}}, "slices", id="slices-unknown-slicing"),
    pytest.param({"slices": {"regions": {"left": "everywhere"}}}, "slices", id="slices-not-a-box"),
]


class MonitoredRig(Rig):
    """The manager rig with the daemon's monitors: a swap hands the new model to ``Signals``."""

    def __init__(self, tmp: Path, demo: Path, **settings: object) -> None:
        super().__init__(tmp, demo, **settings)
        self.events: list[tuple[str, str, str, dict[str, Any]]] = []
        self.signals = Signals(AgentConfig(), Telemetry(Topics("edge", "dev-bv"), "dev-bv", "test"), self.event)
        self.pipeline.observers.append(self.signals.observer)
        serving = self.slot.serving
        assert serving is not None
        self.signals.serving(serving, swapped=False)

    async def event(self, kind: str, severity: str, message: str, data: dict[str, Any]) -> None:
        self.events.append((kind, severity, message, data))

    async def on_swap(self, new, old, reason) -> None:  # type: ignore[no-untyped-def]
        self.signals.serving(new, swapped=True)
        await super().on_swap(new, old, reason)


@pytest.fixture
def www(tmp_path: Path) -> Iterator[ArtifactServer]:
    """Artifacts served over loopback HTTP from tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    server = ArtifactServer(root)
    yield server
    server.close()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def refused_by_the_manager(tmp_path: Path, demo: Path, server: ArtifactServer,
                           bundle: Path) -> tuple[DeployFailed, MonitoredRig]:
    """Deploy ``bundle`` as text-det v9 to a rig serving v4; it must fail and leave v4 serving every frame."""
    request = deploy_request(server.url(bundle.name), sha256(bundle), format="bundle")
    failure, rig = refused(tmp_path, demo, request, rig_class=MonitoredRig)
    assert isinstance(rig, MonitoredRig)
    return failure, rig


@pytest.mark.parametrize(("overrides", "field"), BAD_MONITOR_DATA)
def test_a_bundle_with_bad_monitor_data_is_refused_before_the_swap_and_the_old_model_keeps_serving(
        tmp_path, demo_dir, www, overrides, field):
    bundle = manifest_bundle(demo_dir, www.root / "bad.tar", demo_manifest(demo_dir, **overrides))
    failure, rig = refused_by_the_manager(tmp_path, demo_dir, www, bundle)
    assert failure.code == "bad_bundle" and field in failure.message, failure.message
    restarted = load_serving(rig.store.current("text-det"), EngineOptions(threads=1))
    signals = Signals(AgentConfig(), Telemetry(Topics("edge", "dev-bv"), "dev-bv", "test"), rig.event)
    signals.serving(restarted, swapped=False)
    assert restarted.version == "v4" and signals.failures == 0
    restarted.engine.close()


def test_monitor_data_is_parsed_once_while_validating_and_the_swap_only_assigns_it(tmp_path, demo_dir):
    manifest = Manifest.model_validate(demo_manifest(demo_dir, slices={"regions": {"left": [0, 0, 0.5, 1]}}))
    data = manifest.monitor_data()
    assert data.slices.regions["left"] == (0, 0, 0.5, 1)
    assert manifest.monitor_data() is data, "parsed once per manifest"
    changed = manifest.model_copy(update={"slices": {}})
    assert changed.monitor_data().slices.regions == {}, "a copy with other slices is parsed afresh"


def test_a_served_model_with_bad_monitor_data_serves_without_them_and_reports_it(tmp_path, demo_dir):
    store = ModelStore(tmp_path / "engines")
    _installed_with(tmp_path / "engines", demo_dir, "v9", reference={"format": 1, "task": "detect"},
                    slices={"regions": "everywhere"})
    serving = load_serving(store.current("text-det"), EngineOptions(threads=1))
    events: list[tuple[str, ...]] = []

    async def event(kind: str, severity: str, message: str, data: dict[str, Any]) -> None:
        events.append((kind, severity, message))

    class Session:
        """Takes the drift report the event goes out with."""

        async def publish(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
            return None

    telemetry = Telemetry(Topics("edge", "dev-bv"), "dev-bv", "test")
    telemetry.attach(Session())
    signals = Signals(AgentConfig(), telemetry, event)
    signals.serving(serving, swapped=True)
    serving.engine.close()
    assert signals.failures == 1
    assert signals.drift.reference is None and signals.bias.spec.regions == {}
    asyncio.run(signals.publish_drift())  # the event waits for the monitors' next report
    assert [kind for kind, _, _ in events] == ["monitor_data_invalid"]
    assert "reference" in events[0][2]


def test_a_monitor_that_raises_on_every_frame_is_counted_and_inference_goes_on(tmp_path, demo_dir):
    class Broken:
        """A monitor with a defect: raises on every frame it is shown."""

        def wants(self, index: int) -> bool:
            return True

        def observe(self, summary: object) -> None:
            raise RuntimeError("monitor defect")

    signals = Signals(AgentConfig(), Telemetry(Topics("edge", "dev-bv"), "dev-bv", "test"), None)  # type: ignore[arg-type]
    monitors = Monitors([Broken(), signals.drift])

    def broken_observer(result: object) -> None:
        raise ValueError("observer defect")

    async def scenario() -> Rig:
        rig = Rig(tmp_path, demo_dir)
        rig.pipeline.observers[:0] = [monitors, broken_observer]
        await rig.start()
        try:
            await rig.frames_past(len(rig.frames) + 10)
        finally:
            rig.stop()
        return rig

    rig = run(scenario())
    rig.assert_no_frame_skipped()
    frames = len(rig.frames)
    assert monitors.failures.count >= frames - 1 and rig.pipeline.observer_failures.count >= frames - 1
    assert signals.drift.snapshot()["samples"] >= frames - 1, "the healthy monitor still saw the frames"


def _installed_with(store_root: Path, demo: Path, version: str, **overrides: Any) -> None:
    """Install the demo model under ``version`` with manifest ``overrides`` straight into a store, as
    an older agent that did not check them would have (no unpack in between)."""
    folder = store_root.parent / f"src-{version}"
    folder.mkdir()
    for name, data in demo_files(demo).items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text(json.dumps(demo_manifest(demo, version, files={}, **overrides)))
    ModelStore(store_root).install(folder)


@pytest.mark.slow
def test_the_agent_refuses_a_bundle_with_bad_monitor_data_with_bad_bundle_and_restarts_serving(
        tmp_path, demo_dir, mosquitto, mqtt_probe):
    device = "dev-bv"
    www = tmp_path / "www"
    www.mkdir()
    server = ArtifactServer(www)
    manifest = demo_manifest(demo_dir, "v9", slices={"regions": {"left": [0.5, 0, 0.1, 1]}})
    bundle = manifest_bundle(demo_dir, www / "bad.tar", manifest)
    config = agent_config(tmp_path, demo_dir, mosquitto.url, device_id=device,
                          deploy={"allowed_schemes": ["http"], "latency_budget_ms": 60_000.0})
    probe = mqtt_probe(mosquitto.port, [f"edge/{device}/#"])
    agent = AgentProcess(config)
    try:
        probe.wait_for(lambda m: m.topic.endswith("/model") and json.loads(m.payload)["version"] == "v4",
                       what="serving v4")
        client = ControlClient(mosquitto.url)
        reply = asyncio.run(client.send("deploy", {"id": "bad-slices", "name": "text-det", "version": "v9",
                                                   "url": server.url(bundle.name), "sha256": sha256(bundle),
                                                   "format": "bundle"}, device=device, timeout_s=120))[0].payload
        assert reply.ok is False and reply.error.code == "bad_bundle", reply
        assert "slices" in reply.error.message
        probe.wait_for(lambda m: m.topic.endswith("/deployment") and json.loads(m.payload)["state"] == "failed"
                       and json.loads(m.payload)["error"]["code"] == "bad_bundle", what="deployment failed")
        assert json.loads(probe.snapshot(f"edge/{device}/model")[-1].payload)["version"] == "v4"
        assert agent.proc.poll() is None, agent.log()
    finally:
        assert agent.terminate() == 0, agent.log()
        server.close()
    assert ModelStore(tmp_path / "engines").current_version("text-det") == "v4"
    count = len(probe.snapshot(f"edge/{device}/status"))
    agent = AgentProcess(config)
    try:
        probe.wait_for(lambda m: m.topic.endswith("/status") and len(probe.snapshot(m.topic)) > count
                       and json.loads(m.payload)["state"] == "online", what="online again after a restart")
        assert json.loads(probe.snapshot(f"edge/{device}/model")[-1].payload)["version"] == "v4"
        assert agent.proc.poll() is None, agent.log()
    finally:
        assert agent.terminate() == 0, agent.log()


@pytest.mark.slow
def test_a_start_whose_current_model_has_bad_monitor_data_serves_and_reports_the_problem(
        tmp_path, demo_dir, mosquitto, mqtt_probe):
    device = "dev-bv-start"
    config = agent_config(tmp_path, demo_dir, mosquitto.url, device_id=device,
                          monitor={"drift_period_s": 0.5, "bias_period_s": 0.5})
    _installed_with(tmp_path / "engines", demo_dir, "v9", reference={"format": 1, "task": "detect"})
    probe = mqtt_probe(mosquitto.port, [f"edge/{device}/#"])
    agent = AgentProcess(config)
    try:
        probe.wait_for(lambda m: m.topic.endswith("/model") and json.loads(m.payload)["version"] == "v9",
                       what="serving v9 despite its reference")
        event = probe.wait_for(lambda m: m.topic.endswith("/events")
                               and json.loads(m.payload)["kind"] == "monitor_data_invalid", what="the problem")
        assert "reference" in json.loads(event.payload)["message"]
        drift = probe.wait_for(lambda m: m.topic.endswith("/telemetry/drift"), what="drift telemetry")
        assert json.loads(drift.payload)["reference"] is None
        assert agent.proc.poll() is None, agent.log()
    finally:
        assert agent.terminate() == 0, agent.log()


# ----- the unpack's limits -------------------------------------------------------------------

def _headers_then_broken(count: int) -> bytes:
    """``count`` small members, then a GNU long-name header whose real header is garbage: reading
    every header raises on that one, so a refusal that names the count stopped before it."""
    blocks = b""
    for i in range(count):
        info = member(f"f{i}", b"x")
        blocks += info.tobuf(tarfile.GNU_FORMAT) + b"x".ljust(tarfile.BLOCKSIZE, b"\0")
    long_header = member("n" * 150, b"").tobuf(tarfile.GNU_FORMAT)
    blocks += long_header[:-tarfile.BLOCKSIZE] + b"\xff" * tarfile.BLOCKSIZE
    return blocks + b"\0" * (2 * tarfile.BLOCKSIZE)


def test_the_member_count_is_checked_while_the_headers_are_read(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(_headers_then_broken(3))
    with pytest.raises(BundleError, match="not a readable tar"):
        unpack_bundle(broken, tmp_path / "a")
    many = tmp_path / "many.tar"
    many.write_bytes(_headers_then_broken(MAX_MEMBERS + 1))
    with pytest.raises(BundleError, match=f"more than {MAX_MEMBERS} members"):
        unpack_bundle(many, tmp_path / "b")
    assert not (tmp_path / "b").exists(), "nothing is written before every header is checked"


def test_a_small_gzip_that_unpacks_far_beyond_its_size_is_refused_before_writing(tmp_path, demo_dir):
    zeros = b"\0" * (64 << 20)
    bomb = write_tar(tmp_path / "bomb.tar.gz", [(member("manifest.json", b"{}"), b"{}"),
                                                 (member("model.onnx", zeros), zeros)], mode="w:gz")
    size = bomb.stat().st_size
    assert unpack_limit(size) < len(zeros), f"{size} bytes of gzip may unpack to {unpack_limit(size)}"
    with pytest.raises(BundleError, match="unpacks to more than"):
        unpack_bundle(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert unpack_limit(10 << 30) == MAX_UNPACKED_BYTES, "an absolute cap whatever the artifact's size"
    compressed = tmp_path / "demo.tar.gz"
    manifest = demo_manifest(demo_dir, "v6")
    plain = manifest_bundle(demo_dir, tmp_path / "demo.tar", manifest)
    with tarfile.open(plain) as source, tarfile.open(compressed, "w:gz") as out:
        for info in source:
            out.addfile(info, source.extractfile(info))
    assert unpack_bundle(compressed, tmp_path / "real").version == "v6", "a real gzipped bundle fits"


COLLISIONS = [
    pytest.param([("model.onnx", tarfile.REGTYPE), ("model.onnx", tarfile.REGTYPE)], id="same-name-twice"),
    pytest.param([("model.onnx", tarfile.REGTYPE), ("./model.onnx", tarfile.REGTYPE)], id="same-after-dot"),
    pytest.param([("LICENSE", tarfile.REGTYPE), ("x//../LICENSE", tarfile.REGTYPE)], id="dotdot"),
    pytest.param([("golden", tarfile.REGTYPE), ("golden/in.npy", tarfile.REGTYPE)], id="file-then-folder"),
    pytest.param([("golden/in.npy", tarfile.REGTYPE), ("golden", tarfile.REGTYPE)], id="folder-then-file"),
    pytest.param([("golden", tarfile.DIRTYPE), ("golden", tarfile.REGTYPE)], id="dir-then-file"),
]


@pytest.mark.parametrize("names", COLLISIONS)
def test_colliding_member_names_are_refused_as_a_bad_bundle(tmp_path, demo_dir, names):
    files = demo_files(demo_dir)
    body = json.dumps(demo_manifest(demo_dir, files={})).encode()
    members = [(member("manifest.json", body), body)]
    members += [(member(n, files.get(n.split("/")[-1], b"data"), kind), files.get(n.split("/")[-1], b"data"))
                for n, kind in names]
    if not any(n == "model.onnx" for n, _ in names):
        members.append((member("model.onnx", files["model.onnx"]), files["model.onnx"]))
    bundle = write_tar(tmp_path / "collide.tar", members)
    with pytest.raises(BundleError, match=r"unsafe path|collides"):
        unpack_bundle(bundle, tmp_path / "out")


def test_a_bundle_with_colliding_members_ends_the_deployment_failed_with_bad_bundle(tmp_path, demo_dir, www):
    files = demo_files(demo_dir)
    body = json.dumps(demo_manifest(demo_dir, files={})).encode()
    model = files["model.onnx"]
    bundle = write_tar(www.root / "collide.tar", [
        (member("manifest.json", body), body), (member("model.onnx", model), model),
        (member("model.onnx/x", b"x"), b"x")])
    failure, _ = refused_by_the_manager(tmp_path, demo_dir, www, bundle)
    assert (failure.step, failure.code) == (DeploymentStep.VERIFYING, "bad_bundle") and "collides" in failure.message


OUTSIDE = [
    pytest.param({"files": {"/etc/hostname": "0" * 64}}, "files", id="files-absolute"),
    pytest.param({"files": {"../../../../etc/hostname": "0" * 64}}, "files", id="files-dotdot"),
    pytest.param({"files": {"model.onnx": "not a hash"}}, "files", id="files-not-a-hash"),
    pytest.param({"golden": [{"input_file": "/etc/hostname", "output_file": "model.onnx"}]}, "golden",
                 id="golden-absolute"),
    pytest.param({"golden": [{"input_file": "LICENSE", "output_file": "../x.npy"}]}, "golden", id="golden-dotdot"),
    pytest.param({"golden": [{"input_file": "missing.npy", "output_file": "LICENSE"}]}, "golden",
                 id="golden-missing"),
]


@pytest.mark.parametrize(("overrides", "field"), OUTSIDE)
def test_manifest_paths_outside_the_bundle_are_refused_without_reading_them(tmp_path, demo_dir, overrides, field):
    manifest = demo_manifest(demo_dir, **overrides)
    bundle = manifest_bundle(demo_dir, tmp_path / "out.tar", manifest, hashes="files" not in overrides)
    with pytest.raises(BundleError) as caught:
        unpack_bundle(bundle, tmp_path / "out")
    assert field in str(caught.value)
    assert sha256_file(Path("/etc/hostname"))[:12] not in str(caught.value)


def test_a_listed_file_reached_through_a_link_out_of_the_folder_is_refused(tmp_path, demo_dir):
    folder = tmp_path / "model"
    shutil.copytree(demo_dir / "models" / DEMO_SOURCE, folder)
    manifest = Manifest.read(folder / "manifest.json")
    (folder / "LICENSE").unlink()
    (folder / "LICENSE").symlink_to("/etc/hostname")
    with pytest.raises(ManifestError, match="link"):
        manifest.check_bundle(folder)


@pytest.mark.usefixtures("double_gpu")
def test_the_fused_graph_cache_is_never_left_partial_on_a_full_disk(tmp_path, demo_dir):
    store = ModelStore(tmp_path / "engines")
    installed = store.install(demo_dir / "models" / "text-det-v4")
    cache = tmp_path / "engines" / ".engine-cache"
    with small_tmpfs(cache, 1):
        with pytest.raises(OSError):
            load_serving(installed, TRT_OPTIONS)
        assert [p.name for p in cache.iterdir()] == [], "no partial fused graph, no temporary file"
