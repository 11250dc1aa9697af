"""Running the backend: one child process at a time in its own process group, read on threads, stepped
from Blender's main thread.

Never touch bpy from the reader threads: they only put lines on a queue. `Job.poll()` drains the queue
and folds the events into `Job.state`; the modal operator calls it on every timer tick, and background
mode (and the tests, where timers never fire) calls the same `poll()` in a blocking loop (`Job.wait`).

A job is a sequence of `Step`s (the backend set-up is several commands; a reconstruction is one). Steps
that speak the JSON-lines protocol have their events parsed; other steps (pip) are logged as text. Every
line also goes to the job's log file, which survives the job and is what "Open log" shows.

A backend that prints nothing for `stall_timeout_s` (a hang, a dead NFS mount) is stopped like a cancel
and reported as failed, so the panel never waits forever; a JSON step that exits 0 without its `done`
event (another program, garbage on stdout) fails instead of importing nothing.

Cancel sends SIGINT to the whole process group (the backend saves a checkpoint and exits with 130),
escalating to SIGTERM and SIGKILL if it does not stop in time; when the leader exits, anything left in
its group is killed, so no orphan keeps a GPU busy.
"""
from __future__ import annotations

import atexit
import collections
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .protocol import CANCELLED, CANCELLING, FAILED, RUNNING, JobState, apply_event, finish, parse_line

_WINDOWS = sys.platform == "win32"
# The backend reports at least every few seconds while it works (progress, stage, log events); its
# longest silent calls (one Delaunay or bundle adjustment of a large scene) take minutes, not this long.
STALL_TIMEOUT_S = 30 * 60.0


@dataclass(frozen=True)
class Step:
    argv: Sequence[str]
    label: str
    json: bool = True  # the step speaks the event protocol; else its output is kept as log lines


