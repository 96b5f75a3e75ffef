"""``edge-agent cameras --device ID add|update|remove|list``: a device's cameras, changed at run time.

Sends ``cmd/cameras`` (docs/cameras.md) and prints each device's reply as a JSON line;
the device checks the entry with the config file's own model and names the key it refuses.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.connect import connect
from agent.cli.control import _common, _finish, _send
from agent.core import parse_scalar as _parse_scalar

__all__ = ["add_camera_parsers", "camera_body"]


def _roi(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X,Y,WIDTH,HEIGHT (integers)") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not X,Y,WIDTH,HEIGHT (four integers)")
    return values


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, _parse_scalar(value)


def camera_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``cmd/cameras`` payload (without ``id``) the parsed arguments ask for."""
    if args.action == "list":
        return {"action": "list"}
    if args.action == "remove":
        return {"action": "remove", "name": args.name}
    camera: dict[str, Any] = dict(args.set or ())
    camera["name"] = args.name
    for key in ("uri", "fps", "roi", "pace"):
        value = getattr(args, key)
        if value is not None:
            camera[key] = value
    if args.disabled:
        camera["enabled"] = False
    return {"action": args.action, "camera": camera}


def cmd_cameras(args: argparse.Namespace) -> int:
    return _finish(_send(args, connect(args), "cameras", camera_body(args)))


def add_camera_parsers(sub: Any) -> None:
    cameras = sub.add_parser("cameras", help="add, update, remove or list a device's cameras (no restart)")
    _common(cameras)
    actions = cameras.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "add a camera"),
                         ("update", "replace a camera's settings (the whole entry: unset keys get defaults)")):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("--name", required=True, help="the camera's id (a topic segment)")
        parser.add_argument("--uri", required=True,
                            help="V4L2 index, file path on the device, rtsp(s)://, http(s)://, GStreamer pipeline")
        parser.add_argument("--fps", type=float, help="most frames per second inferred from it")
        parser.add_argument("--roi", type=_roi, metavar="X,Y,W,H", help="region of interest in frame pixels")
        parser.add_argument("--pace", choices=("native", "none"), help="files only")
        parser.add_argument("--disabled", action="store_true", help="keep it configured but closed")
        parser.add_argument("--set", type=_setting, action="append", metavar="KEY=VALUE",
                            help="any other [[camera]] key (TOML value), e.g. --set reopen_max_s=5")
    remove = actions.add_parser("remove", help="stop and forget a camera")
    remove.add_argument("name")
    actions.add_parser("list", help="the cameras the device runs, with their state")
    cameras.set_defaults(handler=cmd_cameras)
