"""docs/configuration.md, rendered from the config models so the page cannot drift from the code.

``python -m agent.config_doc > docs/configuration.md``; a test checks the page is current.
"""

from __future__ import annotations

import json
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from .config import ENV_PREFIX, AgentConfig

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

This page is generated from `agent/config.py` (`python -m agent.config_doc`).
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


def render_markdown() -> str:
    lines = [HEADER]
    for name, section_field in AgentConfig.model_fields.items():
        model: type[BaseModel] = section_field.annotation  # type: ignore[assignment]
        title = f"[{name}]"
        if get_origin(model) is tuple:  # an array of tables: [[camera]]
            model, title = get_args(model)[0], f"[[{name}]]"
        lines += [f"## {title}", ""]
        if section_field.description:
            lines += [" ".join(section_field.description.split()).replace("``", "`"), ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        for key, field in model.model_fields.items():
            text = " ".join((field.description or "").split()).replace("|", "\\|").replace("``", "`")
            if key == "device_id":
                text = "the hostname when unset. " + text
            lines.append(f"| `{key}` | {_default(field)} | {text} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
