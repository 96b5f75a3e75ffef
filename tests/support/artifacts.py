"""Real HTTP serving of model artifacts on loopback, and artifacts made from the demo models."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from agent.models.bundle import pack_bundle
from agent.models.manifest import Manifest
from agent.tools.modelref import resolve_model
from agent.tools.prune import prune_folder
from tests.support.http import LoopbackServer


class ArtifactHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the directory; /truncated/<f> sends half of f under the full Content-Length,
    /slow/<f> trickles f out (for kills during a download)."""

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        for prefix in ("/truncated/", "/slow/"):
            if self.path.startswith(prefix):
                path = Path(self.directory) / self.path[len(prefix):]
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if prefix == "/truncated/":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for start in range(0, len(data), 64 * 1024):
                    self.wfile.write(data[start:start + 64 * 1024])
                    self.wfile.flush()
                    time.sleep(0.2)
                return
        super().do_GET()


class ArtifactServer(LoopbackServer):
    """The files of ``root`` (and its /truncated/ and /slow/ views) on loopback HTTP."""

    def __init__(self, root: Path) -> None:
        self.root = root
        super().__init__(functools.partial(ArtifactHandler, directory=str(root)))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reversion(folder: Path, version: str) -> None:
    """The model folder's manifest says ``version``; its file hashes go (packing writes them again)."""
    manifest = Manifest.read(folder / "manifest.json")
    manifest.model_copy(update={"version": version, "files": {}}).write(folder / "manifest.json")


def bundle_of(demo: Path, name: str, out_dir: Path, version: str | None = None) -> Path:
    """A bundle tar of demo/models/<name>, optionally re-versioned."""
    source = demo / "models" / name
    folder = out_dir / f"{name}-src-{version or 'same'}"
    if not folder.exists():
        shutil.copytree(source, folder)
        if version is not None:
            _reversion(folder, version)
    manifest = Manifest.read(folder / "manifest.json")
    out = out_dir / f"{manifest.name}-{manifest.version}.tar"
    pack_bundle(folder, out)
    return out


def _detached(source: Path, tag: str) -> tuple[onnx.ModelProto, str, str]:
    """The model at ``source`` with its first output renamed ``<output>_before_<tag>`` where it is made:
    (the model, the output, the new name). The caller adds the nodes that make the output from it."""
    model = onnx.load(str(source))
    original = model.graph.output[0].name
    inner = f"{original}_before_{tag}"
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == original:
                node.output[i] = inner
    return model, original, inner


SLOW_SIDE = 1024
"""Side of the square matrices of ``slow_model``'s busy chain."""
SLOW_MATMULS = 32
"""MatMuls in that chain: measured here at about 3.5x the detector's own time on a 640x480 frame,
so the slow model stays past a 1.3x bound however the machine's load moves either figure."""


def slow_model(source: Path, out: Path) -> Path:
    """The real text detector with the same outputs, made several times slower by a chain of MatMuls
    that depends on the input (nothing can fold it away) and is added to the output times zero."""
    model, original, inner = _detached(source, "slow")
    graph = model.graph
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((SLOW_SIDE, SLOW_SIDE)) / np.sqrt(SLOW_SIDE)).astype(np.float32)
    graph.initializer.extend([numpy_helper.from_array(weights, "slow_w"),
                              numpy_helper.from_array(np.zeros((), dtype=np.float32), "slow_zero")])
    nodes = [helper.make_node("ReduceMean", [graph.input[0].name], ["slow_s"], keepdims=0),
             helper.make_node("Mul", ["slow_w", "slow_s"], ["slow_m0"])]
    for k in range(SLOW_MATMULS):
        nodes += [helper.make_node("MatMul", [f"slow_m{k}", "slow_w"], [f"slow_p{k}"]),
                  helper.make_node("Tanh", [f"slow_p{k}"], [f"slow_m{k + 1}"])]
    nodes += [helper.make_node("ReduceSum", [f"slow_m{SLOW_MATMULS}"], ["slow_sum"], keepdims=0),
              helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
              helper.make_node("Add", [inner, "slow_nothing"], [original])]
    graph.node.extend(nodes)
    onnx.save(model, str(out))
    return out


def _scaled_model(source: Path, out: Path, tag: str, factor: float) -> Path:
    """The model at ``source`` with its first output multiplied by ``factor``."""
    model, original, inner = _detached(source, tag)
    const = f"{tag}_const"
    model.graph.initializer.append(numpy_helper.from_array(np.array([factor], dtype=np.float32), const))
    model.graph.node.append(helper.make_node("Mul", [inner, const], [original]))
    onnx.save(model, str(out))
    return out


def nan_model(source: Path, out: Path) -> Path:
    """The real text detector with its output multiplied by NaN: loads fine, outputs garbage."""
    return _scaled_model(source, out, "nan", np.nan)


def zero_model(source: Path, out: Path) -> Path:
    """The real text detector with its probability map multiplied by zero: loads, infers as fast and as
    finite as the original (it passes the NaN and latency checks) and sees nothing."""
    return _scaled_model(source, out, "zero", 0.0)


def variant_folder(source: Path, folder: Path, version: str, change: Callable[[Path, Path], Path]) -> Path:
    """A copy of the model folder ``source`` at ``folder`` as ``version``, its model.onnx rewritten by
    ``change(model, model)`` (``slow_model``, ``nan_model``, ``zero_model``)."""
    shutil.copytree(source, folder)
    change(folder / "model.onnx", folder / "model.onnx")
    _reversion(folder, version)
    return folder


def _variant_bundle(demo: Path, out_dir: Path, version: str, tag: str, change: Callable[[Path, Path], Path]) -> Path:
    """A bundle of the demo v4 detector as ``version``, its model rewritten by ``change``."""
    folder = variant_folder(demo / "models" / "text-det-v4", out_dir / f"text-det-{tag}-{version}", version, change)
    out = out_dir / f"text-det-{version}.tar"
    pack_bundle(folder, out)
    return out


def slow_bundle(demo: Path, out_dir: Path, version: str) -> Path:
    """A bundle of the demo v4 detector as ``version``, its model replaced by ``slow_model``."""
    return _variant_bundle(demo, out_dir, version, "slow", slow_model)


def zero_bundle(demo: Path, out_dir: Path, version: str) -> Path:
    """A bundle of the demo v4 detector as ``version``, its model replaced by ``zero_model``."""
    return _variant_bundle(demo, out_dir, version, "zero", zero_model)


def pruned_bundle(demo: Path, out_dir: Path, sparsity: float = 0.5) -> Path:
    """A bundle of the demo v4 detector magnitude-pruned to ``sparsity`` (agent.tools.prune): at 0.5 it
    runs clean and fast but finds almost nothing on the page scene (box F1 0 against v4)."""
    folder = out_dir / f"text-det-v4-pruned{round(sparsity * 100)}"
    if not folder.exists():
        prune_folder(resolve_model(demo / "models" / "text-det-v4"), folder, sparsity, "unstructured")
    manifest = Manifest.read(folder / "manifest.json")
    out = out_dir / f"{manifest.name}-{manifest.version}.tar"
    pack_bundle(folder, out)
    return out
