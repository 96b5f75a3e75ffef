"""``telemetry/health`` with no camera left: the payload still validates, and says so with a null ``camera``."""

from __future__ import annotations

from pathlib import Path

from agent.core.config import AgentConfig
from agent.device.daemon import Agent
from agent.wire import CameraState, HealthPayload, decode_payload, encode_payload


def test_health_without_any_camera_has_a_null_camera_and_an_empty_list(tmp_path: Path, demo_dir: Path) -> None:
    config = AgentConfig.model_validate({
        "agent": {"device_id": "dev1", "state_dir": str(tmp_path / "state")},
        "camera": [{"name": "dock", "uri": str(demo_dir / "video.mp4")}],
        "model": {"name": "text-det", "store": str(tmp_path / "engines"), "threads": 1},
    })
    agent = Agent(config)
    try:
        health = agent.telemetry.health(**agent.health_fields())
        assert health.camera is not None and health.camera.state in set(CameraState)
        assert [camera.name for camera in health.cameras] == ["dock"]
        agent.cameras.remove("dock")
        health = agent.telemetry.health(**agent.health_fields())
        assert health.camera is None and health.cameras == []
        assert decode_payload(HealthPayload, encode_payload(health)).camera is None
    finally:
        agent.outbox.close()
