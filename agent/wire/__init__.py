"""The MQTT contract: every payload and command, the topics, the state enums.

Pure data: pydantic models that validate themselves, the topic tree, one enum per
state machine, and the schema registry behind ``edge-agent schema``. It imports
nothing of the agent but agent.core, so the device, the fleet side and the
simulator share one contract. This is the door: ``from agent.wire import X``.
"""

from agent.wire.base import *  # noqa: F403
from agent.wire.base import __all__ as _base_all
from agent.wire.commands import *  # noqa: F403
from agent.wire.commands import __all__ as _commands_all
from agent.wire.payloads import *  # noqa: F403
from agent.wire.payloads import __all__ as _payloads_all
from agent.wire.results import *  # noqa: F403
from agent.wire.results import __all__ as _results_all
from agent.wire.schema import *  # noqa: F403
from agent.wire.schema import __all__ as _schema_all
from agent.wire.signals import *  # noqa: F403
from agent.wire.signals import __all__ as _signals_all
from agent.wire.states import *  # noqa: F403
from agent.wire.states import __all__ as _states_all
from agent.wire.topics import *  # noqa: F403
from agent.wire.topics import __all__ as _topics_all

__all__ = [*_base_all, *_states_all, *_payloads_all, *_commands_all, *_schema_all, *_topics_all, *_signals_all,
           *_results_all]
