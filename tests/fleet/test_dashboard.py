"""The dashboard in headless Chromium: device table, model versions and alarms on the rendered page."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.results.payloads import counts_payload, event_payload
from agent.results.zones import ResultEvent
from agent.sim.device import fraction
from agent.wire import encode_payload
from tests.support.fleetproc import simulated_fleet, start, stop, wait_started
from tests.support.mosquitto import WAIT_S, Mosquitto, MqttProbe, free_port, poll

CHROMIUM = Path("/usr/bin/chromium")
DEVICES = 6
ALARM_RATE = 0.4
RENDER_BUDGET_MS = 8000
"""Virtual time Chromium gives the page: enough for its first polls of /api/fleet."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)")


def chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,900", f"--virtual-time-budget={RENDER_BUDGET_MS}",
         *mode, url],
        capture_output=True, text=True, timeout=WAIT_S * 4)


def api(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet", timeout=10) as response:
        return response.read().decode()


def section(dom: str, element_id: str, tag: str) -> str:
    match = re.search(rf'<{tag} id="{element_id}">(.*?)</{tag}>', dom, re.S)
    assert match is not None, f"no #{element_id} in the page"
    return match.group(1)


def test_dashboard_shows_devices_versions_and_alarms(mosquitto: Mosquitto, tmp_path: Path) -> None:
    alarmed = {f"sim-{i:04d}" for i in range(DEVICES) if fraction(f"sim-{i:04d}", "alarm") < ALARM_RATE}
    assert alarmed
    port = free_port()
    log = tmp_path / "dashboard.log"
    dashboard = start("fleet", "dashboard", "--broker", mosquitto.url, "--port", str(port), log=log)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_started(dashboard, log)
        with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", "--period", "0.5s",
                             "--alarm-rate", str(ALARM_RATE)):
            poll(lambda: '"alarm_raised"' in api(port), what="an alarm event at the consumer")
            dom = chromium(url, tmp_path / "profile-dom", "--dump-dom")
            shot = chromium(url, tmp_path / "profile-shot", f"--screenshot={tmp_path / 'dashboard.png'}")
    finally:
        stop(dashboard)
    assert dom.returncode == 0, dom.stderr
    assert shot.returncode == 0, shot.stderr
    table = section(dom.stdout, "devices", "tbody")
    for i in range(DEVICES):
        assert f"<b>sim-{i:04d}</b>" in table
    assert table.count('class="version">1.0.0<') == DEVICES
    assert table.count('<span class="cam ok">camera0 open ') == DEVICES, "each device's camera, its state and rate"
    assert table.count("<svg") >= DEVICES * 2
    alarms = section(dom.stdout, "alarms", "ul")
    for device in alarmed:
        assert f'<span class="dev">{device}</span>' in alarms
    assert "alarm_raised: drift brightness" in alarms
    image = (tmp_path / "dashboard.png").read_bytes()
    assert image.startswith(PNG_MAGIC) and len(image) > 20_000


