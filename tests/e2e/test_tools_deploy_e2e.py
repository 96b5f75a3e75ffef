"""A packed, signed bundle deployed end to end: the agent as a subprocess, real mosquitto, HTTP on loopback.

The agent requires signed artifacts. A tampered bundle is refused at verification,
a bundle whose golden output is wrong is refused at validation (the uint8 frame
golden runs through the agent's fused engine), and the good bundle swaps in and
shows up on the retained model topic.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from agent.fleet.control import ControlClient
from agent.models.bundle import pack_bundle, unpack_bundle
from agent.models.fetch import generate_keypair, load_private_key, sign_file
from agent.tools.modelref import find_manifest
from agent.tools.pack import build_manifest, pack_model
from tests.support.agentproc import REPO, AgentProcess, agent_config
from tests.support.artifacts import ArtifactServer, sha256

pytestmark = pytest.mark.slow

DEVICE = "dev-tools"
VERSION = "v4-packed"
REPLY_TIMEOUT_S = 240.0


def _deploy(mosquitto, server, bundle, statement: dict, command_id: str):
    body = {"id": command_id, "name": "text-det", "version": VERSION, "url": server.url(bundle.name),
            "sha256": sha256(bundle), "format": "bundle", "statement": statement}
    client = ControlClient(mosquitto.url)
    return asyncio.run(client.send("deploy", body, device=DEVICE, timeout_s=REPLY_TIMEOUT_S))[0].payload


def _tampered(bundle, out):
    with tarfile.open(bundle) as source, tarfile.open(out, "w") as target:
        for info in source.getmembers():
            data = source.extractfile(info).read()
            if info.name == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            copy = tarfile.TarInfo(info.name)
            copy.size = len(data)
            target.addfile(copy, io.BytesIO(data))
    return out


def _wrong_golden(bundle, work, key):
    """The same bundle, re-hashed and re-signed, whose first golden output is wrong."""
    folder = work / "wrong"
    unpack_bundle(bundle, folder)
    np.save(folder / "golden_0_out.npy", np.load(folder / "golden_0_out.npy") * 0.0 + 0.5)
    out = work / "www" / "wrong-golden.tar"
    pack_bundle(folder, out)
    return out, sign_file(load_private_key(key), out, name="text-det", version=VERSION, format="bundle")


def test_packed_signed_bundle_deploys_and_bad_ones_are_refused(tmp_path, demo_dir, mosquitto, mqtt_probe):
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    www = tmp_path / "www"
    www.mkdir()
    folder = demo_dir / "models" / "text-det-v4"
    manifest = build_manifest(name="text-det", version=VERSION, task="text_detect", labels=["text"],
                              template=find_manifest(folder))
    packed = pack_model(folder / "model.onnx", manifest, www / "text-det.tar", profile_video=demo_dir / "video.mp4",
                        golden_frames=1, profile_frames=8, sign_key=tmp_path / "k.key")
    signature = json.loads(packed.signature.read_text())
    tampered = _tampered(packed.bundle, www / "tampered.tar")
    wrong, wrong_signature = _wrong_golden(packed.bundle, tmp_path, tmp_path / "k.key")

    server = ArtifactServer(www)
    config = agent_config(tmp_path, demo_dir, mosquitto.url, device_id=DEVICE,
                          deploy={"allowed_schemes": ["http"], "public_key_file": str(tmp_path / "k.pub"),
                                  "probation_s": 1.0, "max_latency_ratio": 100.0, "latency_budget_ms": 60_000.0})
    probe = mqtt_probe(mosquitto.port, [f"edge/{DEVICE}/#"])
    agent = AgentProcess(config)
    try:
        probe.wait_for(lambda m: m.topic.endswith("/model") and json.loads(m.payload)["version"] == "v4",
                       timeout=90, what="agent serving v4")

        refused = _deploy(mosquitto, server, tampered, signature, "tampered")
        assert refused.ok is False and refused.error.code == "statement_mismatch", refused
        assert "sha256" in refused.error.message, "the signed statement names other bytes"

        refused = _deploy(mosquitto, server, wrong, wrong_signature, "wrong-golden")
        assert refused.ok is False and refused.error.code == "golden_mismatch", refused
        assert "golden_0_frame.npy" in refused.error.message, "the frame golden ran on the fused engine"

        # The statement `model pack --sign` wrote, sent by the control-plane CLI as it is.
        done = subprocess.run(
            [sys.executable, "-m", "agent", "deploy", "--broker", mosquitto.url, "--device", DEVICE,
             "--name", "text-det", "--version", VERSION, "--url", server.url(packed.bundle.name),
             "--statement", str(packed.signature), "--timeout", str(REPLY_TIMEOUT_S)],
            capture_output=True, text=True, cwd=REPO, timeout=REPLY_TIMEOUT_S + 60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["ok"] is True
        probe.wait_for(lambda m: m.topic.endswith("/model") and json.loads(m.payload)["version"] == VERSION,
                       what=f"model {VERSION} published")
        late = mqtt_probe(mosquitto.port, [f"edge/{DEVICE}/model"])
        retained = late.wait_for(lambda m: m.retain, what="the retained model topic for a late subscriber")
        assert json.loads(retained.payload)["version"] == VERSION
        assert json.loads(retained.payload)["previous"] == {"name": "text-det", "version": "v4"}
    finally:
        assert agent.terminate() == 0, agent.log()[-3000:]
        server.close()
