"""The agent's one error root, and the coded error for what reaches a reply.

Every exception the agent defines derives from ``AgentError``, one family per
package (``ConfigError``, ``TopicError``, ``SessionError``, ``EngineError``, ...),
so a caller catches a whole package's failures with one class and anything of
ours apart from Python's own. What can reach a command reply, a deployment's
error or a log line a person acts on is a ``CodedError``: a stable snake_case
``code`` a program can branch on and a ``message`` a person can read.
"""

from __future__ import annotations

import re

__all__ = ["CODE_PATTERN", "AgentError", "CodedError"]

CODE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""An error code: snake_case, at most 64 characters (the wire's ErrorInfo.code)."""


class AgentError(Exception):
    """The root of every error the agent defines."""


class CodedError(AgentError):
    """An error with a stable ``code`` and a readable ``message``, for replies and deployment states."""

    def __init__(self, code: str, message: str) -> None:
        if not CODE_PATTERN.fullmatch(code):
            raise ValueError(f"error code {code!r} is not snake_case of at most 64 characters")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
