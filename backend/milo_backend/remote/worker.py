"""The worker's side of a remote job: a Ray actor that receives the inputs, runs the same `milo-backend`
command line as a local run would (a subprocess with `--json`), and answers polls with the new events, the
new stderr text and the changed output files. Torch-free; Ray itself is only needed to host it.

The subprocess dies with its actor (Linux: the parent-death signal), so a worker killed by the cluster
leaves no orphan training behind; the client then starts a new actor from the last mirrored checkpoint.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from milo_backend.remote.transfer import CHUNK_BYTES, FolderWatcher, unpack

ROOT_TOKEN = "{root}"  # in the command line: the job's folder on the worker


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the actor's process ends, however that happens."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class BackendJob:
    """One job's folder and process on a worker. Methods are called in order by the client."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="milo-job-"))
        self.archive = self.root / ".upload.tar"
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.reader: threading.Thread | None = None
        self.watchers: dict[str, FolderWatcher] = {}
        self.stderr_path = self.root / ".stderr.txt"
        self.stderr_sent = 0
        self.exit_codes: list[int] = []
        self.cancelled = False

    def info(self) -> dict:
        """Where the job runs: its folder (for the client's path map), host and process."""
        import platform

        return {"root": str(self.root), "host": platform.node(), "pid": os.getpid()}

    def receive(self, chunk: bytes) -> int:
        with open(self.archive, "ab") as fh:
            fh.write(chunk)
        return len(chunk)

    def start(self, commands: list[list[str]], outputs: list[str], threads: int) -> None:
        """Unpack the inputs, then run `commands` one after the other (stopping at the first that fails);
        `outputs` are the job folders whose changes polls report."""
        if self.archive.exists():
            unpack(self.archive, self.root)
            self.archive.unlink()
        for name in outputs:
            watcher = self.watchers[name] = FolderWatcher(self.root / name)
            watcher.mark_present()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        if threads > 0:  # what Ray granted, not the node's core count
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        commands = [[a.replace(ROOT_TOKEN, str(self.root)) for a in argv] for argv in commands]
        self.reader = threading.Thread(target=self._run, args=(commands, env), daemon=True)
        self.reader.start()

    def _run(self, commands: list[list[str]], env: dict) -> None:
        with open(self.stderr_path, "ab") as err:
            for argv in commands:
                if self.cancelled:  # stopped between two commands
                    self.exit_codes.append(130)
                    break
                self.proc = subprocess.Popen([sys.executable, "-m", "milo_backend", *argv, "--json"],
                                             cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=err, text=True, encoding="utf-8",
                                             errors="replace", preexec_fn=_die_with_parent
                                             if sys.platform.startswith("linux") else None)
                for line in self.proc.stdout:
                    self.lines.append(line.rstrip("\n"))
                code = self.proc.wait()
                self.exit_codes.append(code)
                if code != 0:
                    break

    def poll(self, cursor: int, budget: int = CHUNK_BYTES) -> dict:
        """Events from index `cursor` on, new stderr text, changed output files, and the exit code once
        every command has ended and its output has been read (None before)."""
        finished = self.reader is not None and not self.reader.is_alive()
        events = self.lines[cursor:]  # before the files: a file an event names is on disk by then
        files, more = [], False
        for name, watcher in self.watchers.items():
            pieces, waiting = watcher.changes(budget)
            budget -= sum(len(p["data"]) for p in pieces)
            files += [{**p, "folder": name} for p in pieces]
            more = more or waiting
        stderr = ""
        if self.stderr_path.exists():
            with open(self.stderr_path, "rb") as fh:
                fh.seek(self.stderr_sent)
                data = fh.read()
            self.stderr_sent += len(data)
            stderr = data.decode("utf-8", errors="replace")
        code = None
        if finished:
            code = next((c for c in self.exit_codes if c != 0), 0) if self.exit_codes else 1
        return {"events": events, "files": files, "more": more, "stderr": stderr, "exit": code}

    def cancel(self) -> bool:
        """Ask the running command to stop as Ctrl-C would: it saves a checkpoint and exits 130."""
        self.cancelled = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return True
        return False

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)
