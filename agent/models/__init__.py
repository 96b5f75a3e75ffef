"""The models package.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
    from agent.models.behaviour import BehaviourBounds, OutputWindow
    from agent.models.bootguard import (
        BOOT_RECORD_FILE,
        CRASH_LOOP_CODE,
        CRASH_TEST_ENV,
        BootGuard,
        CrashLoop,
        write_json_atomic,
    )
    from agent.models.build import BuildProgress, copy_engine, ensure_engine
    from agent.models.build_spec import DEFAULT_WORKSPACE_MB, BuildSpec, BuildSpecError, parse_shape
    from agent.models.bundle import BundleError, pack_bundle
    from agent.models.deployment import DeployFailed, DeploymentStatus, DeployRequest
    from agent.models.engine_cache import EngineCache
    from agent.models.fetch import (
        STATEMENT_VALID_S,
        FetchError,
        Statement,
        generate_keypair,
        load_private_key,
        load_public_key,
        redact_url,
        sign_file,
        sign_statement,
        verify_statement,
    )
    from agent.models.graph import BOX_COORDS, SpecMismatchError, check_fits_head, check_fits_input, fuse_preprocessing
    from agent.models.loader import EngineOptions, load_serving
    from agent.models.manager import DeploymentManager
    from agent.models.manifest import (
        MANIFEST_FILE,
        Golden,
        HeadSpec,
        Manifest,
        ManifestError,
        MonitorData,
        PreprocessSpec,
        confined,
        sha256_file,
    )
    from agent.models.priority import lower_thread_priority
    from agent.models.probation import Probation
    from agent.models.shadow import (
        ShadowError,
        ShadowGate,
        ShadowSpec,
        TextAgreement,
        match_boxes,
        text_agreement,
    )
    from agent.models.sparsity import prune_model_2to4, sparsity_report
    from agent.models.store import InstalledModel, ModelStore, StoreError
    from agent.models.target import DeployTarget, ReadTally, Swapped

__all__ = [
    "BOOT_RECORD_FILE",
    "BOX_COORDS",
    "CRASH_LOOP_CODE",
    "CRASH_TEST_ENV",
    "DEFAULT_WORKSPACE_MB",
    "MANIFEST_FILE",
    "STATEMENT_VALID_S",
    "BehaviourBounds",
    "BootGuard",
    "BuildProgress",
    "BuildSpec",
    "BuildSpecError",
    "BundleError",
    "CrashLoop",
    "DeployFailed",
    "DeployRequest",
    "DeployTarget",
    "DeploymentManager",
    "DeploymentStatus",
    "EngineCache",
    "EngineOptions",
    "FetchError",
    "Golden",
    "HeadSpec",
    "InstalledModel",
    "Manifest",
    "ManifestError",
    "ModelStore",
    "MonitorData",
    "OutputWindow",
    "PreprocessSpec",
    "Probation",
    "ReadTally",
    "ShadowError",
    "ShadowGate",
    "ShadowSpec",
    "SpecMismatchError",
    "Statement",
    "StoreError",
    "Swapped",
    "TextAgreement",
    "check_fits_head",
    "check_fits_input",
    "confined",
    "copy_engine",
    "ensure_engine",
    "fuse_preprocessing",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "load_serving",
    "lower_thread_priority",
    "match_boxes",
    "pack_bundle",
    "parse_shape",
    "prune_model_2to4",
    "redact_url",
    "sha256_file",
    "sign_file",
    "sign_statement",
    "sparsity_report",
    "text_agreement",
    "verify_statement",
    "write_json_atomic",
]

_HOMES = {
    "BOOT_RECORD_FILE": "agent.models.bootguard",
    "BOX_COORDS": "agent.models.graph",
    "BehaviourBounds": "agent.models.behaviour",
    "BootGuard": "agent.models.bootguard",
    "BuildProgress": "agent.models.build",
    "BuildSpec": "agent.models.build_spec",
    "BuildSpecError": "agent.models.build_spec",
    "BundleError": "agent.models.bundle",
    "CRASH_LOOP_CODE": "agent.models.bootguard",
    "CRASH_TEST_ENV": "agent.models.bootguard",
    "CrashLoop": "agent.models.bootguard",
    "DEFAULT_WORKSPACE_MB": "agent.models.build_spec",
    "DeployFailed": "agent.models.deployment",
    "DeployRequest": "agent.models.deployment",
    "DeployTarget": "agent.models.target",
    "DeploymentManager": "agent.models.manager",
    "DeploymentStatus": "agent.models.deployment",
    "EngineCache": "agent.models.engine_cache",
    "EngineOptions": "agent.models.loader",
    "FetchError": "agent.models.fetch",
    "Golden": "agent.models.manifest",
    "HeadSpec": "agent.models.manifest",
    "InstalledModel": "agent.models.store",
    "MANIFEST_FILE": "agent.models.manifest",
    "Manifest": "agent.models.manifest",
    "ManifestError": "agent.models.manifest",
    "ModelStore": "agent.models.store",
    "MonitorData": "agent.models.manifest",
    "OutputWindow": "agent.models.behaviour",
    "PreprocessSpec": "agent.models.manifest",
    "Probation": "agent.models.probation",
    "ReadTally": "agent.models.target",
    "STATEMENT_VALID_S": "agent.models.fetch",
    "ShadowError": "agent.models.shadow",
    "ShadowGate": "agent.models.shadow",
    "ShadowSpec": "agent.models.shadow",
    "TextAgreement": "agent.models.shadow",
    "SpecMismatchError": "agent.models.graph",
    "Statement": "agent.models.fetch",
    "StoreError": "agent.models.store",
    "Swapped": "agent.models.target",
    "check_fits_head": "agent.models.graph",
    "check_fits_input": "agent.models.graph",
    "confined": "agent.models.manifest",
    "copy_engine": "agent.models.build",
    "ensure_engine": "agent.models.build",
    "fuse_preprocessing": "agent.models.graph",
    "generate_keypair": "agent.models.fetch",
    "load_private_key": "agent.models.fetch",
    "load_public_key": "agent.models.fetch",
    "load_serving": "agent.models.loader",
    "lower_thread_priority": "agent.models.priority",
    "match_boxes": "agent.models.shadow",
    "pack_bundle": "agent.models.bundle",
    "parse_shape": "agent.models.build_spec",
    "prune_model_2to4": "agent.models.sparsity",
    "redact_url": "agent.models.fetch",
    "sha256_file": "agent.models.manifest",
    "sign_file": "agent.models.fetch",
    "sign_statement": "agent.models.fetch",
    "sparsity_report": "agent.models.sparsity",
    "text_agreement": "agent.models.shadow",
    "verify_statement": "agent.models.fetch",
    "write_json_atomic": "agent.models.bootguard",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
