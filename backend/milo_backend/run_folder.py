"""A training run's output folder: every file name of a run, and its lock. Torch-free, so that the
Blender extension (`milo_blender/core/runs.py`) reads runs through the same names.

One job at a time writes into a run folder. A second `train` or `extract` into a folder that a running
job holds is refused with a message naming the holder. The lock is an OS file lock on `OUT/.milo.lock`,
which the kernel releases when the process ends in any way (crash, SIGKILL, power loss of a network
client), so a dead job never leaves the folder locked; the file's text (pid, host, start time) only
serves the message.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from milo_backend.errors import MiloError

LOCK_NAME = ".milo.lock"
CHECKPOINT_NAMES = ("latest.pt", "previous.pt")  # newest first: previous.pt is the generation before


@dataclass(frozen=True)
class RunFolder:
    """The paths of the files a run writes into `path` (`train`, `extract`, `eval`)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # written by train
    @property
    def gaussians(self) -> Path: return self.path / "gaussians.ply"
    @property
    def cameras(self) -> Path: return self.path / "cameras.json"
    @property
    def config(self) -> Path: return self.path / "config.json"
    @property
    def log(self) -> Path: return self.path / "log.jsonl"
    @property
    def checkpoints(self) -> Path: return self.path / "checkpoints"
    @property
    def latest_checkpoint(self) -> Path: return self.checkpoints / CHECKPOINT_NAMES[0]
    @property
    def previous_checkpoint(self) -> Path: return self.checkpoints / CHECKPOINT_NAMES[1]
    @property
    def previews(self) -> Path: return self.path / "previews"
    @property
    def loss_curve(self) -> Path: return self.previews / "loss.png"
    @property
    def triangulation(self) -> Path: return self.path / "triangulation"
    @property
    def scored_points(self) -> Path: return self.path / "scored_points.npz"  # held out of the init
    @property
    def lock(self) -> Path: return self.path / LOCK_NAME

    def preview(self, iteration: int) -> Path:
        return self.previews / f"train_{iteration:06d}.png"

    # written by extract and eval
    @property
    def mesh(self) -> Path: return self.path / "mesh.ply"
    @property
    def mesh_stats(self) -> Path: return self.path / "mesh_stats.json"
    @property
    def mesh_tsdf(self) -> Path: return self.path / "mesh_tsdf.ply"  # the TSDF-fusion baseline
    @property
    def mesh_eval(self) -> Path: return self.path / "mesh_eval.json"
    @property
    def eval(self) -> Path: return self.path / "eval.json"

    # what the folder holds
    @property
    def checkpoint(self) -> Path | None:
        """The newest checkpoint file present."""
        for p in (self.latest_checkpoint, self.previous_checkpoint):
            if p.is_file():
                return p
        return None

    @property
    def finished(self) -> bool:
        return self.gaussians.is_file()

    @property
    def resumable(self) -> bool:
        return self.checkpoint is not None

    @property
    def holds_run(self) -> bool:
        return self.finished or self.resumable

    def latest_preview(self) -> Path | None:
        previews = sorted(self.previews.glob("train_*.png"))
        return previews[-1] if previews else None


def _lock(fh: IO) -> None:
    if sys.platform == "win32":
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fh: IO) -> None:
    if sys.platform == "win32":
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def locked_run_folder(out: str | Path) -> Iterator[Path]:
    """Create `out` if needed and hold its lock for the duration of the block."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fh = open(RunFolder(out).lock, "a+", encoding="utf-8")
    try:
        _lock(fh)
    except OSError:
        with contextlib.suppress(OSError):
            fh.seek(0)
            holder = fh.read().strip()
        fh.close()
        raise MiloError(f"another MILo job is writing into {out} ({holder or 'holder unknown'})",
                        hint="wait for it to finish or cancel it, or choose another output folder",
                        path=out) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        yield out
    finally:
        with contextlib.suppress(OSError):
            _unlock(fh)
        fh.close()
