"""The job runner: a backend process in its own group, read on threads, stepped with poll()."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from milo_blender.core.job import Job, Step, group_alive
from milo_blender.core.protocol import (CANCELLED, DONE, FAILED, JobState, apply_event, finish,
                                        parse_line)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups tested on POSIX")


def train_step(fake_python: Path, data: Path, out: Path, *extra: str) -> Step:
    return Step([str(fake_python), "-m", "milo_backend", "train", str(data), str(out), "--json", *extra], "train")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# -- protocol ----------------------------------------------------------------------------------------
def test_parse_line_keeps_non_json_output_as_log():
    assert parse_line('{"event": "stage", "stage": "train"}\n') == {"event": "stage", "stage": "train"}
    assert parse_line("Warning: something\n") == {"event": "log", "message": "Warning: something"}
    assert parse_line('{"no_event": 1}')["event"] == "log"
    assert parse_line("{broken json")["event"] == "log"


def test_events_fold_into_state():
    s = JobState()
    for e in [{"event": "stage", "stage": "train", "message": "Training"},
              {"event": "progress", "stage": "train", "step": 50, "total": 200, "eta_s": 12.5, "loss": 0.1,
               "psnr": 21.0, "gaussians": 1000},
              {"event": "artifact", "kind": "preview", "path": "/p/train_000050.png"},
              {"event": "artifact", "kind": "checkpoint", "path": "/p/checkpoints/latest.pt"},
              {"event": "warning", "message": "few images", "hint": "add more"},
              {"event": "future_kind", "x": 1}]:
        apply_event(s, e)
    assert (s.stage_message, s.step, s.total, s.eta_s) == ("Training", 50, 200, 12.5)
    assert s.fraction == 0.25 and s.metrics == {"loss": 0.1, "psnr": 21.0, "gaussians": 1000}
    assert s.preview == "/p/train_000050.png" and s.checkpoint == "/p/checkpoints/latest.pt"
    assert s.warnings == ["few images (add more)"] and not s.finished
    apply_event(s, {"event": "done", "outputs": {"gaussians": "/p/gaussians.ply"}})
    finish(s, 0)
    assert s.status == DONE and s.fraction == 1.0 and s.outputs["gaussians"] == "/p/gaussians.ply"


def test_exit_codes_without_events_still_explain_what_happened():
    crashed = JobState()
    finish(crashed, -9, "some output\nFatal Python error: Segmentation fault\n")
    assert crashed.status == FAILED and "signal 9" in crashed.message and "Segmentation fault" in crashed.message
    missing = JobState()
    finish(missing, 1, "/usr/bin/python: No module named milo_backend\n")
    assert missing.status == FAILED and "not installed" in missing.message and "Set up backend" in missing.hint
    error = JobState()
    apply_event(error, {"event": "error", "message": "no images in /x", "hint": "choose photos", "path": "/x"})
    finish(error, 2)
    assert (error.status, error.message, error.hint, error.error_path) == (FAILED, "no images in /x", "choose photos", "/x")
    stopped = JobState()
    apply_event(stopped, {"event": "artifact", "kind": "checkpoint", "path": "/c.pt"})
    finish(stopped, 130)
    assert stopped.status == CANCELLED and "Resume" in stopped.hint


# -- processes -----------------------------------------------------------------------------------
def test_successful_run_reports_progress_outputs_and_log(fake_python, photos, tmp_path):
    out = tmp_path / "out dir ü"
    log = tmp_path / "logs" / "job.log"
    job = Job([train_step(fake_python, photos, out, "--iterations", "20")], log_path=log).start()
    state = job.wait(timeout=60)
    assert state.status == DONE, (state.message, log.read_text())
    steps = [e["step"] for e in job.events if e["event"] == "progress"]
    assert steps == list(range(1, 21))
    assert state.preview and Path(state.preview).is_file()
    assert Path(state.outputs["gaussians"]).is_file() and Path(state.outputs["gaussians"]).parent == out.resolve()
    text = log.read_text(encoding="utf-8")
    assert '"event": "done"' in text and "[exit code 0]" in text
    assert not group_alive(job.pid)


def test_cancel_stops_the_backend_with_its_checkpoint(fake_python, photos, tmp_path):
    os.environ["MILO_FAKE_STEP_S"] = "0.05"
    try:
        job = Job([train_step(fake_python, photos, tmp_path / "out", "--iterations", "1000")]).start()
        assert wait_for(lambda: job.poll() is not None and job.state.step >= 3)
        job.cancel()
        state = job.wait(timeout=30)
    finally:
        del os.environ["MILO_FAKE_STEP_S"]
    assert state.status == CANCELLED and state.returncode == 130
    assert state.checkpoint and Path(state.checkpoint).read_text().isdigit()
    assert 3 <= state.step < 1000
    assert not group_alive(job.pid)


def test_crash_is_reported_and_leaves_no_orphan(fake_python, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("MILO_FAKE_MODE", "crash")
    out = tmp_path / "out"
    job = Job([train_step(fake_python, photos, out, "--iterations", "40")]).start()
    state = job.wait(timeout=60)
    assert state.status == FAILED and state.returncode == -9
    assert "stopped unexpectedly" in state.message and "Segmentation fault" in state.message
    assert "Resume" in state.hint  # a checkpoint was written before the crash
    child = int((out / "child.pid").read_text())
    assert wait_for(lambda: not pid_alive(child), timeout=5), "the backend's child process survived"
    assert not group_alive(job.pid)


def test_a_backend_that_stops_printing_is_stopped_and_reported(fake_python, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("MILO_FAKE_MODE", "silent")
    job = Job([train_step(fake_python, photos, tmp_path / "out", "--iterations", "40")], stall_timeout_s=2.0,
              cancel_grace_s=0.5, kill_grace_s=0.5).start()
    state = job.wait(timeout=120)
    assert state.status == FAILED and "printed nothing" in state.message and "stuck" in state.message
    assert state.step == 3 and "log" in state.hint
    assert not group_alive(job.pid)


def test_output_that_is_not_the_protocol_fails_instead_of_importing_nothing(fake_python, photos, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("MILO_FAKE_MODE", "garbage")
    state = Job([train_step(fake_python, photos, tmp_path / "out")]).start().wait(timeout=60)
    assert state.returncode == 0 and state.status == FAILED
    assert "without reporting its results" in state.message and "version" in state.hint


_QUIT_WHILE_RUNNING = """
import sys, time
from milo_blender.core import job as jobs
from milo_blender.core.job import Job, Step
running = jobs.start("reconstruct", Job([Step(sys.argv[1:], "train")]))
while running.state.step < 2:
    running.poll()
    time.sleep(0.02)
