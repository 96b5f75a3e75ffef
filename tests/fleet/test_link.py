"""The control link reads the retained state of every device, also past the broker's per-client QoS 1 queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.fleet.control import ControlClient
from agent.fleet.link import FleetLink
from agent.wire import ModelPayload, StatusPayload, encode_payload
from tests.support.mosquitto import Mosquitto, MqttProbe

DEVICES = 1100
"""More than mosquitto queues for one client at QoS 1 (max_queued_messages 1000 + 20 in flight)."""


def test_discovery_sees_more_devices_than_the_brokers_qos1_queue_holds(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe]) -> None:
    probe = mqtt_probe(mosquitto.port, [])
    for i in range(DEVICES):
        device = f"cam-{i:04d}"
        status = StatusPayload(device_id=device, ts=1.0, seq=1, state="online", agent_version="x",
                               started_at=1.0, groups=("hall",))
        model = ModelPayload(device_id=device, ts=1.0, seq=1, name="text-det", version="1.0.0", sha256="0" * 64,
                             runtime="onnxruntime", since=1.0)
        probe.publish(f"edge/{device}/status", encode_payload(status), retain=True)
        probe.publish(f"edge/{device}/model", encode_payload(model), retain=True)

    async def discover() -> tuple[int, int]:
        async with FleetLink(ControlClient(mosquitto.url)) as link:
            online = sum(d.status == "online" for d in link.view.devices.values())
            serving = sum(d.version == "1.0.0" for d in link.view.devices.values())
            update = StatusPayload(device_id="cam-0007", ts=2.0, seq=2, state="offline", agent_version="x",
                                   started_at=1.0, groups=("hall",))
            await asyncio.to_thread(probe.publish, "edge/cam-0007/status", encode_payload(update), 1, True)
            while link.view.device("cam-0007").status != "offline":
                await link.wait_changed(1.0)
            return online, serving

    assert asyncio.run(discover()) == (DEVICES, DEVICES)
