"""``[monitor]``: every window, period, threshold and bound of the drift, bias and leak signals.

One flat section (``drift_*``, ``bias_*``, ``leak_*``, ``egress_*``) so that each
key can be overridden from the environment as ``EDGE_AGENT__MONITOR__<KEY>``.
docs/signals.md explains each signal and what its defaults mean.

Each monitor takes its own part as its parameters (``DriftMonitor(DriftSection)``,
``BiasMonitor(BiasSection)``, ``LeakMonitor(LeakSection)``, ``EgressGuard(..., EgressSection)``);
``MonitorSection`` is all four, so the running agent hands each monitor ``config.monitor``
and every default is written once, here.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.core.config.base import Section

__all__ = ["BiasSection", "DriftSection", "EgressSection", "LeakSection", "MonitorSection"]


class DriftSection(Section):
    """Drift: the live window against the model's reference statistics."""

    drift_period_s: float = Field(default=30.0, gt=0)
    """How often drift is evaluated and published."""
    drift_window: int = Field(default=900, ge=10, le=100_000)
    """Frames in the sliding window compared with the reference."""
    drift_sample_every: int = Field(default=1, ge=1, le=10_000)
    """Only every n-th frame enters the window (a longer span for the same memory and cost)."""
    drift_min_samples: int = Field(default=300, ge=1)
    """Below this many frames in the window a metric is ``insufficient_samples``, not judged."""
    drift_psi_warn: float = Field(default=0.1, gt=0)
    """PSI at which a drift metric warns (0.1: the common rule of thumb)."""
    drift_psi_alarm: float = Field(default=0.25, gt=0)
    """PSI at which a drift metric alarms (0.25: the common rule of thumb)."""
    drift_js_warn: float = Field(default=0.13, gt=0, le=1)
    """JS distance (base 2); 0.13 / 0.21 match PSI 0.1 / 0.25 for small shifts."""
    drift_js_alarm: float = Field(default=0.21, gt=0, le=1)
    """JS distance at which a drift metric alarms."""
    drift_clear_margin: float = Field(default=0.2, ge=0, lt=1)
    """A drift state is left when its measure is this fraction below the bound that raised it."""
    drift_eps: float = Field(default=1e-4, gt=0, lt=0.01)
    """Proportion that stands in for an empty bin in PSI."""
    drift_pseudo_count: float = Field(default=0.5, ge=0, le=10)
    """Added to every bin of the reference and live histograms before comparing them."""

    @model_validator(mode="after")
    def _drift_ordered(self) -> DriftSection:
        for warn, alarm in (("drift_psi_warn", "drift_psi_alarm"), ("drift_js_warn", "drift_js_alarm")):
            if getattr(self, warn) > getattr(self, alarm):
                raise ValueError(f"{warn} must be <= {alarm}")
        if self.drift_min_samples > self.drift_window:
            raise ValueError("drift_min_samples must be <= drift_window")
        return self


class BiasSection(Section):
    """Bias: parity between slices of the input, and labelled feedback."""

    bias_period_s: float = Field(default=60.0, gt=0)
    """How often bias is evaluated and published."""
    bias_window: int = Field(default=3000, ge=10, le=1_000_000)
    """Frames in the sliding window the slices are compared over."""
    bias_sample_every: int = Field(default=1, ge=1, le=10_000)
    """Only every n-th frame enters the bias window."""
    bias_min_samples: int = Field(default=100, ge=1)
    """A slice with fewer frames is ``insufficient_samples`` and is left out of the comparison."""
    bias_brightness_bands: tuple[float, float] = (60.0, 190.0)
    """Mean-luma edges: ``dark`` below the first, ``bright`` at or above the second."""
    bias_positive_threshold: float = Field(default=0.5, ge=0, le=1)
    """A frame is positive when a detection (or the top class) scores at least this."""
    bias_positive_labels: tuple[str, ...] = ()
    """Labels that count as positive; empty: any detection (classifiers: no selection rate)."""
    bias_ratio_warn: float = Field(default=0.9, gt=0, le=1)
    """Smallest slice ratio below which a slicing warns."""
    bias_ratio_alarm: float = Field(default=0.8, gt=0, le=1)
    """Smallest slice ratio below which a slicing alarms (0.8: the four-fifths rule)."""
    bias_min_difference: float = Field(default=0.05, ge=0, le=1)
    """Rate differences smaller than this are parity whatever their ratio (tiny rates)."""
    bias_odds_warn: float = Field(default=0.1, gt=0, le=1)
    """Equalized-odds gap at which the labelled comparison warns."""
    bias_odds_alarm: float = Field(default=0.2, gt=0, le=1)
    """Equalized-odds gap (largest TPR or FPR difference between slices) bounds."""
    bias_clear_margin: float = Field(default=0.1, ge=0, lt=1)
    """A bias state is left when its measure is this fraction inside the bound that raised it."""
    bias_frames_kept: int = Field(default=2000, ge=1, le=1_000_000)
    """Recent frames remembered so that labelled feedback can be matched by frame id."""
    bias_feedback_window: int = Field(default=5000, ge=1, le=1_000_000)
    """Labelled outcomes kept for the per-slice accuracy, recall and false-positive rate."""
    bias_min_labelled: int = Field(default=30, ge=1)
    """A slice needs this many labelled frames before its rates enter the comparison."""

    @model_validator(mode="after")
    def _bias_ordered(self) -> BiasSection:
        if self.bias_odds_warn > self.bias_odds_alarm:
            raise ValueError("bias_odds_warn must be <= bias_odds_alarm")
        if self.bias_ratio_warn < self.bias_ratio_alarm:
            raise ValueError("bias_ratio_warn must be >= bias_ratio_alarm (lower ratios are worse)")
        low, high = self.bias_brightness_bands
        if not 0 <= low < high <= 255:
            raise ValueError("bias_brightness_bands must be two increasing luma values in 0..255")
        return self