print(running.pid, flush=True)
"""  # ... and the interpreter exits, as Blender's does when the user quits


def test_quitting_the_host_stops_its_running_backend(fake_python, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("MILO_FAKE_STEP_S", "0.05")
    out = tmp_path / "out"
    host = subprocess.run([sys.executable, "-c", _QUIT_WHILE_RUNNING, str(fake_python), "-m", "milo_backend",
                           "train", str(photos), str(out), "--json", "--iterations", "5000"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert host.returncode == 0, host.stderr
    backend = int(host.stdout.strip())
    assert wait_for(lambda: not group_alive(backend), timeout=10), "the backend outlived the host"
    assert (out / "checkpoints" / "latest.pt").read_text().isdigit()  # it was asked to stop, not killed


def test_missing_interpreter_fails_cleanly(tmp_path):
    job = Job([Step([str(tmp_path / "no such python"), "-m", "milo_backend", "doctor", "--json"], "doctor")]).start()
    state = job.wait(timeout=5)
    assert state.status == FAILED and "cannot start" in state.message and state.hint


def test_cancel_escalates_when_the_process_ignores_sigint(tmp_path):
    ignore = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    job = Job([Step([sys.executable, "-c", ignore], "stubborn", json=False)], cancel_grace_s=0.3,
              kill_grace_s=0.3).start()
    assert wait_for(lambda: job.poll() is not None and any(e.get("message") == "ready" for e in job.events))
    t0 = time.monotonic()
    job.cancel()
    state = job.wait(timeout=10)
    assert state.status == CANCELLED and time.monotonic() - t0 < 5
    assert not group_alive(job.pid)


def test_a_sequence_stops_at_the_first_failing_step(tmp_path):
    marker = tmp_path / "third ran"
    steps = [Step([sys.executable, "-c", "print('one')"], "First", json=False),
             Step([sys.executable, "-c", "import sys; print('bad thing', file=sys.stderr); sys.exit(3)"], "Second",
                  json=False),
             Step([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], "Third", json=False)]
    state = Job(steps).start().wait(timeout=30)
    assert state.status == FAILED and state.message == "'Second' failed (exit code 3)"
    assert "bad thing" in state.hint and not marker.exists()


def test_a_sequence_reports_one_progress_bar_and_ends_with_json(tmp_path):
    done = 'import json; print(json.dumps({"event": "done", "outputs": {"torch": "x"}}))'
    steps = [Step([sys.executable, "-c", "print('a')"], "Creating", json=False),
             Step([sys.executable, "-c", done], "Checking")]
    job = Job(steps).start()
    state = job.wait(timeout=30)
    assert state.status == DONE and state.outputs == {"torch": "x"}
    stages = [e["message"] for e in job.events if e["event"] == "stage"]
    assert stages == ["Creating", "Checking"]
    assert [(e["step"], e["total"]) for e in job.events if e["event"] == "progress"] == [(0, 2), (1, 2)]
