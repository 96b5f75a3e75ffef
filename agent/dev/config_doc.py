"""docs/configuration.md, rendered from the config models so the page cannot drift from the code.

``python -m agent.cli.config_doc > docs/configuration.md``; a test checks the page is current.
"""

from __future__ import annotations

import json
from typing import Any, cast, get_args, get_origin

from pydantic import BaseModel

from agent.core import ENV_PREFIX, AgentConfig

__all__ = ["render_markdown"]

HEADER = f"""# Configuration

`config.toml` (systemd: `/etc/edge-agent/config.toml`) holds one table per
section. Every key is optional; unknown keys and bad values are errors that name
the key (`edge-agent check-config FILE` exits 2 with the message, and `run`
refuses to start with the same one). Relative paths are taken from the config
file's folder. Any key can be overridden from the environment as
`{ENV_PREFIX}<SECTION>__<KEY>` (upper or lower case), e.g.
`{ENV_PREFIX}MQTT__URL=mqtts://broker:8883`; values parse as TOML scalars
(`4`, `true`, `"text"`) and fall back to plain strings.

This page is generated from `agent/core/config/agent.py` (`python -m agent.cli.config_doc`).
"""


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "(computed)" if field.default_factory.__name__ == "gethostname" else "(see text)"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        value = list(value)
    if hasattr(value, "__fspath__"):
        value = str(value)
    return f"`{json.dumps(value)}`"


def _table(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model of a field that is a table (``(model, False)``) or an array of tables (``True``)."""
    if get_origin(annotation) is tuple:
        args = get_args(annotation)
        if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0], True
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


def _section(lines: list[str], level: str, title: str, model: type[BaseModel], description: str | None,
             path: str) -> None:
    """One table's rows; its sub-tables (``[[camera]]``'s ``results.tracker``, ...) follow it."""
    lines += [f"{level} {title}", ""]
    if description:
        lines += [" ".join(description.split()).replace("``", "`"), ""]
    lines += ["| key | default | meaning |", "|---|---|---|"]
    tables: list[tuple[str, type[BaseModel], bool, str | None]] = []
    for key, field in model.model_fields.items():
        text = " ".join((field.description or "").split()).replace("|", "\\|").replace("``", "`")
        if key == "device_id":
            text = "the hostname when unset. " + text
        table = _table(field.annotation)
        default = _default(field) if table is None or table[1] else "(table below)"
        lines.append(f"| `{key}` | {default} | {text} |")
        if table is not None:
            tables.append((key, table[0], table[1], field.description))
    lines.append("")
    for key, sub, array, about in tables:
        name = f"{path}.{key}"
        _section(lines, "###", f"[[{name}]]" if array else f"[{name}]", sub, about, name)


def render_markdown() -> str:
    """docs/configuration.md's text: the header, then one table of keys per config section."""
    lines = [HEADER]
    for name, section_field in AgentConfig.model_fields.items():
        model = cast("type[BaseModel]", section_field.annotation)
        title = f"[{name}]"
        if get_origin(model) is tuple:  # an array of tables: [[camera]]
            model, title = get_args(model)[0], f"[[{name}]]"
        _section(lines, "##", title, model, section_field.description, name)
    return "\n".join(lines)

