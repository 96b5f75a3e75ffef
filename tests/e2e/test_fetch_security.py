"""What a deploy may fetch, and for how long: file:// confined, hashes never revealed, empty artifacts,
a whole-download deadline, SIGTERM during a download, redirects, and URLs redacted wherever they are echoed.

Real files, real loopback HTTP(S) servers (one that trickles), the real manager and a real agent process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from agent.models.fetch import Fetched, FetchError, fetch_artifact, redact_url, verify_artifact
from agent.models.manager import DeployFailed
from agent.wire import DeploymentState, DeploymentStep
from tests.support.agentproc import REPO, AgentProcess, agent_config
from tests.support.artifacts import ArtifactServer, bundle_of, sha256
from tests.support.certificates import make_certificates
from tests.support.deploy_rig import LONG_PROBATION, Rig, deploy_request
from tests.support.http import LoopbackServer, QuietHandler
from tests.support.mosquitto import MqttProbe

TRICKLE_BYTES = 25
TRICKLE_EVERY_S = 3.0
"""25 bytes in 75 s: slow enough that no per-read timeout ever fires, as the issue's server did."""
MAX = 1 << 20


class TrickleHandler(QuietHandler):
    """/trickle: 25 bytes, one every 3 s; /empty: Content-Length 0; /redirect?to=URL: a 302 to URL."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts.path == "/empty":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.requests.set()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(TRICKLE_BYTES))
        self.end_headers()
        try:
            for _ in range(TRICKLE_BYTES):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(TRICKLE_EVERY_S)
        except OSError:
            return  # the client gave up: what the deadline is for


class TrickleServer(LoopbackServer):
    """``TrickleHandler`` on loopback; ``requested`` is set at the first trickle asked for."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(TrickleHandler, tls=tls)
        self.httpd.requests = threading.Event()  # type: ignore[attr-defined]

    @property
    def requested(self) -> threading.Event:
        return self.httpd.requests  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def trickle():
    server = TrickleServer()
    yield server
    server.close()


def _refused(url: str, tmp: Path, **options: object) -> FetchError:
    dest = tmp / "refused"
    with pytest.raises(FetchError) as caught:
        fetch_artifact(url, dest_dir=dest, max_bytes=MAX, **options)  # type: ignore[arg-type]
    assert not dest.exists() or not list(dest.iterdir()), "a refused download leaves no file"
    return caught.value


# ----- file:// -----------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    root, outside = tmp_path / "artifacts", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (root / "model.bin").write_bytes(b"model bytes")
    (outside / "secret").write_bytes(b"not for the sender")
    (root / "escape").symlink_to(outside / "secret")
    (root / "empty.bin").write_bytes(b"")
    os.mkfifo(root / "pipe")
    return root, outside


def test_file_urls_are_refused_when_no_folder_allows_them(tmp_path, files):
    root, _ = files
    error = _refused((root / "model.bin").as_uri(), tmp_path, allowed_schemes=("file",))
    assert error.code == "file_not_allowed" and "file_roots" in error.message


def test_file_urls_read_inside_the_allowed_folders_and_nothing_else(tmp_path, files):
    root, outside = files
    options = {"allowed_schemes": ("file",), "file_roots": (root,)}
    for url in ((root / "model.bin").as_uri(), f"file://localhost{root / 'model.bin'}"):
        fetched = fetch_artifact(url, dest_dir=tmp_path / "dl", max_bytes=MAX, **options)  # type: ignore[arg-type]
        assert fetched.path.read_bytes() == b"model bytes"
    refused = {
        "outside": (outside / "secret").as_uri(),
        "symlink out": (root / "escape").as_uri(),
        "dot-dot": f"file://{root}/../private/secret",
        "a host": f"file://otherhost{root / 'model.bin'}",
        "a fifo": (root / "pipe").as_uri(),
    }
    for what, url in refused.items():
        error = _refused(url, tmp_path, **options)
        assert error.code == "file_not_allowed", what
        assert "not for the sender" not in error.message


def test_a_hash_mismatch_never_carries_the_files_real_hash(tmp_path, files):
    root, _ = files
    fetched = fetch_artifact((root / "model.bin").as_uri(), dest_dir=tmp_path / "dl", max_bytes=MAX,
                             allowed_schemes=("file",), file_roots=(root,))
    real = hashlib.sha256(b"model bytes").hexdigest()
    with pytest.raises(FetchError) as caught:
        verify_artifact(fetched, sha256="a" * 64)
    assert caught.value.code == "hash_mismatch"
    assert real not in caught.value.message and real[:12] not in caught.value.message
    assert not fetched.path.exists()


def test_an_empty_artifact_is_a_clear_error_over_file_and_http(tmp_path, files, trickle):
    root, _ = files
    error = _refused((root / "empty.bin").as_uri(), tmp_path, allowed_schemes=("file",), file_roots=(root,))
    assert error.code == "empty_artifact"
    error = _refused(trickle.url("/empty"), tmp_path, allowed_schemes=("http",))
    assert error.code == "empty_artifact"


