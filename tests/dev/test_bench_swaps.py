"""``make bench-swaps`` in a short run (50 swaps, the CLI in a subprocess): the swaps happen, and over
the swaps after the first 20 the open fds and threads stay flat and RSS shows no trend beyond a generous
bound. (No timing is asserted; the 1000-swap figures are in docs/benchmarks.md.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.dev.bench_swaps import WARMUP_SWAPS, SwapFigures, theil_sen

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SWAPS = 50
RUN_TIMEOUT_S = 1800.0
"""A generous bound for a busy CI machine: the run is a liveness check, not a timing. The test's own
pytest timeout sits above it (the suite's 300 s cut a CI run on a starved host, stop 23)."""
FD_SPREAD = 3
"""Open fds may differ by a download's file or a log handle in flight, never grow with each swap."""
THREAD_SPREAD = 2
"""Short-lived closer threads may still be ending as a sample is taken."""
RSS_TREND_MB = 100.0
"""Generous: a leak of one session per swap (tens of MB each: the v4 and v6 sessions differ by about 110 MB
of arenas) shows far past it over 30 swaps. A fresh CI run beside the rest of the suite measured a 42 MB
trend over its 15 v6 samples (cause not found: a 340-swap run of the same code was flat, +0.4 MB trend,
docs/benchmarks.md), so a short run's RSS is only checked against a leak of that size."""


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_fifty_swaps_leave_fds_and_threads_flat_and_memory_without_a_trend(demo_dir):
    done = subprocess.run([sys.executable, "-m", "agent.cli.bench_swaps", "--demo", str(demo_dir),
                           "--swaps", str(SWAPS), "--json"], capture_output=True, text=True, cwd=REPO,
                          timeout=RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(figures["rss"]) == len(figures["fds"]) == len(figures["threads"]) == SWAPS
    assert "Theil-Sen trend" in done.stdout and "open fds" in done.stdout
    fds, threads = figures["fds"][WARMUP_SWAPS:], figures["threads"][WARMUP_SWAPS:]
    assert max(fds) - min(fds) <= FD_SPREAD, fds
    assert max(threads) - min(threads) <= THREAD_SPREAD, threads
    for parity in (0, 1):  # v6 serving after even swaps, v4 after odd ones: each against itself
        rss_mb = [r / 1e6 for r in figures["rss"][WARMUP_SWAPS + parity::2]]
        assert abs(theil_sen(rss_mb)) * len(rss_mb) < RSS_TREND_MB, rss_mb


def test_theil_sen_is_the_median_pairwise_slope_and_ignores_an_outlier():
    assert theil_sen([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert theil_sen([5.0, 5.0, 50.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert theil_sen([float(i) * 0.5 for i in range(1000)]) == pytest.approx(0.5)


def test_growth_compares_the_first_and_last_tenths_so_a_lone_sample_holding_an_arena_does_not_count():
    flat = [290.0] * 99 + [400.0]  # the last sample taken while the old arena was still held
    assert SwapFigures.growth(flat) == pytest.approx(0.0)
    leaking = [290.0 + 0.1 * i for i in range(100)]  # 0.1 MB a swap
    assert SwapFigures.growth(leaking) == pytest.approx(9.0)
    assert SwapFigures.trend(leaking)[1] == pytest.approx(10.0)
