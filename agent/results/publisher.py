"""The cameras' results in the running agent: an observer on the frame loop, a publisher on the asyncio loop.

The frame worker calls ``observe(result)`` for every inferred frame, behind the pipeline's
observer boundary. It runs the camera's ``CameraResults.on_frame`` with the head's
detections (tracker, zones and lines, snapshots, rate) and hands what is to go out to the
asyncio loop through a bounded queue, so the frame thread never waits on MQTT; when the
queue is full the outcome is dropped and counted (``handoff_dropped``). ``run()`` (a task of
the daemon) builds the payloads and publishes them:

- ``results/<camera>`` at once, never queued (QoS 0 by default): counted as
  ``dropped_offline`` while the broker is away;
- each event on ``events`` through the outbox (QoS 1, the topic's sequence numbers, kept
  across broker outages and restarts), as every other event of the agent;
- ``counts/<camera>`` retained, when they change (re-sent on every reconnect);
- the events' pictures on ``snapshots/<camera>`` when the camera's snapshots go over MQTT: the
  bytes of one JPEG, QoS 1, sent at once or counted as dropped (never queued), let out by the
  egress guard only there (``check_image``; a blocked one is counted).

All three pass the egress guard's redaction (a value that may not leave is replaced, the
message is never dropped), as replies and events do.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from agent.core import ResultsSettings
from agent.monitor import EgressBlocked, FailureCount, Telemetry
from agent.results.camera import CameraResults
from agent.results.payloads import counts_payload, event_payload, results_payload
from agent.results.recognize import Reading
from agent.results.snapshots import Picture
from agent.results.stages import SecondStages, StageReading
from agent.results.tracker import TrackedObject
from agent.results.zones import ResultEvent
from agent.vision import Detection, FrameResult, Prediction
from agent.wire import ModelRef, Topics

__all__ = ["HANDOFF_PICTURE_BYTES", "HANDOFF_QUEUE", "ResultsPublisher"]

log = structlog.get_logger(__name__)

HANDOFF_QUEUE = 512
"""Outcomes waiting for the asyncio loop at most: 100 s of one camera at the default 5 results a
second, 10 s of ten. A loop that far behind is stuck; newer outcomes are dropped and counted."""
HANDOFF_PICTURE_BYTES = 16_000_000
"""Snapshot JPEGs waiting for the asyncio loop at most, all cameras together: 80 pictures of the
default 200 kB. A picture past it is dropped and counted (its event still goes out)."""


@dataclass(frozen=True)
class Outcome:
    """What one frame of one camera has to publish (no frame: it stays with the worker; only the
    events' size-bounded JPEGs when the camera's snapshots go over MQTT)."""

    camera: str
    frame_id: int
    capture_ts: float
    width: int
    height: int
    model: ModelRef
    qos: int
    prediction: Prediction | None
    """None: the rate held this frame's results back."""
    tracked: tuple[TrackedObject, ...]
    events: tuple[tuple[ResultEvent, str | None], ...]
    counts: dict[str, dict[str, int]] | None
    pictures: tuple[Picture, ...] = ()
    read: StageReading | None = None
    """What the camera's second stage read in the published prediction's boxes (None: no second stage)."""


