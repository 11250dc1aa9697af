"""The run folder's lock: one job at a time writes into a run folder.

A second `train` or `extract` into a folder that a running job holds is refused with a message naming
the holder. The lock is an OS file lock on `OUT/.milo.lock`, which the kernel releases when the process
ends in any way (crash, SIGKILL, power loss of a network client), so a dead job never leaves the folder
locked; the file's text (pid, host, start time) only serves the message.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Iterator

from milo_backend.errors import MiloError

LOCK_NAME = ".milo.lock"


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
    fh = open(out / LOCK_NAME, "a+", encoding="utf-8")
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
