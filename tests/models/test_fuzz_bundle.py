"""Fuzzing where the bundle findings came from: tar layouts and manifest contents, in process.

Every case ends in a refusal with a code (``BundleError`` at unpack, ``DeployFailed``
with a code and a ``failed`` deployment through the manager) or a clean load of the
real demo model, never another exception, a hang or a deployment left at a step.
Case counts: ``--hypothesis-show-statistics``.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.config import AgentConfig
from agent.device.monitors import Signals
from agent.models.bundle import MAX_MEMBERS, BundleError, unpack_bundle
from agent.models.graph import check_fits_head, check_fits_input
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeployFailed, DeployRequest
from agent.models.manifest import Manifest
from agent.models.store import ModelStore
from agent.monitor.telemetry import Telemetry
from agent.runtime.slot import Serving
from agent.wire import DeploymentState
from agent.wire.topics import Topics
from tests.support.artifacts import ArtifactServer, sha256
from tests.support.bundles import demo_files, demo_manifest, manifest_bundle, member
from tests.support.deploy_rig import LONG_PROBATION, Rig

TAR_EXAMPLES = 200
MANIFEST_EXAMPLES = 200
MANAGER_EXAMPLES = 30
"""Each manager case downloads, unpacks and (when it gets that far) loads the real model: ~1 s."""
DEEP = 5000
"""Nesting far past what a JSON parser follows."""
REFUSED = (BundleError,)

# ----- tar layouts ---------------------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(["manifest.json", "model.onnx", "LICENSE", "./model.onnx", "./", ".", "a/b", "a", "a/",
                     "../x", "/etc/hostname", "a//b", "a/./b", "x/../model.onnx", "", "\\x", "n" * 300,
                     "model.onnx/x", "\udcff", "\x00", "new\nline"]),
    st.text(max_size=12),
)
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE])


@st.composite
def members(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes]:
    kind = draw(KINDS)
    data = draw(st.binary(max_size=64)) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else b""
    info = member(draw(NAMES), data, kind, draw(st.sampled_from(["", "/etc/hostname", "../x", "model.onnx"])))
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) and draw(st.booleans()):
        info.size = draw(st.sampled_from([0, len(data) + 1, 1 << 40]))  # a header that lies
    return info, data


@st.composite
def tar_bytes(draw: st.DrawFn, demo: Path) -> bytes:
    body = json.dumps(demo_manifest(demo, files={})).encode()
    real = [(member("manifest.json", body), body)] if draw(st.booleans()) else []
    mode = draw(st.sampled_from(["w", "w:gz", "w:bz2", "w:xz"]))
    if mode in ("w", "w:gz") and draw(st.booleans()):  # the 4.7 MB model: bz2 and xz of it are slow
        model = demo_files(demo)["model.onnx"]
        real.append((member("model.onnx", model), model))
    else:
        real.append((member("model.onnx", b"tiny"), b"tiny"))
    layout = real + draw(st.one_of(st.just([]), st.lists(members(), max_size=6)))
    if draw(st.integers(0, 9)) == 0:
        layout += [(member(f"m{i}", b""), b"") for i in range(MAX_MEMBERS)]
    layout = draw(st.permutations(layout))
    fmt = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    out = io.BytesIO()
    fast = {"w:gz": {"compresslevel": 1}, "w:bz2": {"compresslevel": 1}, "w:xz": {"preset": 0}}.get(mode, {})
    # The fastest level of each compression: the same format and layout for the unpacker, a fraction of the
    # time to write (gzip level 9 of the 10 MB model took seconds a case).
    with tarfile.open(fileobj=out, mode=mode, format=fmt, **fast) as archive:  # type: ignore[call-overload]
        for info, data in layout:
            try:
                archive.addfile(info, io.BytesIO(data.ljust(info.size, b"\0")[: 1 << 16])
                                if info.isfile() and info.size <= 1 << 16 else io.BytesIO(data))
            except (ValueError, OSError, UnicodeError):
                continue  # tarfile itself cannot write this header or body: not a layout
    raw = out.getvalue()
    cut = draw(st.one_of(st.none(), st.sampled_from([0, 1, 511, 512, 1024, -2, -1])))
    return raw if cut is None else raw[:cut if cut >= 0 else len(raw) // -cut]


def unpacks_or_refuses(path: Path, dest: Path) -> Manifest | None:
    """The property at unpack: a manifest, or a BundleError; nothing else."""
    try:
        return unpack_bundle(path, dest)
    except REFUSED as exc:
        assert str(exc), "a refusal says why"
        return None


@pytest.fixture(scope="module")
def demo(demo_dir: Path) -> Path:
    return demo_dir


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz-bundle")


COUNTER = itertools.count()


def test_tar_layouts_unpack_cleanly_or_are_refused_as_bad_bundles(demo, scratch):
    outcomes = {"refused": 0, "clean": 0}

    @settings(max_examples=TAR_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(tar_bytes(demo))
    def case(raw: bytes) -> None:
        n = next(COUNTER)
        path = scratch / f"t{n}.tar"
        path.write_bytes(raw)
        try:
            manifest = unpacks_or_refuses(path, scratch / f"t{n}")
            outcomes["refused" if manifest is None else "clean"] += 1
            if manifest is not None:
                assert (scratch / f"t{n}" / manifest.model_file).is_file()
        finally:
            path.unlink()
            shutil.rmtree(scratch / f"t{n}", ignore_errors=True)

    case()
    print(f"fuzz tar layouts: {outcomes}")
    assert outcomes["clean"] > 0 and outcomes["refused"] > 0, outcomes


# ----- manifest contents ---------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([10 ** 400, -(2 ** 63), 2 ** 64, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e400, -1e400, 1e-320]),
    st.text(max_size=16),
    st.sampled_from(["", "\n", "v9\n", "../x", "/etc/hostname", "model.onnx", "LICENSE", "a" * 300, "\x00",
                     "text_detect_db", "multiple", "classify", "0" * 64, "__DEEP__"]),
)
GARBAGE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)


def valid_reference() -> dict[str, Any]:
    """A well-formed detector reference: the mutations start from something that parses."""
    dist = {"edges": [0.25, 0.5, 0.75], "counts": [1, 2, 3, 4], "mean": 0.5}
    return {"format": 1, "model": {"name": "text-det", "version": "v9", "sha256": "0" * 64}, "task": "text_detect",
            "samples": 10, "created": 0.0, "source": "fuzz",
            "inputs": {"brightness": dist, "contrast": dist, "sharpness": dist},
            "outputs": {"count": dist, "confidence": dist, "classes": None}}


def base_manifest(demo: Path, golden: bool) -> dict[str, Any]:
    """The demo manifest with every field the agent parses filled in validly (a golden pair that
    unpacks but is no .npy, so that a deployment of it ends golden_failed: only for unpack)."""
    pairs = [{"input_file": "LICENSE", "output_file": "LICENSE", "rtol": 0.01, "atol": 0.001}] if golden else []
    return demo_manifest(demo, "v9", reference=valid_reference(),
                         slices={"regions": {"left": [0, 0, 0.5, 1], "right": [0.5, 0, 1, 1]}}, golden=pairs)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from paths(value, (*prefix, i))


def mutate(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def manifest_texts(draw: st.DrawFn, demo: Path, golden: bool = True) -> tuple[bytes, bool]:
    """A manifest's bytes (1-3 mutations of a valid one, sometimes none) and whether ``files`` is refreshed."""
    doc = base_manifest(demo, golden)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(list(paths(doc))))
        extra = draw(st.sampled_from([(), ("unknown_field",)]))
        doc = mutate(doc, (*where, *extra) if isinstance(doc, dict) and extra and not where else where,
                     draw(GARBAGE), draw(st.booleans()))
    text = json.dumps(doc, allow_nan=True).replace('"__DEEP__"', "[" * DEEP + "]" * DEEP)
    return text.encode("utf-8", "surrogatepass"), draw(st.booleans())