class ResultsPublisher:
    """Per camera results of the frame loop, published from the asyncio loop.

    ``settings_of(camera)`` gives a camera's current ``ResultsSettings`` (None: the camera
    is gone); a camera whose settings changed (``cmd/cameras update``) starts its tracks,
    zones and rate again. ``second_stages`` serve the recognizers the cameras name
    (``results.second_stage``): a frame whose results go out has its boxes read first, on the
    frame thread, so its results carry the text.
    """

    def __init__(self, telemetry: Telemetry, topics: Topics,
                 settings_of: Callable[[str], ResultsSettings | None], state_dir: Path,
                 queue_size: int = HANDOFF_QUEUE, second_stages: SecondStages | None = None) -> None:
        self.telemetry = telemetry
        self.topics = topics
        self.settings_of = settings_of
        self.state_dir = state_dir
        self.queue_size = queue_size
        self.second_stages = second_stages
        self._cameras: dict[str, CameraResults] = {}
        self._tracked: dict[str, tuple[int, tuple[TrackedObject, ...]]] = {}
        self._queue: deque[Outcome] = deque()
        self._picture_bytes = 0
        self._pending = 0
        """Outcomes handed over and not yet published (queued, or in the batch the loop works on)."""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._overflowing = False
        self._closing = False
        self._done = asyncio.Event()
        self.failures = FailureCount("results_failed")
        """Frames (frame thread) and outcomes (asyncio loop) whose results failed: counted, logged sparsely."""
        self.published = 0
        self.dropped_offline = 0
        self.held = 0
        self.events = 0
        self.counts = 0
        self.handoff_dropped = 0
        self.snapshots_sent = 0
        self.snapshots_dropped_offline = 0
        self.snapshots_blocked = 0
        self.snapshots_dropped_queue = 0

    # ----- the frame thread ---------------------------------------------------------------
    def observe(self, result: FrameResult) -> None:
        """The pipeline observer: never raises (a failure is counted), never waits on I/O."""
        try:
            self._observe(result)
        except Exception as exc:  # results must never stop inference
            self.failures.failed(result.camera, exc)

    def _observe(self, result: FrameResult) -> None:
        prediction = result.prediction
        if prediction is None:  # a failed or non-finite frame: nothing was seen
            return
        camera = self._camera(result.camera)
        if camera is None:
            self._tracked.pop(result.camera, None)
            return
        frame = result.frame
        detections = tuple(d for d in prediction.items if isinstance(d, Detection))
        outcome = camera.on_frame(frame.image, frame.index, frame.wall_time, frame.captured_at, detections)
        self._tracked[result.camera] = (frame.index, outcome.tracked)
        if not outcome.publish:
            self.held += 1
            if not outcome.events and outcome.counts is None:
                return
        height, width = frame.image.shape[:2]
        read = None
        stage = camera.settings.second_stage
        if outcome.publish and stage is not None and self.second_stages is not None:
            read = self.second_stages.read(stage, result.camera, frame.image, detections)
        self._hand_over(Outcome(
            camera=result.camera, frame_id=frame.index, capture_ts=frame.wall_time, width=width, height=height,
            model=ModelRef(name=result.model, version=result.version), qos=camera.settings.qos,
            prediction=prediction if outcome.publish else None, tracked=outcome.tracked,
            events=outcome.events, counts=outcome.counts, pictures=outcome.pictures, read=read,
        ))

    def tracks(self, camera: str, frame_id: int) -> tuple[TrackedObject, ...]:
        """The tracked objects of the camera's frame ``frame_id`` if it is the last one seen (for the
        live view's track ids, on the frame thread after ``observe``); empty otherwise."""
        seen = self._tracked.get(camera)
        return seen[1] if seen is not None and seen[0] == frame_id else ()

    def read_beside(self, camera: str, image: np.ndarray,
                    detections: Sequence[Detection]) -> tuple[Reading, ...] | None:
        """The camera's second stage on ``detections`` of ``image``, off the results (a shadow run's
        comparison, on the loader thread): not counted in the second stage's frames; None when the
        camera has no second stage or the reading failed."""
        settings = self.settings_of(camera)
        stage = None if settings is None else settings.second_stage
        if stage is None or self.second_stages is None:
            return None
        read = self.second_stages.read(stage, camera, image, detections, counted=False)
        return None if read is None else read.readings

    def _camera(self, name: str) -> CameraResults | None:
        settings = self.settings_of(name)
        if settings is None or not settings.enabled:
            self._cameras.pop(name, None)
            return None
        camera = self._cameras.get(name)
        if camera is None or (camera.settings is not settings and camera.settings != settings):
            camera = self._cameras[name] = CameraResults(name, settings, self.state_dir)
            log.info("results_camera_started", camera=name, zones=[z.name for z in settings.zones],
                     lines=[line.name for line in settings.lines], rate=settings.rate.mode)
        return camera

    def _hand_over(self, outcome: Outcome) -> None:
        with self._lock:
            size, kept = 0, []
            for picture in outcome.pictures:
                if self._picture_bytes + size + len(picture.data) > HANDOFF_PICTURE_BYTES:
                    self.snapshots_dropped_queue += 1
                    continue
                size += len(picture.data)
                kept.append(picture)
            if len(kept) < len(outcome.pictures):
                outcome = replace(outcome, pictures=tuple(kept))
            if len(self._queue) >= self.queue_size:
                self.handoff_dropped += 1
                if not self._overflowing:
                    self._overflowing = True
                    log.warning("results_handoff_full", queued=len(self._queue), camera=outcome.camera,
                                events_lost=len(outcome.events))
                return
            was_empty = not self._queue
            self._queue.append(outcome)
            self._pending += 1
            self._picture_bytes += size
            loop = self._loop
        if was_empty and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the agent is stopping
                loop.call_soon_threadsafe(self._wake.set)

    # ----- the asyncio loop ---------------------------------------------------------------
    async def run(self) -> None:
        """Publish what the frame thread hands over, in order, until ``close()``."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                with self._lock:
                    batch = list(self._queue)
                    self._queue.clear()
                    self._picture_bytes = 0
                    self._overflowing = False
                if not batch:
                    if self._closing:
                        return
                    await self._wake.wait()
                    continue
                for outcome in batch:
                    try:
                        await self.publish(outcome)
                    except Exception as exc:  # one bad outcome must not stop the others
                        self.failures.failed(outcome.camera, exc)
                    finally:
                        with self._lock:
                            self._pending -= 1
        finally:
            self._done.set()

    async def close(self) -> None:
        """Once the frame worker has stopped: publish what is still queued, then let ``run()`` end."""
        self._closing = True
        self._wake.set()
        await self._done.wait()

    async def publish(self, outcome: Outcome) -> None:
        """Events first (in their order), then their pictures, the counts they changed, the frame's results."""
        telemetry, camera = self.telemetry, outcome.camera
        for event, snapshot in outcome.events:
            envelope = telemetry.envelope("events")
            await telemetry.publish(self.topics.events, event_payload(
                device_id=envelope["device_id"], seq=envelope["seq"], ts=envelope["ts"], camera=camera,
                event=event, snapshot=snapshot))
            self.events += 1
        for picture in outcome.pictures:
            await self._send_picture(picture)
        if outcome.counts is not None:
            topic = self.topics.counts(camera)
            envelope = telemetry.envelope(topic.removeprefix(self.topics.base + "/"))
            await telemetry.publish_state(topic, counts_payload(
                device_id=envelope["device_id"], seq=envelope["seq"], ts=envelope["ts"], camera=camera,
                frame_id=outcome.frame_id, capture_ts=outcome.capture_ts, counts=outcome.counts))
            self.counts += 1
        if outcome.prediction is not None:
            topic = self.topics.results(camera)
            envelope = telemetry.envelope(topic.removeprefix(self.topics.base + "/"))
            payload = results_payload(
                device_id=envelope["device_id"], seq=envelope["seq"], ts=envelope["ts"], camera=camera,
                frame_id=outcome.frame_id, capture_ts=outcome.capture_ts, width=outcome.width,
                height=outcome.height, model=outcome.model, prediction=outcome.prediction,
                tracked=outcome.tracked, readings=None if outcome.read is None else outcome.read.readings,
                second_stage=None if outcome.read is None else outcome.read.model)
            if await telemetry.publish_live(topic, payload, outcome.qos):
                self.published += 1
            else:
                self.dropped_offline += 1

    async def _send_picture(self, picture: Picture) -> None:
        try:
            sent = await self.telemetry.publish_image(self.topics.snapshots(picture.camera), picture.data)
        except EgressBlocked:  # counted and logged by the guard
            self.snapshots_blocked += 1
            return
        if sent:
            self.snapshots_sent += 1
        else:
            self.snapshots_dropped_offline += 1

    def health(self) -> dict[str, Any]:
        """``telemetry/health``'s ``results``."""
        with self._lock:
            pending = self._pending
        return {"published": self.published, "dropped_offline": self.dropped_offline, "held": self.held,
                "pending": pending,
                "events": self.events, "counts": self.counts, "handoff_dropped": self.handoff_dropped,
                "failures": self.failures.count, "snapshots_sent": self.snapshots_sent,
                "snapshots_dropped_offline": self.snapshots_dropped_offline,
                "snapshots_blocked": self.snapshots_blocked, "snapshots_dropped_queue": self.snapshots_dropped_queue,
                **({} if self.second_stages is None else
                   {f"second_stage_{k}": v for k, v in self.second_stages.health().items()})}
