"""Atomic file writes: write to a temporary sibling, then rename, so a crash never leaves half a file."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from milo_backend.errors import MiloError

_UMASK = os.umask(0)
os.umask(_UMASK)


# Below this much free space a failed write is taken as a full disk: writers that report errors without
# an errno (torch.save's zip writer says "unexpected pos") fail exactly when the disk has just filled up.
NEARLY_FULL_BYTES = 1 << 20


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


_FREE_SPACE_HINT = ("free some space on that disk (or choose an output folder on another disk) and run the same "
                    "command again, with --resume if a checkpoint was saved before; files already written are kept")


def require_free_space(folder: Path, needs: int, what: str) -> None:
    """Refuse to start `what` when `folder`'s disk has less than `needs` bytes free: for steps that cannot
    fail cleanly on a full disk (pycolmap's SQLite database aborts the whole process)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needs:
        raise MiloError(f"the disk holding {folder} has {_megabytes(free)} free; {what} needs about "
                        f"{_megabytes(needs)} there", hint=_FREE_SPACE_HINT, path=folder)


def disk_full_error(path: Path, written: int, needs: int | None = None) -> MiloError:
    """The user error for a full disk while writing `path`: names the folder and the space needed."""
    need = f"about {_megabytes(needs)}" if needs else f"more than {_megabytes(written)}"
    return MiloError(f"the disk holding {path.parent} is full: writing {path.name} stopped after "
                     f"{_megabytes(written)}; this run needs {need} in that folder",
                     hint=_FREE_SPACE_HINT, path=path.parent)


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, RuntimeError):  # C++ writers (torch.save) lose the errno
        try:
            return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


@contextlib.contextmanager
def atomic_path(path: str | Path, needs: int | None = None) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it replaces `path` atomically.
    A full disk becomes a `MiloError` naming the folder and `needs`, the bytes the caller expects to need
    there (when known); the old `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs are meant to be shared
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as exc:
        # judged while the partial file still fills the disk
        if _is_disk_full(exc, path.parent):
            written = tmp_path.stat().st_size if tmp_path.exists() else 0
            tmp_path.unlink(missing_ok=True)
            raise disk_full_error(path, written, needs) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(path)


def merge_json(path: str | Path, updates: dict) -> Path:
    """Write `updates` into the JSON object at `path`, keeping its other keys (two commands share
    one file: `eval OUT` and `eval OUT --gt MESH` both write mesh_eval.json). An unreadable file is
    replaced."""
    try:
        current = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = {}
    return write_json(path, {**(current if isinstance(current, dict) else {}), **updates})