def bundle_of_text(demo: Path, out: Path, text: bytes, refresh: bool) -> Path:
    """The demo model's files with ``text`` as manifest.json; ``refresh`` writes their true hashes in."""
    if refresh:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict):
            return manifest_bundle(demo, out, doc)
    files = demo_files(demo)
    with tarfile.open(out, "w") as archive:
        for name, data in [("manifest.json", text), *files.items()]:
            archive.addfile(member(name, data), io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def engine(demo: Path, scratch: Path) -> Iterator[Any]:
    store = ModelStore(scratch / "engines")
    serving = load_serving(store.install(demo / "models" / "text-det-v6"), EngineOptions(threads=1))
    yield serving.engine
    serving.engine.close()


def test_manifest_contents_unpack_and_prepare_cleanly_or_are_refused_as_bad_bundles(demo, scratch, engine):
    signals = Signals(AgentConfig(), Telemetry(Topics("edge", "fuzz"), "fuzz", "test"), None)  # type: ignore[arg-type]
    outcomes = {"refused": 0, "clean": 0}

    @settings(max_examples=MANIFEST_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(manifest_texts(demo))
    def case(drawn: tuple[bytes, bool]) -> None:
        n = next(COUNTER)
        bundle = bundle_of_text(demo, scratch / f"m{n}.tar", *drawn)
        try:
            manifest = unpacks_or_refuses(bundle, scratch / f"m{n}")
        finally:
            bundle.unlink()
            shutil.rmtree(scratch / f"m{n}", ignore_errors=True)
        if manifest is None:
            outcomes["refused"] += 1
            return
        outcomes["clean"] += 1
        try:  # the manager's fit checks: a ValueError is its does_not_fit_head refusal
            check_fits_input(manifest.preprocess, engine.inputs)
            check_fits_head(engine.outputs, manifest.head)
        except ValueError:
            pass
        failures = signals.failures
        signals.serving(Serving(engine=engine, name=manifest.name, version=manifest.version, sha256="",
                                manifest=manifest), swapped=True)
        assert signals.failures == failures, "a bundle that unpacked has monitor data that applies"

    case()
    print(f"fuzz manifest contents: {outcomes}")
    assert outcomes["clean"] > 0 and outcomes["refused"] > 0, outcomes


# ----- through the manager -------------------------------------------------------------------

def test_mutated_bundles_through_the_manager_end_active_or_failed_with_a_code(demo, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    server = ArtifactServer(www)
    loop = asyncio.new_event_loop()
    rig = Rig(tmp_path, demo)
    loop.run_until_complete(rig.start())
    versions = itertools.count()
    outcomes: dict[str, int] = {}
    try:
        @settings(max_examples=MANAGER_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])
        @given(manifest_texts(demo, golden=False))
        def case(drawn: tuple[bytes, bool]) -> None:
            version = f"f{next(versions)}"
            text, refresh = drawn
            try:
                doc = json.loads(text)
                if isinstance(doc, dict) and "version" in doc:
                    doc["version"] = version
                    text = json.dumps(doc, allow_nan=True).encode()
            except (ValueError, RecursionError):
                pass
            bundle = bundle_of_text(demo, www / f"{version}.tar", text, refresh)
            request = DeployRequest("text-det", version, server.url(bundle.name), sha256(bundle),
                                    format="bundle", probation=LONG_PROBATION)
            before = rig.slot.serving
            try:
                new = loop.run_until_complete(rig.manager.deploy(request))
            except DeployFailed as exc:
                assert exc.code and exc.code != "internal_error", exc
                assert rig.reports[-1].state == DeploymentState.FAILED and rig.reports[-1].error["code"] == exc.code
                assert rig.slot.serving is before
                outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
                return
            assert rig.reports[-1].state == DeploymentState.ACTIVE and rig.slot.serving is new
            outcomes["active"] = outcomes.get("active", 0) + 1

        case()
        print(f"fuzz through the manager: {outcomes}")
        frames = len(rig.frames)
        loop.run_until_complete(rig.frames_past(frames + 3))
    finally:
        rig.stop()
        loop.close()
        server.close()
    rig.assert_no_frame_skipped()
    current = rig.manager.current
    assert current is not None and current.state in (DeploymentState.FAILED, DeploymentState.ACTIVE)
