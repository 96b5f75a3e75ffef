"""A fleet of simulated agents on one machine: the real protocol code, no camera and no inference.

Each ``SimAgent`` is the agent's wire side without its frames: a real
``MqttSession`` (its own connection, retained ``status`` with the ``lost`` will,
reconnects, outbox), the real ``Topics`` and the payload and command models of
agent.wire, with each command id answered once (agent.sim.device). It
answers ping, status, deploy and rollback; a deploy walks the deployment states
(received, downloading, verifying, loading, warming, validating, active, then
committed after probation) on the retained ``deployment`` topic and swaps the
retained ``model``. What is simulated, and says so: the artifact is not
downloaded, nothing is inferred, and the numbers in the telemetry (fps, latency,
drift) are made up per device. Failures are chosen by hash: a device whose
``(id, version)`` hashes under ``fail_rate`` fails that version (rolls back
after probation, or fails at download), so a test knows the outcome in advance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from agent.core import MqttSection
from agent.mqtt import MemoryOutbox, MqttSession, SessionState
from agent.sim.device import SimDevice, fails
from agent.sim.fastsession import FastSession
from agent.sim.spec import SimError, SimSpec
from agent.wire import DeviceState

__all__ = ["DEVICES_PER_PROCESS", "SimError", "SimFleet", "SimProcesses", "SimSpec", "auto_processes", "device_ids",
           "fails", "raise_fd_limit"]

log = structlog.get_logger(__name__)

DEVICES_PER_PROCESS = 1000
"""Devices per simulator process when ``--processes`` is not given: one process (one event loop on
one core) carried 1000 devices at the 5 s period with room to spare and was saturated at 2000
(docs/fleet.md)."""
CONNECT_STAGGER_S = 0.005
"""Pause between starting two agents of the whole fleet, so that hundreds do not hit the broker's
accept queue at once (mosquitto listens with a backlog of 100; a SYN past it is retried by TCP after
1, 3, 7 s...) and the connections' setup (a few ms of CPU each) does not starve the devices already
running. Each of N processes pauses N times as long, so the fleet connects at the same rate."""
KEEPALIVE_S = 120
"""The simulated devices' MQTT keep-alive. The agent's 30 s default turned a simulator host's
lateness under load into keep-alive timeouts and reconnect storms (10k devices on 2 busy cores); a
silent death still shows as ``lost`` within 1.5 times this, a killed process at once."""
FDS_PER_AGENT = 2
"""One socket, and the journal file while it is rewritten."""
FD_HEADROOM = 256
OUTBOX_CAPACITY = 1000
"""Per simulated agent: enough for a broker outage of a few minutes at the default period."""
READY_POLL_S = 0.1
STOP_TIMEOUT_S = 30.0
CHILD_STOP_MARGIN_S = 10.0
"""A child process gets its own clean stop (``STOP_TIMEOUT_S``) and this for its exit, then is killed."""
JOURNAL_SIZE = 100
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0


def auto_processes(devices: int) -> int:
    """Processes for ``devices``: ``DEVICES_PER_PROCESS`` each, at least one."""
    return max(1, math.ceil(devices / DEVICES_PER_PROCESS))


def device_ids(spec: SimSpec) -> list[str]:
    """The ids of this shard's devices (all of them with one shard)."""
    width = max(4, len(str(spec.devices - 1)))
    return [f"{spec.id_prefix}-{i:0{width}d}" for i in range(spec.shard, spec.devices, spec.shards)]


