"""The simulated agent's command failure, shared by its device (agent.sim.device) and its shadow runs
(agent.sim.shadow); the fleet's own refusal (``SimError``) is beside its spec (agent.sim.spec)."""

from __future__ import annotations

from typing import Any

from agent.core import CodedError

__all__ = ["SimCommandFailed"]


class SimCommandFailed(CodedError):
    """A simulated handler could not do what the command asked; ``code``, ``message`` and ``result`` go
    in the reply."""

    def __init__(self, code: str, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.result = result