def test_dashboard_shows_each_devices_zone_counts_and_last_object_events(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dashboard.log"
    dashboard = start("fleet", "dashboard", "--broker", mosquitto.url, "--port", str(port), log=log)
    url = f"http://127.0.0.1:{port}/"
    probe = MqttProbe(mosquitto.port)
    try:
        wait_started(dashboard, log)
        now = time.time()
        for device, zones in (("cam-1", {"door": {"person": 2, "car": 1}}), ("cam-2", {"yard": {"dog": 1}})):
            counts = counts_payload(device_id=device, seq=0, ts=now, camera="front", frame_id=5, capture_ts=now,
                                    counts=zones)
            probe.publish(f"edge/{device}/counts/front", encode_payload(counts), retain=True)
        happenings = (ResultEvent("zone_entered", 4, now, 3, "person", (1.0, 2.0, 3.0, 4.0), zone="door"),
                      ResultEvent("object_left", 5, now, 9, "car", (1.0, 2.0, 3.0, 4.0), dwell_s=2.5))
        for seq, happening in enumerate(happenings):
            event = event_payload(device_id="cam-1", seq=seq, ts=now, camera="front", event=happening)
            probe.publish("edge/cam-1/events", encode_payload(event))
        poll(lambda: "object_left" in api(port) and "yard" in api(port), what="counts and events at the consumer")
        dom = chromium(url, tmp_path / "profile-dom", "--dump-dom")
    finally:
        probe.close()
        stop(dashboard)
    assert dom.returncode == 0, dom.stderr
    rows = section(dom.stdout, "objects", "tbody")
    first, second = rows.split('<tr data-device="cam-2">')
    assert '<span class="zone">front / door: person 2, car 1</span>' in first
    newest, oldest = first.index("car #9 object left after 2.5 s"), first.index("person #3 zone entered door")
    assert newest < oldest, "newest event first"
    assert '<span class="zone">front / yard: dog 1</span>' in second and '<td class="events">\u2013</td>' in second


PICTURE_BGR = (40, 160, 40)
"""The published snapshot's colour: a green the dashboard's own page never uses."""
PICTURE_PIXELS = 10_000
"""Pixels of that colour that mean the picture is on the screenshot: it is shown at most 240x180 (43,200)."""


def test_dashboard_shows_each_cameras_latest_snapshot_picture_sent_over_mqtt(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    port = free_port()
    log = tmp_path / "dashboard.log"
    dashboard = start("fleet", "dashboard", "--broker", mosquitto.url, "--port", str(port), log=log)
    url = f"http://127.0.0.1:{port}/"
    probe = MqttProbe(mosquitto.port)
    old = cv2.imencode(".jpg", np.full((120, 160, 3), (200, 40, 40), np.uint8))[1].tobytes()
    image = np.full((180, 240, 3), PICTURE_BGR, np.uint8)
    cv2.putText(image, "#3", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    try:
        wait_started(dashboard, log)
        probe.publish("edge/cam-1/snapshots/front", old)
        probe.publish("edge/cam-1/snapshots/front", jpeg)
        probe.publish("edge/cam-1/snapshots/back", b"\x89PNG not a jpeg")
        poll(lambda: '"n": 2' in api(port), what="the second picture at the consumer")
        with urllib.request.urlopen(f"{url}api/snapshot/cam-1/front", timeout=10) as response:
            assert response.headers["Content-Type"] == "image/jpeg" and response.read() == jpeg, "the latest"
        for missing in ("api/snapshot/cam-1/back", "api/snapshot/cam-9/front", "api/snapshot/cam-1"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + missing, timeout=10)
            assert refused.value.code == 404, missing
        dom = chromium(url, tmp_path / "profile-dom", "--dump-dom")
        shot = chromium(url, tmp_path / "profile-shot", f"--screenshot={tmp_path / 'pictures.png'}")
    finally:
        probe.close()
        stop(dashboard)
    assert dom.returncode == 0, dom.stderr
    assert shot.returncode == 0, shot.stderr
    rows = section(dom.stdout, "objects", "tbody")
    assert '<tr data-device="cam-1">' in rows
    shown = re.search(r'<img class="snapshot" data-key="cam-1/front" alt="cam-1/front" src="(blob:[^"]+)">', rows)
    assert shown is not None, rows
    assert "cam-1/back" not in rows, "a payload that is not a JPEG is not a picture"
    screenshot = cv2.imread(str(tmp_path / "pictures.png"), cv2.IMREAD_COLOR)
    difference = np.abs(screenshot.astype(np.int16) - np.array(PICTURE_BGR, dtype=np.int16))
    green = int(np.count_nonzero(np.all(difference <= 30, axis=-1)))
    assert green >= PICTURE_PIXELS, f"{green} pixels of the picture's colour on the screenshot"
