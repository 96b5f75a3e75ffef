"""Structured logging: JSON lines for the journal, readable lines on a terminal.

Everything goes through one stdlib handler on stderr, so the agent's structlog
events and third-party stdlib loggers (aiomqtt, paho) come out in one format.
The agent's loggers (``agent.*``) log at the configured level; foreign loggers
only at warning and above.

Every event carries the process context set with ``bind_context()`` (device id,
serving model version). It is process-wide on purpose: a contextvar bound in the
task that swaps a model would not reach the frame worker thread nor the tasks
started before the swap. Per-task context (a deployment id) still works through
``structlog.contextvars.bound_contextvars``.

When stderr is the systemd journal (``$JOURNAL_STREAM`` names it), each line is
prefixed with its syslog priority (``<3>``), which journald strips and stores as
``PRIORITY`` so that ``journalctl -p warning`` works.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from agent.core.errors import AgentError

__all__ = [
    "LEVELS",
    "LoggingError",
    "bind_context",
    "clear_context",
    "configure_logging",
    "process_context",
]

PACKAGE_LOGGER = "agent"
FOREIGN_MIN_LEVEL = logging.WARNING
"""Third-party stdlib loggers (aiomqtt, paho, onnxruntime) are quiet below this."""
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
"""sd-daemon(3) prefixes; ``exception`` events are logged at level ``error``."""
DEFAULT_PRIORITY = 6
LEADING_KEYS = ("timestamp", "level", "event", "logger")
"""Put first in a JSON line so that a human reading the journal sees them at once."""

_context: dict[str, Any] = {}
_context_lock = threading.Lock()
_handler: logging.Handler | None = None


class LoggingError(AgentError, ValueError):
    """The logging setup asked for is invalid; the message names the setting."""


def bind_context(**values: Any) -> None:
    """Add keys to every event from now on, in every thread and task; ``None`` removes a key."""
    global _context
    with _context_lock:
        updated = dict(_context)
        for key, value in values.items():
            if value is None:
                updated.pop(key, None)
            else:
                updated[key] = value
        _context = updated


def clear_context() -> None:
    global _context
    with _context_lock:
        _context = {}


def process_context() -> dict[str, Any]:
    """A copy of what ``bind_context()`` set."""
    return dict(_context)


def merge_process_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Processor: add the process context; keys given with the event win."""
    for key, value in _context.items():
        event_dict.setdefault(key, value)
    return event_dict


def _leading_keys_first(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ordered = {key: event_dict.pop(key) for key in LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _json_default(value: object) -> object:
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


def _is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal socket systemd connected (sd_journal_stream_fd)."""
    expected = os.environ.get(JOURNAL_STREAM_ENV, "")
    try:
        device, inode = (int(part) for part in expected.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def _with_priority(renderer: Processor) -> Callable[[WrappedLogger, str, EventDict], str]:
    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        priority = SYSLOG_PRIORITY.get(str(event_dict.get("level", "")), DEFAULT_PRIORITY)
        line = renderer(logger, name, event_dict)
        text = line.decode() if isinstance(line, bytes) else str(line)
        return f"<{priority}>{text}"

    return render


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        merge_process_context,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _formatter(json: bool, journal: bool, colors: bool) -> logging.Formatter:
    renderer: Processor
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        final += [structlog.processors.format_exc_info, _leading_keys_first]
        renderer = structlog.processors.JSONRenderer(
            serializer=jsonlib.dumps, default=_json_default
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    final.append(_with_priority(renderer) if journal else renderer)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=final,
    )


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to ``stream`` (default: stderr).

    ``json=None`` picks JSON lines unless ``stream`` is a terminal. Safe to call
    again (e.g. once the config file gave the level); the last call wins.
    """
    global _handler
    name = level.lower()
    if name not in LEVELS:
        raise LoggingError(f"log level {level!r}: must be one of {', '.join(LEVELS)}")
    target = sys.stderr if stream is None else stream
    tty = _is_tty(target)
    use_json = not tty if json is None else json

    handler = logging.StreamHandler(target)
    handler.setFormatter(_formatter(use_json, _is_journal(target), colors=tty and not use_json))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    _handler = handler
    root.setLevel(max(FOREIGN_MIN_LEVEL, LEVELS[name]))
    logging.getLogger(PACKAGE_LOGGER).setLevel(LEVELS[name])
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )
