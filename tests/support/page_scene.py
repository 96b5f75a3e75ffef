"""A real agent on the demo video's page scene, with a real mosquitto and an artifact server.

The e2e tests that judge a new model by what it sees (behavioural probation, shadow deploys)
run the old model on the second scene of the demo video, a printed page where v4 and v6 both
find about six text lines a frame: the clip is written once per rig, the agent watches it at
full rate, and the rig is handed out once the old model has its baseline frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2

from tests.support.agentproc import AgentProcess, agent_config
from tests.support.artifacts import ArtifactServer
from tests.support.monitor_support import SCENE_FRAMES, video
from tests.support.mosquitto import Mosquitto, MqttProbe

PAGE_SCENE = 1
"""The demo video's second scene, a printed page: v4 and v6 both find about six text boxes a frame."""
CLIP_FPS = 15.0


def page_clip(path: Path, indices: range | None = None) -> Path:
    """The page scene of the demo video (or its frames ``indices`` of the video), written to ``path`` (mp4)."""
    whole = range(PAGE_SCENE * SCENE_FRAMES, (PAGE_SCENE + 1) * SCENE_FRAMES)
    frames = [video()[i] for i in (whole if indices is None else indices)]
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@contextmanager
def page_scene_agent(tmp: Path, demo: Path, device: str, deploy: dict[str, Any], *, baseline_frames: int,
                     timeout_s: float, edit: Callable[[Path], Path] | None = None) -> Iterator[dict[str, Any]]:
    """A broker, an artifact server (on ``tmp/www``) and an agent watching the page clip with ``[deploy]``
    ``deploy`` (``edit`` rewrites its config first); yields them (``broker``, ``server``, ``probe`` on
    the device's topics, ``agent``) once the agent has processed ``baseline_frames``, and stops them."""
    clip = page_clip(tmp / "page.mp4")
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    www = tmp / "www"
    www.mkdir()
    server = ArtifactServer(www)
    probe = agent = None
    try:
        config = agent_config(tmp, demo, broker.url, device_id=device, deploy=deploy,
                              camera={"uri": str(clip), "pace": "none", "fps": None})
        if edit is not None:
            config = edit(config)
        probe = MqttProbe(broker.port, [f"edge/{device}/#"])
        agent = AgentProcess(config)
        probe.wait_for(lambda m: m.topic == f"edge/{device}/telemetry/latency"
                       and json.loads(m.payload)["frames_processed"] >= baseline_frames,
                       timeout=timeout_s, what="the old model's baseline frames")
        yield {"broker": broker, "server": server, "probe": probe, "agent": agent}
    finally:
        if agent is not None:
            agent.terminate()
        if probe is not None:
            probe.close()
        server.close()
        broker.kill()
