"""A model's way to the fleet, offline: export, quantize, prune, compare, distill, pack and inspect.

These tools run on a workstation or in CI, not in the daemon. They sit above
``models/`` and ``vision/`` because they feed models the way the agent does:
frames through the agent's own ``Preprocessor`` and outputs through its heads.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr
from agent.tools.distill import distill  # eager: the name is also a module's
from agent.tools.profile import profile  # eager: the name is also a module's

if TYPE_CHECKING:
    from agent.tools.compare import compare_models, format_comparison
    from agent.tools.distill import DistillOptions
    from agent.tools.errors import PackError, PruneError, ToolError
    from agent.tools.export import export_onnx, load_torch_model, parse_shape
    from agent.tools.frames import COVER_POOL, covering_frames, hold_out, read_frames, read_video_frames
    from agent.tools.inspection import format_inspection, inspect_bundle
    from agent.tools.modelref import ModelRef, find_manifest, resolve_model
    from agent.tools.pack import build_manifest, pack_model
    from agent.tools.profile import (
        DEFAULT_BINS,
        DEFAULT_FRAMES,
        ProfileError,
        image_frames,
        open_model,
        video_frames,
        write_reference,
    )
    from agent.tools.prune import Pattern, format_report, prune_folder
    from agent.tools.prune_recover import REFIT_FRAMES, format_stages, prune_recover_folder
    from agent.tools.quantize import QuantizeOptions, calibration_feeds, quantize_model, simplify_model
    from agent.tools.recover import RecoverOptions
    from agent.tools.sensitivity import format_sensitivity
    from agent.tools.student import channel_share, distill_channels

__all__ = [
    "COVER_POOL",
    "DEFAULT_BINS",
    "DEFAULT_FRAMES",
    "REFIT_FRAMES",
    "DistillOptions",
    "ModelRef",
    "PackError",
    "Pattern",
    "ProfileError",
    "PruneError",
    "QuantizeOptions",
    "RecoverOptions",
    "ToolError",
    "build_manifest",
    "calibration_feeds",
    "channel_share",
    "compare_models",
    "covering_frames",
    "distill",
    "distill_channels",
    "export_onnx",
    "find_manifest",
    "format_comparison",
    "format_inspection",
    "format_report",
    "format_sensitivity",
    "format_stages",
    "hold_out",
    "image_frames",
    "inspect_bundle",
    "load_torch_model",
    "open_model",
    "pack_model",
    "parse_shape",
    "profile",
    "prune_folder",
    "prune_recover_folder",
    "quantize_model",
    "read_frames",
    "read_video_frames",
    "resolve_model",
    "simplify_model",
    "video_frames",
    "write_reference",
]

_HOMES = {
    "COVER_POOL": "agent.tools.frames",
    "DEFAULT_BINS": "agent.tools.profile",
    "DEFAULT_FRAMES": "agent.tools.profile",
    "DistillOptions": "agent.tools.distill",
    "ModelRef": "agent.tools.modelref",
    "PackError": "agent.tools.errors",
    "Pattern": "agent.tools.prune",
    "ProfileError": "agent.tools.profile",
    "PruneError": "agent.tools.errors",
    "QuantizeOptions": "agent.tools.quantize",
    "REFIT_FRAMES": "agent.tools.prune_recover",
    "RecoverOptions": "agent.tools.recover",
    "ToolError": "agent.tools.errors",
    "build_manifest": "agent.tools.pack",
    "calibration_feeds": "agent.tools.quantize",
    "channel_share": "agent.tools.student",
    "compare_models": "agent.tools.compare",
    "covering_frames": "agent.tools.frames",
    "distill_channels": "agent.tools.student",
    "export_onnx": "agent.tools.export",
    "find_manifest": "agent.tools.modelref",
    "format_comparison": "agent.tools.compare",
    "format_inspection": "agent.tools.inspection",
    "format_report": "agent.tools.prune",
    "format_sensitivity": "agent.tools.sensitivity",
    "format_stages": "agent.tools.prune_recover",
    "hold_out": "agent.tools.frames",
    "image_frames": "agent.tools.profile",
    "inspect_bundle": "agent.tools.inspection",
    "load_torch_model": "agent.tools.export",
    "open_model": "agent.tools.profile",
    "pack_model": "agent.tools.pack",
    "parse_shape": "agent.tools.export",
    "prune_folder": "agent.tools.prune",
    "prune_recover_folder": "agent.tools.prune_recover",
    "quantize_model": "agent.tools.quantize",
    "read_frames": "agent.tools.frames",
    "read_video_frames": "agent.tools.frames",
    "resolve_model": "agent.tools.modelref",
    "simplify_model": "agent.tools.quantize",
    "video_frames": "agent.tools.profile",
    "write_reference": "agent.tools.profile",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
