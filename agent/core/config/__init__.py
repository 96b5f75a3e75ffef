"""The agent's configuration: config.toml, ``EDGE_AGENT__`` overrides, one model a section.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
"""

from agent.core.config.agent import *  # noqa: F403
from agent.core.config.agent import __all__ as _agent_all
from agent.core.config.monitor import *  # noqa: F403
from agent.core.config.monitor import __all__ as _monitor_all
from agent.core.config.results import *  # noqa: F403
from agent.core.config.results import __all__ as _results_all

__all__ = sorted({*_agent_all, *_monitor_all, *_results_all})