# ----- redirects and redaction -------------------------------------------------------------------
def test_redirects_that_leave_the_allowed_schemes_are_refused(tmp_path, trickle, monkeypatch):
    for target, allowed in (("ftp://127.0.0.1/model.bin", ("http", "https")),
                            ("https://127.0.0.1:9/model.bin?token=SECRET", ("http",)),
                            ("file:///etc/passwd", ("http", "file"))):
        error = _refused(trickle.url(f"/redirect?to={target}"), tmp_path, allowed_schemes=allowed)
        assert error.code == "redirect_not_allowed", target
        assert "SECRET" not in error.message
    # https -> http, with http allowed: a downgrade, refused.
    tls_files = make_certificates(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    secure = TrickleServer(tls=context)
    try:
        error = _refused(secure.url(f"/redirect?to={trickle.url('/empty')}"), tmp_path,
                         allowed_schemes=("https", "http"))
        assert error.code == "redirect_not_allowed" and "https://" in error.message
        # The same server answers https -> https: the TLS set-up itself is sound.
        error = _refused(secure.url(f"/redirect?to={secure.url('/empty')}"), tmp_path,
                         allowed_schemes=("https", "http"))
        assert error.code == "empty_artifact"
    finally:
        secure.close()


def test_urls_lose_their_credentials_and_tokens_when_echoed():
    assert redact_url("https://user:pw@h.example/a/b.tar?X-Amz-Signature=abc&X-Amz-Credential=k#frag") == \
        "https://REDACTED@h.example/a/b.tar?REDACTED#REDACTED"
    assert redact_url("http://h:8080/m.onnx") == "http://h:8080/m.onnx"
    assert redact_url("file:///srv/models/m.tar") == "file:///srv/models/m.tar"


# ----- the whole-download deadline ---------------------------------------------------------------
def test_a_download_past_its_deadline_fails_and_frees_the_lock_for_a_rollback(tmp_path, demo_dir, trickle):
    www = tmp_path / "www"
    www.mkdir()
    server = ArtifactServer(www)
    bundle = bundle_of(demo_dir, "text-det-v6", www)
    deadline_s = 2.0

    async def scenario() -> tuple[DeployFailed, float, str, object]:
        rig = Rig(tmp_path, demo_dir, download_timeout_s=deadline_s)
        await rig.start()
        try:
            await rig.manager.deploy(deploy_request(server.url(bundle.name), sha256(bundle), format="bundle",
                                              version="v6", probation=LONG_PROBATION))
            began = time.monotonic()
            with pytest.raises(DeployFailed) as caught:
                await rig.manager.deploy(deploy_request(trickle.url("/trickle"), "0" * 64, version="v7"))
            took = time.monotonic() - began
            last = rig.reports[-1]
            restored = await rig.manager.rollback("right after the timeout")
            return caught.value, took, restored.version, last
        finally:
            rig.stop()

    try:
        failure, took, restored, last = asyncio.run(scenario())
    finally:
        server.close()
    assert (failure.step, failure.code) == (DeploymentStep.DOWNLOADING, "download_timeout")
    assert last.state == DeploymentState.FAILED and last.error["code"] == "download_timeout"  # type: ignore[attr-defined]
    assert took < TRICKLE_BYTES * TRICKLE_EVERY_S / 2, f"the deadline of {deadline_s} s took {took:.1f} s"
    print(f"download_timeout after {took:.2f} s (deadline {deadline_s} s)")
    assert restored == "v4", "the rollback ran at once: the lock was free"


def test_sigterm_during_a_trickling_download_stops_the_agent_within_its_stop_bound(
        tmp_path, demo_dir, mosquitto, trickle):
    device, stop_bound_s = "dev-trickle", 10.0
    config = agent_config(tmp_path, demo_dir, mosquitto.url, device_id=device,
                          agent={"stop_timeout_s": stop_bound_s}, deploy={"allowed_schemes": ["http"]})
    probe = MqttProbe(mosquitto.port, [f"edge/{device}/#"])
    agent = AgentProcess(config)
    try:
        probe.wait_for(lambda m: m.topic == f"edge/{device}/status" and json.loads(m.payload)["state"] == "online",
                       what="agent online")
        body = {"id": "slow", "name": "text-det", "version": "v7", "url": trickle.url("/trickle"),
                "sha256": "0" * 64}
        probe.publish(f"edge/{device}/cmd/deploy", json.dumps(body).encode())
        assert trickle.requested.wait(60), "the agent never started the download"
        probe.wait_for(lambda m: m.topic.endswith("/deployment") and json.loads(m.payload)["state"] == "downloading",
                       what="downloading")
        began = time.monotonic()
        code = agent.terminate(timeout=60)
        took = time.monotonic() - began
    finally:
        agent.kill()
        probe.close()
    print(f"SIGTERM during a download: the agent exited {code} after {took:.2f} s (bound {stop_bound_s} s)")
    assert code == 0, agent.log()[-3000:]
    assert took < stop_bound_s, f"stop took {took:.1f} s"
    assert "Traceback" not in agent.log(), agent.log()[-3000:]


# ----- the control plane signs what it hashed ----------------------------------------------------
def test_deploy_sign_refuses_to_sign_bytes_that_do_not_hash_to_the_given_sha256(tmp_path):
    subprocess.run([sys.executable, "-m", "agent", "model", "keygen", str(tmp_path / "ctl")], check=True, cwd=REPO)
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"model bytes")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "deploy", "--broker", "mqtt://127.0.0.1:9", "--device", "d", "--name", "m",
         "--version", "v1", "--url", artifact.as_uri(), "--sha256", "a" * 64, "--sign", str(tmp_path / "ctl.key")],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode != 0 and "does not hash to the --sha256 given" in done.stderr


def test_fetched_is_what_the_download_hashed(tmp_path, files):
    root, _ = files
    fetched = fetch_artifact((root / "model.bin").as_uri(), dest_dir=tmp_path / "dl", max_bytes=MAX,
                             allowed_schemes=("file",), file_roots=(root,))
    assert fetched == Fetched(fetched.path, 11, hashlib.sha256(b"model bytes").hexdigest())
