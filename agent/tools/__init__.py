"""A model's way to the fleet, offline: export, quantize, prune, compare, distill, pack and inspect.

These tools run on a workstation or in CI, not in the daemon. They sit above
``models/`` and ``vision/`` because they feed models the way the agent does:
frames through the agent's own ``Preprocessor`` and outputs through its heads."""

from __future__ import annotations

from agent.tools.compare import compare_models, format_comparison
from agent.tools.distill import DistillOptions, distill
from agent.tools.errors import PackError, PruneError, ToolError
from agent.tools.export import export_onnx, load_torch_model, parse_shape
from agent.tools.frames import COVER_POOL, covering_frames, read_frames, read_video_frames
from agent.tools.inspection import format_inspection, inspect_bundle
from agent.tools.modelref import ModelRef, find_manifest, resolve_model
from agent.tools.pack import build_manifest, pack_model
from agent.tools.profile import (
    DEFAULT_BINS,
    DEFAULT_FRAMES,
    ProfileError,
    image_frames,
    open_model,
    profile,
    video_frames,
    write_reference,
)
from agent.tools.prune import Pattern, format_report, prune_folder
from agent.tools.quantize import QuantizeOptions, calibration_feeds, quantize_model, simplify_model
from agent.tools.recover import REFIT_FRAMES, RecoverOptions, format_stages, prune_recover_folder
from agent.tools.sensitivity import format_sensitivity

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
    "compare_models",
    "covering_frames",
    "distill",
    "export_onnx",
    "find_manifest",
    "format_comparison",
    "format_inspection",
    "format_report",
    "format_sensitivity",
    "format_stages",
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