class LeakSection(Section):
    """Leak: resource trends over time and over model swaps."""

    leak_sample_period_s: float = Field(default=10.0, gt=0)
    """How often RSS, open fds, threads and device memory are sampled."""
    leak_period_s: float = Field(default=60.0, gt=0)
    """How often the trends are evaluated and published."""
    leak_window: int = Field(default=360, ge=3, le=100_000)
    """Samples kept for the trend over time (360 x 10 s: one hour)."""
    leak_swap_window: int = Field(default=100, ge=3, le=100_000)
    """Per-swap samples kept for the trend over swaps."""
    leak_min_samples: int = Field(default=30, ge=3)
    """Samples needed before a trend over time is judged."""
    leak_min_swaps: int = Field(default=5, ge=3)
    """Swaps needed before a trend per swap is judged."""
    leak_consecutive: int = Field(default=3, ge=1, le=1000)
    """Evaluations in a row a slope must stay above its bound before the alarm is raised."""
    leak_clear_margin: float = Field(default=0.5, ge=0, lt=1)
    """A leak alarm clears when the slope falls this fraction below its bound."""
    leak_rss_mb_per_hour: float = Field(default=50.0, gt=0)
    """Bound of the RSS slope, MB per hour."""
    leak_device_mb_per_hour: float = Field(default=50.0, gt=0)
    """Bound of the device-memory slope (CUDA), MB per hour."""
    leak_nvmap_mb_per_hour: float = Field(default=50.0, gt=0)
    """Bound of the Jetson NVMAP slope, MB per hour."""
    leak_fds_per_hour: float = Field(default=30.0, gt=0)
    """Bound of the open-file-descriptor slope, per hour."""
    leak_threads_per_hour: float = Field(default=10.0, gt=0)
    """Bound of the thread-count slope, per hour."""
    leak_rss_mb_per_swap: float = Field(default=5.0, gt=0)
    """Bound of the RSS slope, MB per swap."""
    leak_device_mb_per_swap: float = Field(default=5.0, gt=0)
    """Bound of the device-memory slope, MB per swap."""
    leak_nvmap_mb_per_swap: float = Field(default=5.0, gt=0)
    """Bound of the NVMAP slope, MB per swap."""
    leak_fds_per_swap: float = Field(default=0.5, gt=0)
    """Bound of the open-fd slope, per swap."""
    leak_threads_per_swap: float = Field(default=0.5, gt=0)
    """Bound of the thread-count slope, per swap."""

    @model_validator(mode="after")
    def _leak_ordered(self) -> LeakSection:
        if self.leak_min_samples > self.leak_window:
            raise ValueError("leak_min_samples must be <= leak_window")
        if self.leak_min_swaps > self.leak_swap_window:
            raise ValueError("leak_min_swaps must be <= leak_swap_window")
        return self


class EgressSection(Section):
    """The egress guard: the bounds of what may leave the device."""

    egress_max_payload_bytes: int = Field(default=65_536, ge=256)
    """Outgoing payloads larger than this are blocked (no frame fits in a telemetry message)."""
    egress_max_string_chars: int = Field(default=2048, ge=16)
    """Outgoing strings longer than this are blocked."""
    egress_blob_min_chars: int = Field(default=128, ge=16)
    """An unbroken base64-alphabet run this long in any string is taken for encoded binary."""
    egress_max_array_items: int = Field(default=256, ge=16)
    """A list (nested lists counted whole) with more values than this is taken for pixel data."""
    egress_max_image_bytes: int = Field(default=1_000_000, ge=4096)
    """A snapshot (the only image that may leave, on ``snapshots/<camera>``, as one JPEG) larger than
    this is blocked; a camera's ``results.snapshots.max_bytes`` (200 kB by default) keeps under it."""


class MonitorSection(EgressSection, LeakSection, BiasSection, DriftSection):
    """``[monitor]``: the drift, bias, leak and egress parts in one flat table (drift's keys first)."""
