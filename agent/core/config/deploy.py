"""``[deploy]``: what a deployment may fetch, how a new model is warmed, and how probation judges it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.core.config.base import Section

__all__ = ["DeploySection"]


class DeploySection(Section):
    allowed_schemes: tuple[Literal["http", "https", "file"], ...] = ("https", "http", "file")
    """URL schemes a deploy may fetch from."""
    max_artifact_mb: float = Field(default=512.0, gt=0)
    """Downloads larger than this are refused (checked while streaming)."""
    public_key_file: Path | None = None
    """ed25519 public key (PEM); when set, a deploy must carry a statement signed by its private key
    (name, version, format, sha256, expiry), checked before anything is downloaded."""
    file_roots: tuple[Path, ...] = ()
    """Folders a ``file://`` deploy may read (symlinks resolved first); empty: ``file://`` is refused."""
    download_timeout_s: float = Field(default=900.0, gt=0)
    """Whole-download deadline (connect to last byte); past it the deployment fails (``download_timeout``)."""
    warmup_runs: int = Field(default=1, ge=1, le=100)
    """Inferences on a real frame before a new model may serve. With more than one, the latency budget
    is checked on the median of all but the first (cold) run; with one, on that cold run (an upper bound)."""
    warmup_scale: float = Field(default=0.5, gt=0, le=1)
    """The warm-up runs on a centre crop of the frame, this share of each side, when the model takes any
    frame size (``resize = "multiple"``): the session is warmed for a quarter of a frame's work beside the
    serving model (1: the whole frame). The latency budget is then checked on the crop's time scaled to
    the full frame's pixels. A model of fixed input size is always warmed on its whole input."""
    latency_budget_ms: float = Field(default=2000.0, gt=0)
    """A model whose warm inference takes longer than this is refused. It is measured beside the
    serving model at the loader's niceness, so it is an upper bound of the model's own latency."""
    load_nice: int = Field(default=10, ge=0, le=19)
    """Niceness while a new model's session is created and warmed beside the serving one (0: off)."""
    load_idle: bool = False
    """Also run that work under ``SCHED_IDLE``: preempted at once by any serving thread that wakes."""
    prepare_graph: bool = False
    """Fuse and optimise a new model's graph in a worker process (saved in the store's ``.ort-cache``)
    and load the saved graph: the agent's GIL stays with the frame worker while a model loads."""
    probation_s: float = Field(default=30.0, ge=0)
    """How long a new model is watched after the swap (a deploy may set its own)."""
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    """Probation fails when more frames than this share fail to infer."""
    max_nonfinite: int = Field(default=0, ge=0)
    """Probation fails when more frames than this give NaN/inf outputs."""
    max_latency_ratio: float = Field(default=1.5, gt=0)
    """Probation fails when the new model's p95 latency exceeds the old one's by this factor."""
    min_probation_frames: int = Field(default=10, ge=1)
    """Frames needed before probation judges error rate and latency."""
    behaviour_window: int = Field(default=3000, ge=10, le=1_000_000)
    """Recent frames' outputs kept (all cameras, all versions) for behavioural probation: enough
    for ``behaviour_baseline_frames`` on each camera."""
    behaviour_min_frames: int = Field(default=30, ge=1)
    """Frames a camera needs from the new model, and from the old one, before its behaviour is judged."""
    behaviour_baseline_frames: int = Field(default=300, ge=1)
    """The old model's last frames per camera before the swap that make its baseline."""
    behaviour_min_baseline_count: float = Field(default=0.5, gt=0)
    """The old model's mean detections per frame at which it 'saw something' on a camera: below it a
    new model that detects nothing there is not judged, and the upper ratio is taken against this."""
    behaviour_min_count_ratio: float = Field(default=0.1, gt=0)
    """Probation fails when new / old mean detections per frame on a camera is below this (sees nothing).
    The demo detector v4 -> v6 is 0.87; a model that detects nothing is 0."""
    behaviour_max_count_ratio: float = Field(default=10.0, gt=0)
    """Probation fails when new / old mean detections per frame on a camera is above this (sees everything)."""
    behaviour_max_score_js: float = Field(default=0.6, gt=0, le=1)
    """Probation fails past this JS distance between the new and old score distributions on a camera
    (v4 -> v6 of the demo detector: 0.27)."""
    behaviour_max_label_js: float = Field(default=0.6, gt=0, le=1)
    """Probation fails past this JS distance between the new and old label mix on a camera."""
    behaviour_max_reference_psi: float = Field(default=1.5, gt=0)
    """Probation fails past this PSI of an output metric against the bundle's reference (the drift
    monitor's arithmetic; v6 against v4's reference: 0.51, a model that detects nothing: 2.2)."""
    behaviour_max_reference_js: float = Field(default=0.5, gt=0, le=1)
    """Probation fails past this JS distance of an output metric against the bundle's reference
    (v6 against v4's reference: 0.29, a model that detects nothing: 0.57)."""
    behaviour_match_brightness: float = Field(default=10.0, gt=0)
    """The new model is compared with the old one on a camera only on frames that look alike: a frame
    after the swap matches a baseline frame when their mean luma (0..255) differs by at most this, and
    their contrast and sharpness too (below). A camera with fewer than ``behaviour_min_frames`` matched
    frames waits (``input_moved``), so a scene change at the swap is not taken for a regression.
    The demo video's six photos differ by 10 to 60 levels between neighbours, frames of one photo by 4."""
    behaviour_match_contrast: float = Field(default=5.0, gt=0)
    """The most two look-alike frames' contrast (standard deviation of luma) may differ by; the demo
    video's photos that are as bright as each other differ by 6 to 40."""
    behaviour_match_sharpness: float = Field(default=1.4, gt=1)
    """The largest ratio between two look-alike frames' sharpness (variance of the Laplacian); the demo
    video's first and fifth photos, alike in brightness and contrast, differ 1.4 to 1.9 times."""
    shadow_min_agreement: float = Field(default=0.9, ge=0, le=1)
    """A shadow run promotes its candidate when the mean per-frame agreement with the serving model
    (matched-box F1 at IoU 0.5, top-1 for classifiers) is at least this (the demo detector v4 -> v6 on
    its page scene: 0.99; a model that detects nothing: 0). Choose it on the cameras' real scenes."""
    shadow_min_text_agreement: float = Field(default=0.8, ge=0, le=1)
    """On a camera with a second stage (a recognizer), a shadow run also needs this mean character
    agreement (1 - normalised edit distance) between what the serving recognizer reads in the
    serving model's and in the candidate's matched boxes, or, for a recognizer candidate, between
    the two recognizers on the same crops (the demo v4 -> v6 on its page scene: 0.96, exact 0.41;
    a recognizer with a shuffled dictionary: 0.0); 0: reported, not gated, for a detector candidate
    (a recognizer's shadow run, judged on this bound alone, refuses 0 with ``invalid_shadow``)."""
    shadow_min_frames: int = Field(default=30, ge=1)
    """Frames compared (all cameras) before a shadow run is decided."""
    shadow_every_nth: int = Field(default=5, ge=1)
    """The shadow budget: the candidate sees every n-th frame of each camera (5: a fifth of the frames),
    on the model-loader thread at ``load_nice``, and works at most 1/n of the time (after a comparison
    that took t it rests (n - 1) t); a sample that finds it busy or resting is skipped."""
    shadow_threads: int = Field(default=1, ge=0, le=256)
    """Intra-op threads of the ONNX Runtime session a shadow run's candidate compares with (its own,
    loaded beside it on the first sample and closed at the end; the candidate's engine is the one
    promoted). With the serving engine's threads the candidate slowed the serving inference while it
    ran (docs/benchmarks.md); 0: the candidate's engine itself (no second session, its latency ratio
    like for like)."""
    shadow_duration_s: float = Field(default=600.0, gt=0)
    """The longest a shadow run lasts: by then it is promoted, or discarded (too few frames, no promote)."""
    shadow_auto_promote: bool = True
    """Promote as soon as the bound is met; false: wait for a ``promote`` command within the duration."""
    journal_size: int = Field(default=1000, ge=10, le=1_000_000)
    """Command ids remembered (across restarts) to answer repeats without redoing them."""
