"""What fusing the normalisation into the graph saves: preprocessing and inference per frame.

``python -m agent.cli.bench_transforms --demo demo`` prints, for every demo model and a
640x480 frame of the demo video, the median milliseconds of the float
preprocessing path against the uint8 (fused) path, and of ONNX Runtime on the
original model against the fused one, with the largest output difference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from agent.dev.base import DevError
from agent.models import MANIFEST_FILE, Manifest, fuse_preprocessing
from agent.runtime import TensorSpec
from agent.vision import Preprocessor

__all__ = ["DEFAULT_REPEATS", "DEFAULT_THREADS", "FusedComparison", "compare_demo", "compare_fused", "measure",
           "measure_preprocess"]

DEFAULT_REPEATS = 30
DEFAULT_THREADS = 2
WARMUP_CALLS = 3
FRAME_INDEX = 60
"""A frame of the demo video that shows a page of text."""
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


@dataclass(frozen=True)
class FusedComparison:
    model: str
    frame_shape: tuple[int, ...]
    prep_float_ms: float
    prep_fused_ms: float
    infer_original_ms: float
    infer_fused_ms: float
    max_abs_diff: float

    def line(self) -> str:
        return (
            f"{self.model:<22} frame {self.frame_shape[1]}x{self.frame_shape[0]}  "
            f"prep float {self.prep_float_ms:6.2f} ms  fused {self.prep_fused_ms:6.3f} ms  |  "
            f"infer original {self.infer_original_ms:7.2f} ms  fused {self.infer_fused_ms:7.2f} ms"
            f"  |  max |diff| {self.max_abs_diff:.2e}"
        )


def measure(
    calls: Mapping[str, Callable[[], object]], repeats: int = DEFAULT_REPEATS
) -> dict[str, float]:
    """Median wall milliseconds of each call; the calls take turns so that load drift hits all."""
    for call in calls.values():
        for _ in range(WARMUP_CALLS):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def measure_preprocess(
    preprocessor: Preprocessor, frame: np.ndarray, repeats: int = DEFAULT_REPEATS
) -> float:
    """Median milliseconds of ``preprocessor.prep(frame)``."""
    return measure({"prep": lambda: preprocessor.prep(frame)}, repeats)["prep"]


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _input_spec(session: ort.InferenceSession) -> TensorSpec:
    arg = session.get_inputs()[0]
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_ORT_DTYPES[arg.type]))


def compare_fused(
    folder: Path, frame: np.ndarray, repeats: int = DEFAULT_REPEATS, threads: int = DEFAULT_THREADS
) -> FusedComparison:
    """Time the float and fused paths of the model in ``folder`` (model + manifest) on ``frame``."""
    manifest = Manifest.read(folder / MANIFEST_FILE)
    original = onnx.load(str(folder / manifest.model_file))
    sessions = (
        _session(original, threads),
        _session(fuse_preprocessing(original, manifest.preprocess), threads),
    )
    preps = [Preprocessor(manifest.preprocess, _input_spec(s)) for s in sessions]
    feeds = [{p.input_name: p.prep(frame)[0]} for p in preps]
    outputs = [s.run(None, f)[0] for s, f in zip(sessions, feeds, strict=True)]
    times = measure(
        {
            "prep_float_ms": lambda: preps[0].prep(frame),
            "prep_fused_ms": lambda: preps[1].prep(frame),
            "infer_original_ms": lambda: sessions[0].run(None, feeds[0]),
            "infer_fused_ms": lambda: sessions[1].run(None, feeds[1]),
        },
        repeats,
    )
    return FusedComparison(
        model=folder.name,
        frame_shape=frame.shape,
        max_abs_diff=float(np.max(np.abs(outputs[0] - outputs[1]))),
        **times,
    )


def _video_frame(path: Path, index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok:
        raise DevError(f"cannot read frame {index} of {path}")
    return np.asarray(frame)


def compare_demo(demo: Path, repeats: int = DEFAULT_REPEATS,
                 threads: int = DEFAULT_THREADS) -> Iterator[FusedComparison]:
    """The comparison for every model folder of ``demo``/models, on one frame of the demo video, as each is done."""
    cv2.setNumThreads(threads)
    frame = _video_frame(demo / "video.mp4", FRAME_INDEX)
    for folder in sorted((demo / "models").iterdir()):
        if (folder / MANIFEST_FILE).is_file():
            yield compare_fused(folder, frame, repeats, threads)
