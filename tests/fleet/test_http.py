"""Where the consumer's HTTP side listens and who may read it: real ``fleet watch``/``fleet dashboard``
processes, real HTTP requests."""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.fleetproc import run, start, stop, wait_started
from tests.support.mosquitto import Mosquitto, free_port

OTHER_LOOPBACK = "127.0.0.2"
"""A loopback address that is not 127.0.0.1: reachable only when the server binds more than 127.0.0.1."""


def get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def listening(process: subprocess.Popen[bytes], log: Path) -> list[str]:
    text = wait_started(process, log)
    return re.findall(r"^listening on (\S+)$", text, re.M)


def test_by_default_metrics_and_dashboard_bind_loopback_only_and_say_so(mosquitto: Mosquitto, tmp_path: Path) -> None:
    metrics_port, page_port = free_port(), free_port()
    log = tmp_path / "watch.log"
    watch = start("fleet", "watch", "--broker", mosquitto.url, "--prometheus-port", str(metrics_port),
                  "--dashboard-port", str(page_port), log=log)
    try:
        urls = listening(watch, log)
        assert sorted(urls) == sorted(f"http://127.0.0.1:{p}/" for p in (metrics_port, page_port))
        assert get(f"http://127.0.0.1:{metrics_port}/metrics") == 200
        assert get(f"http://127.0.0.1:{page_port}/api/fleet") == 200
        for port in (metrics_port, page_port):
            try:
                get(f"http://{OTHER_LOOPBACK}:{port}/healthz")
                raise AssertionError(f"port {port} answered on {OTHER_LOOPBACK}: it is not bound to 127.0.0.1 only")
            except urllib.error.URLError as exc:
                assert isinstance(exc.reason, ConnectionRefusedError), exc
    finally:
        stop(watch)
    assert "bearer token" not in log.read_text()


def test_off_loopback_a_generated_bearer_token_is_required_for_the_data(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dashboard.log"
    dashboard = start("fleet", "dashboard", "--broker", mosquitto.url, "--listen", f"0.0.0.0:{port}", log=log)
    try:
        assert listening(dashboard, log) == [f"http://0.0.0.0:{port}/"]
        found = re.search(r"^bearer token \(required for /metrics and /api/fleet on 0\.0\.0\.0\): (\S+)$",
                          log.read_text(), re.M)
        assert found is not None, log.read_text()
        token = found.group(1)
        assert len(token) >= 40
        base = f"http://{OTHER_LOOPBACK}:{port}"
        assert [get(f"{base}/metrics"), get(f"{base}/api/fleet")] == [401, 401]
        assert [get(f"{base}/metrics", "wrong"), get(f"{base}/api/fleet", token[:-1])] == [401, 401]
        assert [get(f"{base}/metrics", token), get(f"{base}/api/fleet", token)] == [200, 200]
        assert [get(f"{base}/"), get(f"{base}/healthz")] == [200, 200]
    finally:
        stop(dashboard)


def test_a_token_file_gives_the_token_on_any_address(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("a-token-the-operator-chose\n")
    log = tmp_path / "watch.log"
    watch = start("fleet", "watch", "--broker", mosquitto.url, "--listen", f"0.0.0.0:{port}",
                  "--token-file", str(token_file), log=log)
    try:
        assert listening(watch, log) == [f"http://0.0.0.0:{port}/"]
        assert get(f"http://{OTHER_LOOPBACK}:{port}/metrics") == 401
        assert get(f"http://{OTHER_LOOPBACK}:{port}/metrics", "a-token-the-operator-chose") == 200
        assert get(f"http://{OTHER_LOOPBACK}:{port}/api/fleet", "a-token-the-operator-chose") == 404
    finally:
        stop(watch)
    assert "a-token-the-operator-chose" not in log.read_text()


def test_a_bad_listen_address_or_missing_token_file_is_a_usage_error(mosquitto: Mosquitto, tmp_path: Path) -> None:
    bad = run("fleet", "watch", "--broker", mosquitto.url, "--listen", "::1:9464")
    missing = run("fleet", "watch", "--broker", mosquitto.url, "--listen", f"0.0.0.0:{free_port()}",
                  "--token-file", str(tmp_path / "absent"))
    assert (bad.returncode, missing.returncode) == (2, 2)
    assert "brackets" in bad.stderr
    assert "absent" in missing.stderr
