"""What the benches, the soak and the demo set-up share: the progress-line callback and their error.

They return their figures and hand every line they have to say to a ``Report``
(agent/cli/ prints it); a step that cannot go on raises ``DevError``.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.core import AgentError

__all__ = ["DevError", "Report"]

Report = Callable[[str], None]
"""Takes one line of progress or results (agent/cli/ prints it at once, flushed)."""


class DevError(AgentError):
    """A bench, soak or demo step cannot go on; the message says what is missing or broken."""
