"""The JSON Schema of the whole contract, behind ``edge-agent schema``.

Every payload by topic suffix (agent.wire.payloads, .signals, .results) and every
command as ``cmd/<name>`` (agent.wire.commands, .signals).
"""

from __future__ import annotations

from typing import Any

from agent.wire import results, signals  # noqa: F401  (their payloads and commands register themselves)
from agent.wire.commands import COMMANDS
from agent.wire.payloads import PAYLOADS

__all__ = ["json_schemas"]


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every payload by topic suffix: ``status``, ..., ``cmd/deploy``."""
    schemas = {suffix: model.model_json_schema(by_alias=True) for suffix, model in PAYLOADS.items()}
    for name, command in COMMANDS.items():
        schemas[f"cmd/{name}"] = command.model_json_schema(by_alias=True)
    return schemas
