"""Thread CPU priority: load a new model beside the serving one without stealing its frames.

The loader thread raises its niceness only around work that runs without the
GIL (creating the inference session, warm-up inferences): a low-priority thread
that held the GIL would stall the frame worker behind it (priority inversion),
so Python-level work such as graph fusion stays at normal priority. Threads
created meanwhile (ONNX Runtime's intra-op pool for the new session) inherit
the niceness, so on a busy device the serving engine wins the CPU while the new
one loads and warms; after the swap they are put back to the process's
niceness. Lowering niceness again needs CAP_SYS_NICE or an RLIMIT_NICE
allowance: the systemd unit sets ``LimitNICE=+0``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

__all__ = ["lower_thread_priority", "lowered_priority", "restore_thread_priority"]

log = structlog.get_logger(__name__)


def lower_thread_priority(nice: int) -> None:
    """Set the calling thread's niceness (Linux: niceness is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.warning("thread_priority_unchanged", nice=nice, error=str(exc))


@contextmanager
def lowered_priority(nice: int | None) -> Iterator[None]:
    """Run the block with the calling thread at niceness ``nice`` (None: unchanged), then restore it."""
    if not nice:
        yield
        return
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    lower_thread_priority(max(before, nice))
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        except OSError as exc:
            log.warning("thread_priority_not_restored", tid=tid, error=str(exc))


def restore_thread_priority() -> int:
    """Renice every other thread that is nicer than the process back to the process's niceness."""
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    me = threading.get_native_id()
    restored = 0
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return 0
    for tid in tids:
        if tid == me:
            continue
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) > base:
                os.setpriority(os.PRIO_PROCESS, tid, base)
                restored += 1
        except OSError as exc:  # the thread ended, or no permission to lower niceness
            if exc.errno == 1:
                log.warning("thread_priority_not_restored", tid=tid, error=str(exc))
    return restored