class Job:
    def __init__(self, steps: Iterable[Step], log_path: str | Path | None = None, env: dict | None = None,
                 cwd: str | Path | None = None, cancel_grace_s: float = 60.0, kill_grace_s: float = 10.0,
                 stall_timeout_s: float | None = STALL_TIMEOUT_S):
        self.steps = list(steps)
        if not self.steps:
            raise ValueError("a job needs at least one step")
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.cwd = cwd
        self.cancel_grace_s = cancel_grace_s   # time to save a checkpoint after SIGINT
        self.kill_grace_s = kill_grace_s       # after SIGTERM, before SIGKILL
        self.stall_timeout_s = stall_timeout_s  # no output for this long: stopped as stuck
        self.state = JobState()
        self.events: list[dict] = []           # every event seen, in order
        self._queue: queue.Queue = queue.Queue()
        self._proc: subprocess.Popen | None = None
        self._index = -1
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=60)
        self._log_lock = threading.Lock()
        self._cancel_requested_at: float | None = None
        self._escalation = 0
        self._last_output = time.monotonic()
        self._stalled_s: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Job":
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("", encoding="utf-8")
        self._start_step(0)
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def finished(self) -> bool:
        return self.state.finished

    def poll(self) -> list[dict]:
        """Drain what the threads read so far; returns the new events. Call from the main thread only."""
        new: list[dict] = []
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            self._last_output = time.monotonic()
            if kind == "out":
                event = parse_line(payload) if self.steps[self._index].json else \
                    {"event": "log", "message": payload.rstrip("\r\n")}
                self._handle(event)
                new.append(event)
            elif kind == "err":
                event = {"event": "log", "message": payload.rstrip("\r\n"), "stream": "stderr"}
                self._handle(event)
                new.append(event)
            elif kind == "exit":
                new.extend(self._on_exit(payload))
        self._check_stall()
        self._escalate_cancel()
        return new

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             on_events: Callable[[list[dict]], None] | None = None) -> JobState:
        """Blocking mode: poll until the job ends (or `timeout` passes; then it keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            events = self.poll()
            if on_events and events:
                on_events(events)
            if self.finished or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(interval)
        return self.state

    def cancel(self) -> None:
        """Ask the backend to stop; it saves a checkpoint first. Safe to call from any thread."""
        if self.finished or self._cancel_requested_at is not None:
            return
        self._cancel_requested_at = time.monotonic()
        self.state.status = CANCELLING
        self._signal(signal.CTRL_BREAK_EVENT if _WINDOWS else signal.SIGINT)

    def terminate(self, timeout: float = 5.0) -> JobState:
        """Stop now (extension disabled, new file loaded): a short chance to checkpoint, then kill."""
        if not self.finished:
            self.cancel()
            self.wait(timeout=timeout)
        if not self.finished:
            self.kill()
            self.wait(timeout=timeout)
        return self.state

    def kill(self) -> None:
        if self._cancel_requested_at is None:
            self._cancel_requested_at = time.monotonic()
        self._signal(signal.SIGKILL if not _WINDOWS else None)

    # -- internals -------------------------------------------------------------------------------
    def _handle(self, event: dict) -> None:
        self.events.append(event)
        apply_event(self.state, event)

    def _start_step(self, index: int) -> None:
        self._index = index
        step = self.steps[index]
        if len(self.steps) > 1:
            # a sequence reports its own progress: one bar over all steps
            for event in ({"event": "stage", "stage": "setup", "message": step.label},
                          {"event": "progress", "stage": "setup", "step": index, "total": len(self.steps)}):
                self._handle(event)
        self.state.status = CANCELLING if self._cancel_requested_at else RUNNING
        self._log(f"$ {' '.join(str(a) for a in step.argv)}\n")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs: dict = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if _WINDOWS else \
            {"start_new_session": True}
        try:
            self._proc = subprocess.Popen([str(a) for a in step.argv], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.cwd,
                                          env=env, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                          **kwargs)
        except OSError as exc:
            self._proc = None
            self._handle({"event": "error", "message": f"cannot start {step.argv[0]}: {exc.strerror or exc}",
                          "hint": "check the backend's Python path in the MILo preferences",
                          "path": str(step.argv[0])})
            finish(self.state, -1)
            return
        readers = [threading.Thread(target=self._read, args=(stream, kind), daemon=True)
                   for stream, kind in ((self._proc.stdout, "out"), (self._proc.stderr, "err"))]
        for t in readers:
            t.start()
        threading.Thread(target=self._wait_then_report_exit, args=(self._proc, readers), daemon=True).start()

    def _read(self, stream, kind: str) -> None:
        for line in iter(stream.readline, ""):
            if kind == "err":
                self._stderr_tail.append(line)
            self._log(line if kind == "out" else f"[stderr] {line}")
            self._queue.put((kind, line))
        stream.close()

    def _wait_then_report_exit(self, proc: subprocess.Popen, readers: list[threading.Thread]) -> None:
        returncode = proc.wait()
        # Leftover children (workers) would keep the pipes open and outlive the backend: kill them, so
        # the readers reach the end of the output.
        self._kill_leftovers()
        for t in readers:
            t.join(timeout=10)
        self._queue.put(("exit", returncode))  # after every line: exit is always the last item

    def _check_stall(self) -> None:
        if self.stall_timeout_s is None or self.finished or self._cancel_requested_at is not None:
            return
        silent = time.monotonic() - self._last_output
        if silent > self.stall_timeout_s:
            self._stalled_s = silent
            self._log(f"[no output for {silent:.0f} s: stopping the backend]\n")
            self.cancel()

    def _on_exit(self, returncode: int) -> list[dict]:
        self._log(f"[exit code {returncode}]\n")
        self._last_output = time.monotonic()  # the next step's silence counts from its start
        cancel = self._cancel_requested_at is not None
        last = self._index == len(self.steps) - 1
        step = self.steps[self._index]
        if self._stalled_s is not None:
            finish(self.state, returncode, "".join(self._stderr_tail), cancel_requested=True)
            self.state.status = FAILED
            self.state.message = (f"'{step.label}' printed nothing for {self._stalled_s / 60:.0f} min and was "
                                  "stopped (it looked stuck)")
            self.state.hint = ("see the log; Resume continues from the last checkpoint" if self.state.checkpoint
                               else "see the log for the last thing it did")
            return []
        if returncode == 0 and step.json and not cancel and self.state.status != FAILED and \
                not any(e.get("event") == "done" for e in self.events):
            self.state.status = FAILED
            self.state.message = f"'{step.label}' ended without reporting its results"
            self.state.hint = ("see the log: its output was not the MILo event protocol (is the chosen Python's "
                               "milo_backend a matching version?)")
            finish(self.state, returncode)
            return []
        if returncode == 0 and not last and not cancel and self.state.status != FAILED:
            self._start_step(self._index + 1)
            return []
        if returncode != 0 and not self.steps[self._index].json and len(self.steps) > 1 and not cancel:
            self.state.status = FAILED
            self.state.message = f"'{self.steps[self._index].label}' failed (exit code {returncode})"
            detail = "".join(self._stderr_tail).strip().splitlines()
            self.state.hint = (detail[-1][:300] + " - see the log") if detail else "see the log"
        finish(self.state, returncode, "".join(self._stderr_tail), cancel_requested=cancel)
        if self.state.status == CANCELLED and len(self.steps) > 1 and not self.state.hint:
            self.state.hint = "run it again to finish"
        return []

    def _signal(self, sig) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            if _WINDOWS:
                if sig is None:
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True)
                else:
                    proc.send_signal(sig)
            else:
                os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _kill_leftovers(self) -> None:
        """Children the backend left behind die with it (same process group)."""
        if self._proc is None or _WINDOWS:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _escalate_cancel(self) -> None:
        if self._cancel_requested_at is None or self.finished:
            return
        waited = time.monotonic() - self._cancel_requested_at
        if self._escalation == 0 and waited > self.cancel_grace_s:
            self._escalation = 1
            self._signal(signal.SIGTERM if not _WINDOWS else None)
        elif self._escalation == 1 and waited > self.cancel_grace_s + self.kill_grace_s:
            self._escalation = 2
            self._signal(signal.SIGKILL if not _WINDOWS else None)

    def _log(self, text: str) -> None:
        if not self.log_path:
            return
        with self._log_lock, open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(text)


def group_alive(pid: int) -> bool:
    """Whether any process of the group led by `pid` still exists (POSIX)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the jobs of this Blender session: one per kind ("reconstruct", "setup", "doctor") ------------
_jobs: dict[str, Job] = {}


def start(kind: str, job: Job) -> Job:
    current = _jobs.get(kind)
    if current is not None and not current.finished:
        raise RuntimeError(f"a {kind} job is already running")
    _jobs[kind] = job
    return job.start()


def get(kind: str) -> Job | None:
    """The running or last finished job of this kind."""
    return _jobs.get(kind)


def running(kind: str) -> Job | None:
    job = _jobs.get(kind)
    return job if job is not None and not job.finished else None


def stop_all(timeout: float = 5.0) -> None:
    """Stop every running job (extension disabled, another file loaded, Blender quitting): each gets a
    short chance to save a checkpoint, then is killed."""
    for job in list(_jobs.values()):
        if not job.finished:
            job.terminate(timeout=timeout)


# Blender quitting: the backends run in their own process groups, so nothing else would stop them. (If
# Blender is killed instead, the backend notices its closed stdout and stops itself after a checkpoint.)
atexit.register(stop_all)
