"""What the benches, the soak and the demo set-up share: the progress-line callback, their error, a timed observer.

They return their figures and hand every line they have to say to a ``Report``
(agent/cli/ prints it); a step that cannot go on raises ``DevError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.core import AgentError

if TYPE_CHECKING:
    from agent.vision import FrameResult

__all__ = ["DevError", "FpsOf", "Report", "TimedObserver"]

Report = Callable[[str], None]
"""Takes one line of progress or results (agent/cli/ prints it at once, flushed)."""
FpsOf = Callable[[list[Any]], float]
"""``fps_of(observers)``: pipeline frames/s on the demo video with these extra frame observers."""


class DevError(AgentError):
    """A bench, soak or demo step cannot go on; the message says what is missing or broken."""


class TimedObserver:
    """Wraps a frame observer: ``seconds``, its wall time on the frame thread over ``calls`` frames."""

    def __init__(self, observe: Callable[[FrameResult], None]) -> None:
        self.observe = observe
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, result: FrameResult) -> None:
        began = time.perf_counter()
        self.observe(result)
        self.seconds += time.perf_counter() - began
        self.calls += 1
