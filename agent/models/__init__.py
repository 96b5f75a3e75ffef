"""The models package."""

from __future__ import annotations

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
from agent.models.manager import DeployFailed, DeploymentManager, DeploymentStatus, DeployRequest
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
from agent.models.shadow import ShadowError, ShadowGate, ShadowSpec
from agent.models.sparsity import prune_model_2to4, sparsity_report
from agent.models.store import InstalledModel, ModelStore, StoreError

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
    "ShadowError",
    "ShadowGate",
    "ShadowSpec",
    "SpecMismatchError",
    "Statement",
    "StoreError",
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
    "pack_bundle",
    "parse_shape",
    "prune_model_2to4",
    "redact_url",
    "sha256_file",
    "sign_file",
    "sign_statement",
    "sparsity_report",
    "verify_statement",
    "write_json_atomic",
]
