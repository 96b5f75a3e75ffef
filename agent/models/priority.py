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

With ``idle`` the thread also runs under ``SCHED_IDLE`` for the block: the kernel
then preempts it at once for any normal thread that wakes (a nice thread under
EEVDF keeps its slice, so each of the serving engine's intra-op wake-ups can wait
behind it). Threads it creates inherit the policy; ``restore_thread_priority``
puts them back to ``SCHED_OTHER``.
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


def _set_policy(tid: int, policy: int) -> bool:
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except OSError as exc:
        log.warning("thread_policy_unchanged", tid=tid, policy=policy, error=str(exc))
        return False
    return True


@contextmanager
def lowered_priority(nice: int | None, idle: bool = False) -> Iterator[None]:
    """Run the block with the calling thread at niceness ``nice`` (None: unchanged) and, with
    ``idle``, under ``SCHED_IDLE``; then restore both."""
    if not nice and not idle:
        yield
        return
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    policy = os.sched_getscheduler(tid)
    if nice:
        lower_thread_priority(max(before, nice))
    idled = idle and policy != os.SCHED_IDLE and _set_policy(tid, os.SCHED_IDLE)
    try:
        yield
    finally:
        if idled:
            _set_policy(tid, policy)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        except OSError as exc:
            log.warning("thread_priority_not_restored", tid=tid, error=str(exc))


def restore_thread_priority() -> int:
    """Put every other thread that is nicer than the process, or under ``SCHED_IDLE``, back to
    the process's niceness and policy."""
    pid = os.getpid()
    base = os.getpriority(os.PRIO_PROCESS, pid)
    base_policy = os.sched_getscheduler(pid)
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
            if os.sched_getscheduler(tid) == os.SCHED_IDLE != base_policy:
                os.sched_setscheduler(tid, base_policy, os.sched_param(0))
                restored += 1
            if os.getpriority(os.PRIO_PROCESS, tid) > base:
                os.setpriority(os.PRIO_PROCESS, tid, base)
                restored += 1
        except OSError as exc:  # the thread ended, or no permission to lower niceness
            if exc.errno == 1:
                log.warning("thread_priority_not_restored", tid=tid, error=str(exc))
    return restored
