"""Engine keys, their mismatch messages, the cache folder, and prebuilt-engine refusal."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from agent.models.engine_cache import (
    CACHE_DIR,
    EngineCache,
    EngineKey,
    EngineKeyMismatch,
    Platform,
    check_prebuilt,
)
from agent.models.manifest import Manifest, sha256_file
from agent.runtime.base import EngineLoadError

DEMO = Path(__file__).resolve().parents[2] / "demo"
TEXT_DET = DEMO / "models" / "text-det-v4"
ORIN = Platform("10.3.0", "Orin", "8.7")


def key(**changes: str) -> EngineKey:
    base = EngineKey.for_platform(ORIN, onnx_sha256="ab" * 32, precision="fp16",
                                  profile="x=1x3x32x32/1x3x480x640/1x3x960x960")
    return replace(base, **changes)


def test_equal_keys_have_equal_digests_and_no_differences():
    assert key() == key()
    assert key().digest() == key().digest()
    assert key().differences(key()) == []


@pytest.mark.parametrize(
    ("field", "value", "label"),
    [
        ("onnx_sha256", "cd" * 32, "ONNX sha256"),
        ("tensorrt_version", "10.7.0", "TensorRT version"),
        ("gpu_name", "Xavier", "GPU"),
        ("compute_capability", "7.2", "compute capability"),
        ("precision", "int8", "precision flags"),
        ("profile", "static", "shape profile"),
    ],
)
def test_each_differing_part_is_named(field, value, label):
    other = key(**{field: value})
    assert other.digest() != key().digest()
    (difference,) = key().differences(other)
    assert difference.startswith(f"{label} differs:")
    assert repr(value) in difference


def test_several_differences_are_all_named():
    other = key(tensorrt_version="10.7.0", gpu_name="Xavier")
    assert key().differences(other) == [
        "TensorRT version differs: '10.3.0' != '10.7.0'",
        "GPU differs: 'Orin' != 'Xavier'",
    ]


def test_a_key_round_trips_and_refuses_bad_dicts():
    assert EngineKey.from_dict(key().to_dict()) == key()
    data = key().to_dict()
    del data["gpu_name"]
    with pytest.raises(ValueError, match=r"missing fields \['gpu_name'\]"):
        EngineKey.from_dict(data)
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        EngineKey.from_dict({**key().to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="gpu_name must be a non-empty string"):
        key(gpu_name="")


def test_the_cache_layout_lookup_and_store(tmp_path):
    cache = EngineCache.in_store(tmp_path)
    assert cache.root == tmp_path / CACHE_DIR
    assert cache.lookup(key()) is None
    built = cache.scratch_path(key())
    built.write_bytes(b"plan bytes")
    path = cache.store(key(), built, {"build_s": 1.5})
    assert path == tmp_path / CACHE_DIR / f"{key().digest()}.engine"
    assert not built.exists()
    assert cache.lookup(key()) == path
    meta = json.loads(cache.meta_path(key()).read_text())
    assert meta == {"key": key().to_dict(), "build": {"build_s": 1.5}}
    assert cache.keys() == [key()]
    assert cache.lookup(key(precision="fp32")) is None
    assert cache.timing_cache_path(ORIN).name == "timing-trt10.3.0-Orin-sm8.7.cache"


def test_a_sidecar_recording_another_key_is_a_miss(tmp_path):
    cache = EngineCache.in_store(tmp_path)
    built = cache.scratch_path(key())
    built.write_bytes(b"plan")
    cache.store(key(), built, {})
    cache.meta_path(key()).write_text(json.dumps({"key": key(gpu_name="Xavier").to_dict()}))
    assert cache.lookup(key()) is None
    cache.meta_path(key()).write_text("{not json")
    assert cache.lookup(key()) is None


def prebuilt(engine_key: dict[str, str] | None) -> Manifest:
    manifest = Manifest.read(TEXT_DET / "manifest.json")
    return manifest.model_copy(update={"format": "engine", "model_file": "model.engine",
                                       "engine_key": engine_key})


@pytest.mark.skipif(not TEXT_DET.is_dir(), reason="demo models missing: make setup")
def test_a_prebuilt_engine_for_this_platform_is_accepted():
    check_prebuilt(prebuilt(key().to_dict()), ORIN)
    check_prebuilt(prebuilt({"tensorrt_version": "10.3.0", "gpu_name": "Orin",
                             "compute_capability": "8.7"}), ORIN)


@pytest.mark.skipif(not TEXT_DET.is_dir(), reason="demo models missing: make setup")
def test_a_prebuilt_engine_for_another_platform_is_refused_naming_the_difference():
    recorded = key(tensorrt_version="8.6.2", compute_capability="7.2").to_dict()
    with pytest.raises(EngineKeyMismatch) as caught:
        check_prebuilt(prebuilt(recorded), ORIN)
    message = str(caught.value)
    assert "TensorRT version: engine built for '8.6.2', this device has '10.3.0'" in message
    assert "compute capability: engine built for '7.2', this device has '8.7'" in message
    assert "GPU:" not in message
    assert isinstance(caught.value, EngineLoadError)


@pytest.mark.skipif(not TEXT_DET.is_dir(), reason="demo models missing: make setup")
def test_a_prebuilt_engine_without_a_recorded_platform_is_refused():
    with pytest.raises(EngineKeyMismatch, match="must record the platform"):
        check_prebuilt(prebuilt(None), ORIN)
    with pytest.raises(EngineKeyMismatch, match="engine_key lacks gpu_name"):
        check_prebuilt(prebuilt({"tensorrt_version": "10.3.0", "compute_capability": "8.7"}),
                       ORIN)


@pytest.mark.skipif(not TEXT_DET.is_dir(), reason="demo models missing: make setup")
def test_onnx_models_need_no_engine_key():
    check_prebuilt(Manifest.read(TEXT_DET / "manifest.json"), ORIN)
    assert sha256_file(TEXT_DET / "model.onnx") == Manifest.read(
        TEXT_DET / "manifest.json").files["model.onnx"]


def test_platform_slug_is_a_safe_file_name():
    assert Platform("10.3.0", "NVIDIA Jetson AGX Orin / 64GB", "8.7").slug() == \
        "trt10.3.0-NVIDIA_Jetson_AGX_Orin_64GB-sm8.7"
