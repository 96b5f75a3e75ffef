"""``edge-agent top``: its model (payloads in, rows out) without a terminal, then the view in a real one.

The terminal test runs ``top`` in tmux against a real agent on a real mosquitto,
deploys PP-OCRv6 to the agent and reads the swap off the screen
(``tmux capture-pane``), then quits with q.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from typing import Any

from rich.console import Console

from agent.cli.top import render
from agent.fleet.top import MAX_EVENTS, CountRow, TopModel
from tests.e2e.test_cli_local import edge_agent
from tests.support.agentproc import REPO, SLOW_MACHINE, AgentProcess, agent_config
from tests.support.mosquitto import WAIT_S, poll
from tests.support.tmux import Tmux

NOW = 1_800_000_000.0
AGENT_START_S = 90.0
DEPLOY_S = 120.0


def envelope(seq: int = 1, ts: float = NOW) -> dict[str, Any]:
    return {"schema_version": 1, "device_id": "cam-7", "ts": ts, "seq": seq}


def health(state: str = "open", fps: float = 14.9) -> dict[str, Any]:
    return {**envelope(), "uptime_s": 60.0, "camera": {"state": state, "reopens": 2, "last_error": None, "fps": fps},
            "broker": {"state": "connected", "reconnects": 0},
            "model": {"name": "text-det", "version": "v4", "runtime": "onnxruntime"},
            "cpu_percent": 50.0, "memory_rss_bytes": 1, "memory_available_bytes": 1, "disk_free_bytes": 1,
            "outbox_depth": 0, "frames_processed": 900}


def stage(p50: float) -> dict[str, Any]:
    return {"p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3, "max_ms": p50 * 4, "count": 100}


def deployment(deployment_id: str, state: str, progress: float, error: dict[str, str] | None = None) -> dict[str, Any]:
    return {**envelope(), "deployment_id": deployment_id, "name": "text-det", "version": "v6", "state": state,
            "step": state, "progress": progress, "error": error, "updated": NOW}


def fed(*messages: tuple[str, dict[str, Any]]) -> TopModel:
    model = TopModel("edge", "cam-7", "dock")
    for suffix, payload in messages:
        model.apply(f"edge/cam-7/{suffix}", json.dumps(payload).encode())
    return model


def test_health_latency_and_model_become_the_camera_model_and_latency_rows():
    model = fed(
        ("status", {**envelope(), "state": "online", "agent_version": "0.1.0", "started_at": NOW - 125,
                    "groups": ["lab"]}),
        ("telemetry/health", health()),
        ("telemetry/latency", {**envelope(), "window_frames": 100, "fps": 12.5, "frames_processed": 1000,
                               "frames_dropped": 7,
                               "stages": {"infer": stage(20.0), "end_to_end": stage(30.0)}}),
        ("model", {**envelope(), "name": "text-det", "version": "v6", "sha256": "0" * 64, "runtime": "onnxruntime",
                   "since": NOW - 5, "previous": {"name": "text-det", "version": "v4"}}),
    )
    rows = model.rows(NOW)
    assert (rows.status, rows.agent_version, rows.uptime_s) == ("online", "0.1.0", 125.0)
    assert [(c.name, c.state, c.fps, c.reopens) for c in rows.cameras] == [("dock", "open", 14.9, 2)]
    assert rows.model is not None and (rows.model.version, rows.model.previous) == ("v6", "text-det v4")
    assert (rows.fps, rows.frames_processed, rows.frames_dropped) == (12.5, 1000, 7)
    assert [(row.stage, row.stats.p95_ms) for row in rows.latency] == [("end_to_end", 60.0), ("infer", 40.0)]


def test_health_without_a_camera_gives_no_camera_row():
    rows = fed(("telemetry/health", {**health(), "camera": None})).rows(NOW)
    assert rows.cameras == [] and rows.frames_processed == 900


def test_the_model_row_comes_from_health_until_the_retained_model_arrives():
    rows = fed(("telemetry/health", health())).rows(NOW)
    assert rows.model is not None
    assert (rows.model.name, rows.model.version, rows.model.since) == ("text-det", "v4", None)
    assert rows.status == "unknown" and rows.uptime_s is None


def test_a_deployment_is_in_progress_until_a_final_state_and_keeps_its_error():
    model = fed(("deployment", deployment("d-1", "downloading", 0.2)))
    row = model.rows(NOW).deployment
    assert row is not None and row.in_progress and row.progress == 0.2
    model.apply("edge/cam-7/deployment", json.dumps(deployment(
        "d-1", "failed", 1.0, {"code": "unreachable", "message": "no such file"})).encode())
    row = model.rows(NOW).deployment
    assert row is not None and not row.in_progress and row.error == "unreachable: no such file"
    model.apply("edge/cam-7/deployment", b"")  # a retained message cleared
    assert model.rows(NOW).deployment is None


def test_signals_show_the_worst_judged_state_else_why_none_is_judged():
    drift = {**envelope(), "metrics": {"luma": {"state": "ok", "psi": 0.02}, "conf": {"state": "warn", "psi": 0.31}}}
    bias = {**envelope(), "slicings": {"light": {"state": "insufficient_samples"}}}
    leak = {**envelope(), "resources": {
        "rss": {"unit": "MB", "state": "alarm", "slope_per_hour": 42.0},
        "fds": {"unit": "count", "state": "ok", "slope_per_hour": 0.0}}}
    rows = fed(("telemetry/drift", drift), ("telemetry/bias", bias), ("telemetry/leak", leak)).rows(NOW)
    assert [(s.kind, s.state, s.detail) for s in rows.signals] == [
        ("drift", "warn", "max PSI 0.310"), ("bias", "insufficient_samples", ""), ("leak", "alarm", "rss +42.0 MB/h")]
    assert [(s.kind, s.state) for s in fed().rows(NOW).signals] == [("drift", "-"), ("bias", "-"), ("leak", "-")]


def test_events_are_kept_newest_first_and_bounded():
    model = fed(*[("events", {**envelope(seq=i, ts=NOW + i), "kind": f"k{i}", "severity": "info",
                              "message": f"event {i}", "data": {}}) for i in range(MAX_EVENTS + 3)])
    kinds = [event.kind for event in model.rows(NOW).events]
    assert kinds == [f"k{i}" for i in range(MAX_EVENTS + 2, 2, -1)]


def test_other_devices_unknown_topics_and_bad_payloads_do_not_enter_the_view():
    model = TopModel("edge", "cam-7")
    assert not model.apply("edge/cam-8/telemetry/health", json.dumps(health()).encode())
    assert not model.apply("edge/cam-7/cmd/deploy", b"{}")
    assert model.apply("edge/cam-7/telemetry/health", b"{not json")
    rows = model.rows(NOW)
    assert rows.cameras == [] and rows.rejected == 1
    assert "edge/cam-7/telemetry/health" in model.filters and "edge/cam-7/events" in model.filters


def test_the_drawing_shows_every_section_and_results_counts_when_there_are_some():
    model = fed(("telemetry/health", health()), ("deployment", deployment("d-9", "warming", 0.7)))
    rows = model.rows(NOW)
    console = Console(width=160, record=True)
    console.print(render(rows, broker="mqtt://127.0.0.1:1883", link="connected"))
    text = console.export_text()
    for shown in ("edge-agent top  cam-7  unknown", "(connected)", "cameras", "dock", "open", "14.9",
                  "deployment d-9  text-det v6 warming", " 70%", "signals", "drift", "events (newest first)"):
        assert shown in text, f"{shown!r} not in:\n{text}"
    assert "results" not in text
    with_counts = type(rows)(**{**rows.__dict__, "counts": [CountRow("dock", "text", 3)]})
    console.print(render(with_counts, broker="mqtt://127.0.0.1:1883", link="connected"))
    assert "results" in console.export_text()


# ----- in a real terminal ----------------------------------------------------------------------
def test_top_in_a_terminal_shows_the_agent_and_the_swap_and_quits_on_q(tmp_path, demo_dir, mosquitto):
    config = agent_config(tmp_path, demo_dir, mosquitto.url, telemetry={"health_period_s": 1.0},
                          deploy={"file_roots": [str(demo_dir / "models")], **SLOW_MACHINE})
    agent = AgentProcess(config)
    terminal = Tmux(width=150, height=50)
    rc = tmp_path / "top.rc"
    try:
        poll(lambda: "agent_ready" in agent.log() or agent.proc.poll() is not None, AGENT_START_S, "agent ready")
        terminal.run("top", [sys.executable, "-m", "agent", "top", "--config", str(config)], REPO, rc,
                     env={"PYTHONPATH": str(REPO)})
        screen = terminal.wait_for("top", "edge-agent top  dev1  online", "(connected)", "camera0   open",
                                   "text-det   v4", "end_to_end")
        assert "deployment  none" in screen

        # The deploy in a terminal of its own: a progress bar there, the swap in top.
        deploy_rc = tmp_path / "deploy.rc"
        terminal.run("deploy", [sys.executable, "-m", "agent", "deploy", "--config", str(config), "--name",
                                "text-det", "--version", "v6", "--url",
                                (demo_dir / "models" / "text-det-v6" / "model.onnx").as_uri(),
                                "--timeout", str(DEPLOY_S)], REPO, deploy_rc, env={"PYTHONPATH": str(REPO)})
        poll(deploy_rc.exists, DEPLOY_S + 30, "the deploy to end")
        deploy_screen = terminal.screen("deploy", history=True)
        assert deploy_rc.read_text().strip() == "0", deploy_screen
        assert re.search(r"\[dev1\] active +━+ 100%", deploy_screen), f"no full bar:\n{deploy_screen}"
        found = re.search(r"now serving text-det v6 \(deployment (\w+), on probation\)", deploy_screen)
        assert found, deploy_screen
        deployment_id = found[1]
        screen = terminal.wait_for("top", "text-det   v6", "text-det v4", f"deployment {deployment_id}",
                                   "engine_swapped", "now serving text-det v6")
        assert "100%" in screen

        terminal.keys("top", "q")
        poll(rc.exists, WAIT_S, "top to quit on q")
        assert rc.read_text().strip() == "0"
        assert "Traceback" not in terminal.screen("top", history=True)

        # Ctrl-C quits as cleanly: exit 0 and the terminal's line mode and echo given back. (bash, not sh:
        # dash ends itself on the SIGINT the whole foreground group gets, even when top exits 0.)
        modes, rc = tmp_path / "stty.txt", tmp_path / "top-interrupted.rc"
        top = shlex.join([sys.executable, "-m", "agent", "top", "--config", str(config)])
        terminal.run("again", ["bash", "-c", f"{top}; status=$?; stty -a > {shlex.quote(str(modes))}; exit $status"],
                     REPO, rc, env={"PYTHONPATH": str(REPO)})
        terminal.wait_for("again", "edge-agent top  dev1  online", "(connected)")
        terminal.keys("again", "C-c")
        poll(rc.exists, WAIT_S, "top to quit on Ctrl-C")
        assert rc.read_text().strip() == "0", terminal.screen("again", history=True)
        flags = modes.read_text().split()
        assert "icanon" in flags and "echo" in flags, "top left the terminal in cbreak mode"
    finally:
        terminal.close()
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    lines = [line for line in agent.log().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), "piped, the agent writes JSON lines only (no summary)"
    assert all(json.loads(line) for line in lines)


def test_top_without_an_agent_says_so(tmp_path, demo_dir):
    config = agent_config(tmp_path, demo_dir, "embedded")
    done = edge_agent("top", "--config", str(config))
    assert done.returncode == 1
    assert "no agent is running with this config" in done.stderr


def test_top_piped_prints_the_view_once(tmp_path, demo_dir, mosquitto, mqtt_probe):
    probe = mqtt_probe(mosquitto.port, [])
    probe.publish("edge/cam-7/telemetry/health", json.dumps(health()).encode(), retain=True)
    done = edge_agent("top", "--broker", mosquitto.url, "--device", "cam-7")
    assert done.returncode == 0, done.stderr
    assert "edge-agent top  cam-7" in done.stdout and re.search(r"source +open +14\.9", done.stdout), done.stdout
