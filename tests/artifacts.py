"""Real HTTP serving of model artifacts on loopback, and artifacts made from the demo models."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from agent.models.bundle import pack_bundle
from agent.models.manifest import Manifest


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


class ArtifactServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        handler = lambda *a, **k: ArtifactHandler(*a, directory=str(root), **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle_of(demo: Path, name: str, out_dir: Path, version: str | None = None) -> Path:
    """A bundle tar of demo/models/<name>, optionally re-versioned."""
    source = demo / "models" / name
    folder = out_dir / f"{name}-src-{version or 'same'}"
    if not folder.exists():
        shutil.copytree(source, folder)
        if version is not None:
            manifest = Manifest.read(folder / "manifest.json")
            manifest.model_copy(update={"version": version, "files": {}}).write(folder / "manifest.json")
    manifest = Manifest.read(folder / "manifest.json")
    out = out_dir / f"{manifest.name}-{manifest.version}.tar"
    pack_bundle(folder, out)
    return out


def nan_model(source: Path, out: Path) -> Path:
    """The real text detector with its output multiplied by NaN: loads fine, outputs garbage."""
    model = onnx.load(str(source))
    graph = model.graph
    original = graph.output[0].name
    graph.initializer.append(numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan_const"))
    inner = original + "_before_nan"
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == original:
                node.output[i] = inner
    graph.node.append(helper.make_node("Mul", [inner, "nan_const"], [original]))
    onnx.save(model, str(out))
    return out
