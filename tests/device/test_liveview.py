"""The live view end to end: the real agent subprocess (text-det v4 over the demo video), its
HTTP page, stream and snapshot, and a real headless Chromium rendering the page.

The demo video is a slideshow (the handwriting and the page, then four photos without text,
3 s each at 15 fps, looping); the boxes are drawn in magenta (``BOX_COLOR``), a colour its
photos hardly hold, so counting magenta pixels finds the drawn boxes, and the solid magenta
areas left once the thin outlines are opened away are the labels' tags (``#<track id> ...``).
The page lists the tracked objects with their ids (``data-track``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.device.liveview import BOUNDARY, BOX_COLOR
from tests.device.test_liveview_tracks import TAG_PIXELS, tag_pixels
from tests.support.agentproc import REPO, AgentProcess, agent_config
from tests.support.faultkit import log_events
from tests.support.mosquitto import poll
from tests.support.tmux import Tmux

pytestmark = pytest.mark.slow

CAMERA = "camera0"
"""The test config's camera (agentproc's ``CAMERA``)."""
CHROMIUM = Path("/usr/bin/chromium")
WAIT_S = 60.0
"""Generous for a shared machine; one loop of the video is 18 s."""
FRAME_SIZE = (480, 640)
"""The demo video's frames: height, width."""
BOX_PIXELS = 400
"""Magenta pixels that mean boxes were drawn: one handwriting box is about 1,500 (a 2 px outline),
the page's six lines about 10,000; the photos without text have next to none."""
COLOR_TOLERANCE = 60
"""Per channel: JPEG and the screenshot's scaling move a drawn pixel's colour a little."""
CHROMIUM_TRIES = 4
"""Screenshots taken at most: each is started while the snapshot shows boxes, but the slideshow
may move on to the photos without text while Chromium starts on a loaded machine."""


def box_pixels(image: np.ndarray) -> int:
    """Pixels of the box colour (BGR) in ``image``."""
    difference = np.abs(image[:, :, :3].astype(np.int16) - np.array(BOX_COLOR, dtype=np.int16))
    return int(np.count_nonzero(np.all(difference <= COLOR_TOLERANCE, axis=-1)))


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def live_view_url(agent: AgentProcess) -> str:
    poll(lambda: bool(log_events(agent.log(), "live_view_started")), WAIT_S, "the live view's start")
    return str(log_events(agent.log(), "live_view_started")[0]["url"])


def start_agent(tmp: Path, demo: Path, broker_url: str, **live_view: object) -> AgentProcess:
    return AgentProcess(agent_config(tmp, demo, broker_url, live_view={"listen": "127.0.0.1:0", **live_view}))


