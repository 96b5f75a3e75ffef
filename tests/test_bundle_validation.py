"""Bundle validation: every manifest field the agent parses is checked at unpack, before any swap.

A malformed ``reference`` or ``slices`` used to pass every deploy step, get swapped
in and made ``current``, and only then raise in the monitors: the reply was
``internal_error``, the deployment stuck at ``validating`` and every restart died.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.fleet.control import ControlClient
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeployFailed, DeployRequest, Step
from agent.models.manifest import Manifest
from agent.models.store import ModelStore
from agent.monitor.features import Monitors
from agent.monitor.telemetry import Telemetry
from agent.mqtt.topics import Topics
from agent.signals import Signals
from tests.agentproc import AgentProcess, agent_config
from tests.artifacts import ArtifactServer, sha256
from tests.bundles import demo_files, demo_manifest, manifest_bundle
from tests.test_manager import LONG_PROBATION, Rig

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
        self.signals = Signals(AgentConfig(), Telemetry(Topics("edge", "dev-bv"), "dev-bv", "test"), self._event)
        self.pipeline.observers.append(self.signals.observer)
        serving = self.slot.serving
        assert serving is not None
        self.signals.serving(serving, swapped=False)

    async def _event(self, kind: str, severity: str, message: str, data: dict[str, Any]) -> None:
        self.events.append((kind, severity, message, data))

    async def _swapped(self, new, old, reason) -> None:  # type: ignore[no-untyped-def]
        self.signals.serving(new, swapped=True)
        await super()._swapped(new, old, reason)


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
    request = DeployRequest("text-det", "v9", server.url(bundle.name), sha256(bundle), format="bundle",
                            probation=LONG_PROBATION)

    async def scenario() -> tuple[DeployFailed, MonitoredRig]:
        rig = MonitoredRig(tmp_path, demo)
        await rig.start()
        try:
            with pytest.raises(DeployFailed) as caught:
                await rig.manager.deploy(request)
            await rig.frames_past(len(rig.frames) + 3)
        finally:
            rig.stop()
        return caught.value, rig

    failure, rig = run(scenario())
    assert rig.reports[-1].state == Step.FAILED and rig.reports[-1].error["code"] == failure.code
    assert {v for _, v in rig.frames} == {"v4"}, "the old model must keep serving"
    rig.assert_no_frame_skipped()
    assert rig.swaps == []
    assert rig.store.current_version("text-det") == "v4"
    assert rig.store.versions("text-det") == ["v4"]
    return failure, rig


@pytest.mark.parametrize(("overrides", "field"), BAD_MONITOR_DATA)
def test_a_bundle_with_bad_monitor_data_is_refused_before_the_swap_and_the_old_model_keeps_serving(
        tmp_path, demo_dir, www, overrides, field):
    bundle = manifest_bundle(demo_dir, www.root / "bad.tar", demo_manifest(demo_dir, **overrides))
    failure, rig = refused_by_the_manager(tmp_path, demo_dir, www, bundle)
    assert failure.code == "bad_bundle" and field in failure.message, failure.message
    restarted = load_serving(rig.store.current("text-det"), EngineOptions(threads=1))
    signals = Signals(AgentConfig(), Telemetry(Topics("edge", "dev-bv"), "dev-bv", "test"), rig._event)
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

    signals = Signals(AgentConfig(), Telemetry(Topics("edge", "dev-bv"), "dev-bv", "test"), event)
    signals.serving(serving, swapped=True)
    serving.engine.close()
    assert signals.failures == 1
    assert signals.drift.reference is None and signals.bias.spec.regions == {}
    assert signals._pending and signals._pending[0][0] == "monitor_data_invalid"
    assert "reference" in signals._pending[0][2]


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
