"""The MQTT contract: every payload and command, the topics, the state vocabularies.

Pure data: pydantic models that validate themselves, the topic tree, and the
schema registry behind ``edge-agent schema``. It imports nothing of the agent but
agent.core, so the device, the fleet side and the simulator share one contract.
"""

from agent.wire import results, signals  # noqa: F401  (register the results, counts and monitor payloads)
from agent.wire.results import *  # noqa: F403
from agent.wire.results import __all__ as _results_all
from agent.wire.schema import *  # noqa: F403
from agent.wire.schema import __all__ as _schema_all
from agent.wire.signals import *  # noqa: F403
from agent.wire.signals import __all__ as _signals_all
from agent.wire.topics import *  # noqa: F403
from agent.wire.topics import __all__ as _topics_all

__all__ = [*_schema_all, *_topics_all, *_signals_all, *_results_all]