def snapshot(url: str, headers: dict[str, str] | None = None) -> np.ndarray:
    """The camera's snapshot, once it has an inferred frame (503 until then)."""
    deadline = time.monotonic() + WAIT_S
    status, body = get(url + f"cameras/{CAMERA}/snapshot.jpg", headers)
    while status == 503 and time.monotonic() < deadline:
        status, body = get(url + f"cameras/{CAMERA}/snapshot.jpg", headers)
    assert status == 200, body[:200]
    assert body[:3] == b"\xff\xd8\xff", "a JPEG"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_snapshot_is_an_annotated_jpeg_of_the_frame_size_and_the_stream_is_multipart_jpegs(
        tmp_path, demo_dir, mosquitto):
    agent = start_agent(tmp_path, demo_dir, mosquitto.url)
    try:
        url = live_view_url(agent)
        image = snapshot(url)
        assert image.shape[:2] == FRAME_SIZE
        poll(lambda: box_pixels(snapshot(url)) >= BOX_PIXELS, WAIT_S, "a snapshot with boxes on the text photos")
        status, page = get(url)
        assert status == 200 and f"/cameras/{CAMERA}/stream.mjpg".encode() in page
        poll(lambda: re.search(rb'<li data-track="(\d+)">#\1 text \d\.\d\d</li>', get(url)[1]) is not None,
             WAIT_S, "the page listing the text photos' tracks with their ids")
        with urllib.request.urlopen(url + f"cameras/{CAMERA}/stream.mjpg", timeout=10) as stream:
            assert stream.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            head = stream.read(1)
            while head.count(b"\xff\xd9") < 2:  # two whole JPEGs
                head += stream.read1(65536)
        assert head.count(f"--{BOUNDARY}\r\nContent-Type: image/jpeg".encode()) >= 2
        assert get(url + "cameras/nope/snapshot.jpg")[0] == 404
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    assert "live_view_stopped" in agent.log()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)")
def test_headless_chromium_shows_the_page_with_boxes_on_the_text_photos(tmp_path, demo_dir, mosquitto):
    agent = start_agent(tmp_path, demo_dir, mosquitto.url)
    shots: list[int] = []
    tags: list[int] = []
    try:
        url = live_view_url(agent)
        for attempt in range(CHROMIUM_TRIES):
            poll(lambda: box_pixels(snapshot(url)) >= BOX_PIXELS, WAIT_S, "the text photos in the snapshot")
            picture = tmp_path / f"live-{attempt}.png"
            shot = subprocess.run(
                [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / f'profile-{attempt}'}", "--window-size=900,700",
                 "--timeout=3000", f"--screenshot={picture}", url],
                capture_output=True, text=True, timeout=WAIT_S)
            assert shot.returncode == 0, shot.stderr
            image = cv2.imread(str(picture), cv2.IMREAD_COLOR)
            assert image is not None, "chromium wrote a PNG"
            shots.append(box_pixels(image))
            tags.append(tag_pixels(image))
            if shots[-1] >= BOX_PIXELS:
                break
    finally:
        agent.terminate()
    assert shots[-1] >= BOX_PIXELS, f"box-coloured pixels in each screenshot: {shots}"
    assert tags[-1] >= TAG_PIXELS, f"pixels of the labels' (track ids') tags in each screenshot: {tags}"


def test_a_listen_beyond_loopback_without_a_token_is_refused(tmp_path, demo_dir, mosquitto):
    config = agent_config(tmp_path, demo_dir, mosquitto.url, live_view={"listen": "0.0.0.0:0"})
    run = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)],
                         cwd=REPO, capture_output=True, text=True, timeout=WAIT_S)
    assert run.returncode == 2
    assert "live_view" in run.stderr and "beyond loopback: set token_file" in run.stderr, run.stderr


def test_beyond_loopback_every_request_needs_the_token(tmp_path, demo_dir, mosquitto):
    token = tmp_path / "live-view.token"
    token.write_text("s3cret-token\n")
    agent = start_agent(tmp_path, demo_dir, mosquitto.url, listen="0.0.0.0:0", token_file=str(token))
    try:
        url = live_view_url(agent).replace("0.0.0.0", "127.0.0.1")
        assert get(url)[0] == 401
        assert get(url + f"cameras/{CAMERA}/snapshot.jpg", {"Authorization": "Bearer wrong"})[0] == 401
        assert snapshot(url, {"Authorization": "Bearer s3cret-token"}).shape[:2] == FRAME_SIZE
        status, page = get(url + "?token=s3cret-token")
        assert status == 200 and b"stream.mjpg?token=s3cret-token" in page
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]


def test_the_terminal_summary_names_the_live_view_url(tmp_path, demo_dir, mosquitto):
    config = agent_config(tmp_path, demo_dir, mosquitto.url, live_view={"listen": "127.0.0.1:0"})
    terminal = Tmux(width=200, height=50)
    try:
        terminal.run("agent", [sys.executable, "-m", "agent", "run", "--config", str(config)], REPO,
                     tmp_path / "agent.rc", env={"PYTHONPATH": str(REPO)})
        screen = terminal.wait_for("agent", "edge-agent is running (Ctrl-C stops it)", history=True, timeout=WAIT_S)
        shown = re.search(r"live\s+(http://127\.0\.0\.1:\d+/)  \(each camera's stream", screen)
        assert shown is not None, screen
        assert snapshot(shown.group(1)).shape[:2] == FRAME_SIZE
        terminal.keys("agent", "C-c")
        poll(lambda: (tmp_path / "agent.rc").exists(), WAIT_S, "the agent's exit")
    finally:
        terminal.close()
