"""What every section shares: the model base (``extra="forbid"``, frozen) and the config error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agent.core.errors import AgentError

__all__ = ["ConfigError", "Section"]


class ConfigError(AgentError, ValueError):
    """The configuration file or an override is invalid; the message names the key."""


class Section(BaseModel):
    """A table of config.toml: a typo is an error naming the key, a value never changes once read,
    and each key's docstring renders the configuration page."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