def raise_fd_limit(agents: int) -> int:
    """Raise the soft open-files limit to what ``agents`` connections need; the limit in force."""
    need = agents * FDS_PER_AGENT + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SimError(f"{agents} simulated agents need {need} open files; the hard limit is {hard} "
                       "(raise it with ulimit -Hn or LimitNOFILE=)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    log.info("fd_limit_raised", soft=need, hard=hard)
    return need


class SimAgent:
    """One simulated device: a real session (or, with ``transport`` fast, a ``FastSession``) around a
    ``SimDevice``."""

    def __init__(self, spec: SimSpec, device_id: str, state_dir: Path) -> None:
        self.device = SimDevice(spec, device_id, state_dir)
        client_id = f"edge-sim-{device_id}"
        will = (self.device.topics.status, self.device.status_bytes(DeviceState.LOST))
        subscriptions = self.device.topics.command_filters((spec.group,))
        self.session: MqttSession | FastSession
        if spec.transport == "fast":
            self.session = FastSession(spec.url, client_id, will=will, subscriptions=subscriptions,
                                       on_message=self.device.on_message, on_connect=self.device.on_connect,
                                       keepalive_s=KEEPALIVE_S, reconnect_min_s=RECONNECT_MIN_S,
                                       reconnect_max_s=RECONNECT_MAX_S)
        else:
            settings = MqttSection(url=spec.url, prefix=spec.prefix, protocol="5", keepalive_s=KEEPALIVE_S,
                                   reconnect_min_s=RECONNECT_MIN_S, reconnect_max_s=RECONNECT_MAX_S)
            self.session = MqttSession(
                settings, client_id=client_id, will=will, subscriptions=subscriptions,
                on_message=self.device.on_message, on_connect=self.device.on_connect,
                outbox=MemoryOutbox(OUTBOX_CAPACITY),
            )
        self.device.attach(self.session)

    @property
    def connected(self) -> bool:
        return self.session.state is SessionState.CONNECTED

    async def run(self) -> None:
        telemetry = asyncio.create_task(self.device.telemetry_loop())
        try:
            await self.session.run()
        finally:
            telemetry.cancel()
            await asyncio.gather(telemetry, return_exceptions=True)

    async def stop(self) -> None:
        await self.device.stop()
        await self.device.publish_status(DeviceState.OFFLINE)
        await self.session.stop()


class SimFleet:
    """``spec.devices`` agents in this event loop; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, spec: SimSpec) -> None:
        self.spec = spec
        self.agents: list[SimAgent] = []
        self.ready = asyncio.Event()

    @property
    def connected(self) -> int:
        return sum(agent.connected for agent in self.agents)

    async def run(self, stop: asyncio.Event) -> None:
        raise_fd_limit(len(device_ids(self.spec)))
        own_dir = self.spec.state_dir is None
        state_dir = Path(tempfile.mkdtemp(prefix="edge-sim-")) if own_dir else self.spec.state_dir
        assert state_dir is not None
        tasks: list[asyncio.Task[None]] = []
        try:
            for device_id in device_ids(self.spec):
                agent = SimAgent(self.spec, device_id, state_dir)
                self.agents.append(agent)
                tasks.append(asyncio.create_task(agent.run(), name=f"sim-{device_id}"))
                await asyncio.sleep(CONNECT_STAGGER_S * self.spec.shards)
            started = time.monotonic()
            while self.connected < len(self.agents) and not stop.is_set():
                await asyncio.sleep(READY_POLL_S)
            log.info("sim_fleet_connected", devices=len(self.agents), seconds=round(time.monotonic() - started, 2))
            self.ready.set()
            await stop.wait()
        finally:
            stopping = asyncio.gather(*(agent.stop() for agent in self.agents), return_exceptions=True)
            try:
                await asyncio.wait_for(stopping, STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("sim_fleet_stop_timed_out", timeout_s=STOP_TIMEOUT_S)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own_dir:
                shutil.rmtree(state_dir, ignore_errors=True)



def _shard_main(spec: SimSpec, ready: Any) -> None:
    """One shard in a child process: its own event loop until SIGTERM or SIGINT."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        fleet = SimFleet(spec)
        task = asyncio.create_task(fleet.run(stop))
        waiter = asyncio.create_task(fleet.ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if fleet.ready.is_set():
            ready.set()
        waiter.cancel()
        await task

    asyncio.run(main())


class SimProcesses:
    """The fleet of ``spec`` split over ``processes`` child processes, one ``SimFleet`` shard in each.

    One event loop carries about ``DEVICES_PER_PROCESS`` devices before its own lateness shows in
    the deployment times; processes use the other cores, and each has its sockets and journals.
    Children are forked before any event loop runs here. ``run(stop)`` returns once every child
    has stopped; a child that dies early stops the others and raises SimError.
    """

    def __init__(self, spec: SimSpec, processes: int) -> None:
        if processes < 1:
            raise SimError(f"processes must be at least 1, got {processes}")
        self.spec = spec
        self.processes = min(processes, spec.devices)
        self.ready = asyncio.Event()
        context = multiprocessing.get_context("fork")
        self._ready = [context.Event() for _ in range(self.processes)]
        self._children = [context.Process(target=_shard_main, name=f"edge-sim-{k}", daemon=True,
                                          args=(dataclasses.replace(spec, shard=k, shards=self.processes),
                                                self._ready[k]))
                          for k in range(self.processes)]

    def start(self) -> None:
        """Fork the children (call before the event loop starts: forking a running loop is unsafe)."""
        for child in self._children:
            child.start()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                dead = [c.name for c in self._children if c.exitcode is not None]
                if dead:
                    raise SimError(f"simulator processes ended early: {', '.join(dead)} (see their log)")
                if not self.ready.is_set() and all(e.is_set() for e in self._ready):
                    log.info("sim_processes_ready", processes=self.processes, devices=self.spec.devices)
                    self.ready.set()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), READY_POLL_S)
        finally:
            await asyncio.to_thread(self._stop_children)

    def _stop_children(self) -> None:
        for child in self._children:
            if child.exitcode is None and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S + CHILD_STOP_MARGIN_S
        for child in self._children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.exitcode is None:
                log.warning("sim_process_killed", process=child.name)
                child.kill()
                child.join()
