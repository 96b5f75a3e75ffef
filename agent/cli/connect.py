"""How a control-plane command reaches an agent: ``--config`` (the agent's own config file) or ``--broker``.

``--config config.toml`` takes the device id, the topic prefix and the broker from
the agent's config; for the embedded broker, the address and password the
running agent wrote to its state folder (agent.fleet.local). ``--broker`` with
``--device`` or ``--group`` (and ``--username``/``--password-file``) names them
by hand, for a fleet broker. ``--device``/``--group`` and ``--prefix`` may narrow
a ``--config`` target. The fleet commands take the same ``--config`` or
``--broker`` to name the broker and the topic prefix only (``broker_client``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import aiomqtt

from agent.core import AgentConfig, AgentError, ConfigError, load_config
from agent.fleet import ControlClient, LocalAgentError, LocalTarget, local_target
from agent.models import load_private_key
from agent.wire import DeviceState, PayloadError, StatusPayload, decode_payload

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["DEFAULT_PREFIX", "EXIT_FAILURE", "EXIT_USAGE", "ConnectError", "Connection", "add_broker_arguments",
           "add_connection_arguments", "broker_client", "connect", "connect_broker", "fail", "resolve", "silence_hint"]

EXIT_FAILURE, EXIT_USAGE = 1, 2
DEFAULT_PREFIX = "edge"
RETAINED_WAIT_S = 3.0
"""A broker sends retained messages at once on subscribe; this covers a slow link."""


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """End the command with ``edge-agent: message`` on stderr."""
    print(f"edge-agent: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


@dataclass(frozen=True)
class Connection:
    """A control client and whom it addresses: one device or a group."""

    client: ControlClient
    device: str | None
    group: str | None
    config: AgentConfig | None = None
    """The agent's config, when ``--config`` named it."""


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` or ``--broker`` (with ``--username``, ``--password-file``), and ``--prefix``."""
    parser.add_argument("--config", type=Path, help="the agent's config file: its device id and broker (for the "
                        "embedded broker, the running agent's address and password from its state folder)")
    parser.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (instead of --config)")
    parser.add_argument("--prefix", help=f"topic prefix (default: the config's, else {DEFAULT_PREFIX})")
    parser.add_argument("--username", help="with --broker")
    parser.add_argument("--password-file", help="file holding the broker password (with --broker)")


def add_connection_arguments(parser: argparse.ArgumentParser, *, groups: bool = True,
                             signing: bool = True) -> None:
    add_broker_arguments(parser)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--device", help="one device id (default with --config: the config's)")
    if groups:
        target.add_argument("--group", help="a device group (replies are collected until --timeout)")
    if signing:
        parser.add_argument("--sign-commands", type=Path, metavar="KEY",
                            help="ed25519 private key (PEM) of the control plane: sign the command itself")


class ConnectError(AgentError):
    """The arguments name no agent this command can reach; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _configured(args: argparse.Namespace) -> tuple[AgentConfig, LocalTarget]:
    """The agent's config that ``--config`` names and how to reach its broker; ConnectError saying why not."""
    given = [flag for flag, value in (("--broker", args.broker), ("--username", args.username),
                                      ("--password-file", args.password_file)) if value]
    if given:
        raise ConnectError(f"--config names the broker and its credentials; leave out {', '.join(given)}",
                           EXIT_USAGE)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise ConnectError(f"invalid configuration:\n{exc}", EXIT_USAGE) from None
    try:
        return config, local_target(config, args.config)
    except LocalAgentError as exc:
        raise ConnectError(str(exc)) from None


def _broker(args: argparse.Namespace, key: Ed25519PrivateKey | None = None) -> ControlClient:
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    return ControlClient(args.broker, args.prefix or DEFAULT_PREFIX, username=args.username, password=password,
                         signing_key=key)


def resolve(args: argparse.Namespace) -> Connection:
    """The client and target the arguments name; raises ConnectError saying why there is none."""
    group = getattr(args, "group", None)
    alternatives = " or --group NAME" if hasattr(args, "group") else ""
    signing = getattr(args, "sign_commands", None)
    key = load_private_key(signing) if signing else None
    if args.config is not None:
        config, local = _configured(args)
        device = args.device or (None if group else local.device_id)
        return Connection(local.client(prefix=args.prefix, signing_key=key), device, group, config)
    if not args.broker:
        raise ConnectError("say which agent: --config CONFIG (the agent's config file), or --broker URL with "
                           f"--device ID{alternatives}", EXIT_USAGE)
    if not args.device and not group:
        raise ConnectError(f"--broker needs --device ID{alternatives}", EXIT_USAGE)
    return Connection(_broker(args, key), args.device, group)


def broker_client(args: argparse.Namespace) -> ControlClient:
    """The broker a fleet command's arguments name (``add_broker_arguments``); ConnectError saying why none."""
    if args.config is not None:
        return _configured(args)[1].client(prefix=args.prefix)
    if not args.broker:
        raise ConnectError("say which broker: --config CONFIG (an agent's config file: its broker and prefix), "
                           "or --broker URL", EXIT_USAGE)
    return _broker(args)


def connect(args: argparse.Namespace) -> Connection:
    """``resolve()``, ending the command with a clear message when the arguments name no agent."""
    try:
        return resolve(args)
    except ConnectError as exc:
        fail(str(exc), exc.code)


def connect_broker(args: argparse.Namespace) -> ControlClient:
    """``broker_client()``, ending the command with a clear message when the arguments name no broker."""
    try:
        return broker_client(args)
    except ConnectError as exc:
        fail(str(exc), exc.code)


async def _retained_status(client: ControlClient, device: str) -> StatusPayload | None:
    async with client.open() as mqtt:
        await mqtt.subscribe(f"{client.prefix}/{device}/status", qos=1)
        async for message in mqtt.messages:
            data = message.payload if isinstance(message.payload, bytes) else b""
            with contextlib.suppress(PayloadError):
                return decode_payload(StatusPayload, data)
    return None


def silence_hint(connection: Connection) -> str:
    """Why a device may not have answered, from its retained status: not running, or not known."""
    if connection.device is None:
        return ""
    try:
        status = asyncio.run(asyncio.wait_for(_retained_status(connection.client, connection.device),
                                              RETAINED_WAIT_S))
    except (aiomqtt.MqttError, TimeoutError, asyncio.TimeoutError):
        status = None
    if status is None:
        return f"; the broker holds no status of device {connection.device!r}: is that its id?"
    if status.state == DeviceState.ONLINE:
        return f"; device {connection.device!r} says it is online"
    ago = max(0.0, time.time() - status.ts)
    why = "its connection dropped without a goodbye" if status.state == DeviceState.LOST else "it stopped"
    return (f"; device {connection.device!r} is {status.state} since {ago:.0f} s ago ({why}): "
            "the agent is not running")
