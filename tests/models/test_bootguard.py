"""Boot counting: which starts count as failed, when a version is quarantined, what lifts it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from agent.models.bootguard import BootGuard, BootState, CrashLoop
from agent.models.manifest import Manifest
from agent.models.store import ModelStore, StoreError

K = 3
WINDOW_S = 120.0


def _start(path: Path, current: str, served: str | None = None) -> tuple[BootGuard, CrashLoop | None]:
    """One start as the agent makes it: check, then record the version actually served."""
    guard = BootGuard(path, K, WINDOW_S)
    verdict = guard.check(current)
    guard.started(served or current)
    return guard, verdict


def test_k_starts_that_die_before_ready_quarantine_the_version(tmp_path):
    record = tmp_path / "boot.json"
    verdicts = [_start(record, "v6")[1] for _ in range(K)]
    assert verdicts == [None] * K
    _, verdict = _start(record, "v6", served="v4")
    assert verdict == CrashLoop("v6", K)
    assert "failed 3 starts in a row" in verdict.message


def test_a_death_soon_after_ready_counts_and_a_run_past_the_window_resets(tmp_path):
    record = tmp_path / "boot.json"
    for _ in range(K - 1):
        guard, _ = _start(record, "v6")
        guard.ready()
        assert guard.tick(time.monotonic() + WINDOW_S / 2) is False
    guard, _ = _start(record, "v6")
    guard.ready()
    assert json.loads(record.read_text())["failures"] == K - 1
    assert guard.tick(time.monotonic() + WINDOW_S) is True
    assert guard.tick(time.monotonic() + 2 * WINDOW_S) is False, "stable once"
    assert json.loads(record.read_text()) | {"started_at": 0, "pid": 0} == {
        "version": "v6", "state": "stable", "failures": 0, "started_at": 0, "pid": 0}
    assert _start(record, "v6")[1] is None


def test_a_death_soon_after_a_deploy_counts_against_the_deployed_version(tmp_path):
    record = tmp_path / "boot.json"
    guard, _ = _start(record, "v4")
    guard.ready()
    guard.tick(time.monotonic() + WINDOW_S)
    guard.swapped("v6")  # a deploy, long after the start; the process dies soon after it
    assert json.loads(record.read_text())["version"] == "v6"
    for failures in range(1, K):
        guard, verdict = _start(record, "v6")
        assert verdict is None and guard.record is not None and guard.record.failures == failures
        guard.ready()  # and dies again
    assert BootGuard(record, K, WINDOW_S).check("v6") == CrashLoop("v6", K)


def test_a_clean_stop_resets_the_count(tmp_path):
    record = tmp_path / "boot.json"
    for _ in range(K - 1):
        _start(record, "v6")
    guard, verdict = _start(record, "v6")
    assert verdict is None and guard.record is not None and guard.record.failures == K - 1
    guard.stopped()
    assert guard.record.state is BootState.STOPPED and guard.record.failures == 0
    for _ in range(K):
        assert _start(record, "v6")[1] is None


def test_failures_of_another_version_do_not_count(tmp_path):
    record = tmp_path / "boot.json"
    for _ in range(K):
        _start(record, "v5")
    assert _start(record, "v6")[1] is None
    guard = BootGuard(record, K, WINDOW_S)
    guard.check("v6")
    assert guard.failures_of("v6") == 1 and guard.failures_of("v5") == 0


@pytest.mark.parametrize("text", ["", "{", "[]", '{"version": "v6"}', '{"version": "v6", "state": "x", '
                                  '"failures": 1, "started_at": 0, "pid": 1}', '"\\ud800"'])
def test_an_unreadable_record_counts_as_no_failed_start(tmp_path, text):
    record = tmp_path / "boot.json"
    record.write_text(text)
    assert _start(record, "v6")[1] is None
    assert json.loads(record.read_text())["state"] == "starting"


def test_a_record_that_cannot_be_written_does_not_stop_the_start(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    guard, verdict = _start(blocked / "boot.json", "v6")
    assert verdict is None and guard.record is not None
    guard.ready()
    guard.stopped()


def _store(tmp_path: Path, demo_dir: Path) -> ModelStore:
    store = ModelStore(tmp_path / "engines")
    for version in ("v4", "v5"):
        folder = tmp_path / f"src-{version}"
        shutil.copytree(demo_dir / "models" / "text-det-v4", folder)
        manifest = Manifest.read(folder / "manifest.json").model_copy(update={"version": version, "files": {}})
        manifest.write(folder / "manifest.json")
        store.install(folder)
    return store


def test_a_quarantined_version_is_refused_as_current_previous_or_rollback_target(tmp_path, demo_dir):
    store = _store(tmp_path, demo_dir)
    store.quarantine("text-det", "v5", "crash_loop", failures=K)
    assert store.quarantined("text-det") == {"v5": {"reason": "crash_loop", "failures": K}}
    with pytest.raises(StoreError, match=r"v5 is quarantined \(crash_loop\)"):
        store.current("text-det")
    store.activate("text-det", "v4")
    assert store.previous_version("text-det") == "v5"
    with pytest.raises(StoreError, match="quarantined"):
        store.previous("text-det")
    with pytest.raises(StoreError, match="deploy it again"):
        store.activate("text-det", "v5")
    assert store.current_version("text-det") == "v4"


def test_an_explicit_deploy_lifts_the_quarantine(tmp_path, demo_dir):
    store = _store(tmp_path, demo_dir)
    store.quarantine("text-det", "v5", "crash_loop", failures=K)
    store.activate("text-det", "v4")
    store.activate("text-det", "v5", explicit=True)
    assert store.quarantined("text-det") == {}
    assert store.current("text-det").version == "v5"
    assert not (store.root / "text-det" / "quarantine.json").exists()
