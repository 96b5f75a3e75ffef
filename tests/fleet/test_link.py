"""The control link reads the retained state of every device, also past the broker's per-client QoS 1 queue, and
a refresh the broker is too busy to answer does not end it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.fleet.control import ControlClient
from agent.fleet.link import FleetLink, LinkError
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


OPERATION_TIMEOUT_S = 10.0
"""aiomqtt's default time for an operation (here the refresh's SUBSCRIBE) to be answered."""


def test_a_refresh_the_broker_does_not_answer_in_time_is_late_not_fatal_and_a_broken_link_still_raises(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe]) -> None:
    probe = mqtt_probe(mosquitto.port, [])

    def status(state: str, seq: int) -> bytes:
        return encode_payload(StatusPayload(device_id="cam-0001", ts=float(seq), seq=seq, state=state,
                                            agent_version="x", started_at=1.0, groups=("hall",)))

    probe.publish("edge/cam-0001/status", status("online", 1), retain=True)

    async def follow() -> tuple[bool, bool, str | None]:
        async with FleetLink(ControlClient(mosquitto.url)) as link:
            mosquitto.pause()
            try:
                late = await link.refresh()
            finally:
                mosquitto.resume()
            await asyncio.to_thread(probe.publish, "edge/cam-0001/status", status("offline", 2), 1, True)
            while link.view.device("cam-0001").status != "offline":
                await link.wait_changed(1.0)
            answered = await link.refresh()
            mosquitto.kill()
            while True:  # the reader sees the connection end; a refresh then raises
                try:
                    await link.refresh()
                except LinkError as exc:
                    return late, answered, str(exc)
                await asyncio.sleep(0.1)

    late, answered, broken = asyncio.run(asyncio.wait_for(follow(), OPERATION_TIMEOUT_S * 6))
    assert late is False, "a refresh the broker did not answer within its time is reported late"
    assert answered is True, "after the broker answered again, the link followed the next change and refreshed"
    assert broken is not None and mosquitto.url in broken
