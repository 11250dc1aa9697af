"""Moving a job's folders between this computer and a worker, with no Ray in it (so it is tested alone).

- Inputs go out as one tar stream cut into chunks of a bounded size (`pack`), so photos larger than the
  cluster's object store pass through it a chunk at a time.
- Outputs come back while the job runs: the worker's `FolderWatcher` hands out what changed since the last
  poll (new or rewritten files, and the new lines of append-only logs), at most `budget` bytes a poll; this
  computer's `FolderMirror` writes them through a temporary file and a rename, so a file in OUT is always
  whole (previews appear while training, a checkpoint is never half there).
- Paths written inside JSON files and events name the worker's folders there and this computer's here
  (`PathMap`), so `cameras.json`, the log and the events' artifact paths stay usable on both sides.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from milo_backend.run_folder import LOCK_NAME

CHUNK_BYTES = 32 << 20
APPEND_ONLY = (".jsonl",)     # the run log only grows: lines are sent once, never the whole file again
PART_SUFFIX = ".milo-part"    # a file on its way here
NEVER_SENT = (LOCK_NAME,)     # the worker's own lock stays there; this computer holds its own


def _skipped(name: str) -> bool:
    """Files never sent: the run's lock, and files being written (ours, and atomic_path's `.NAME.x.tmp.EXT`)."""
    return name in NEVER_SENT or name.endswith(PART_SUFFIX) or (name.startswith(".") and ".tmp" in name)


# -- paths named inside files and events --------------------------------------------------------------
@dataclass(frozen=True)
class PathMap:
    """Pairs of (folder on the worker, the same folder here), both absolute."""

    pairs: tuple[tuple[str, str], ...]

    def to_local(self, value: Any) -> Any:
        """`value` (an event, a parsed JSON file) with every worker path replaced by the local one, also
        inside messages ("Loading /tmp/milo-job-x/in0/photos" reads "Loading /home/me/photos" here)."""
        def swap(s: str) -> str:
            for src, dst in self.pairs:
                s = s.replace(src, dst)
            return s
        return _map_strings(value, swap)

    def to_remote(self, value: Any) -> Any:
        """The reverse, for JSON files sent to the worker. Local paths may be relative to this process's
        working folder (a run trained with `train photos runs/x` names `runs/x/sfm/images/...`)."""
        def swap(s: str) -> str:
            if "/" not in s and os.sep not in s:
                return s
            path = os.path.abspath(s)
            for remote, local in self.pairs:
                if is_inside(path, local):
                    return remote + path[len(local):]
            return s
        return _map_strings(value, swap)


def is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def map_json_bytes(data: bytes, fn: Callable[[Any], Any], lines: bool) -> bytes:
    """A JSON file (or JSON-lines text) with `fn` applied to its values; text that does not parse is kept."""
    def one(text: str) -> str:
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, ValueError):
            return text
        mapped = fn(value)
        if mapped == value:  # untouched files stay byte for byte as written
            return text
        return json.dumps(mapped, ensure_ascii=False, indent=2 if "\n" in text.strip() else None) + (
            "\n" if text.endswith("\n") else "")
    text = data.decode("utf-8", errors="surrogateescape")
    if lines:
        out = "\n".join(one(line) if line.strip() else line for line in text.split("\n"))
    else:
        out = one(text)
    return out.encode("utf-8", errors="surrogateescape")


# -- inputs: folders to the worker --------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """A file or folder of this computer, sent as `arcname` (a relative path in the job's folder).
    `only`: send just these files of the folder (absolute paths); `skip`: top-level names left out."""

    local: Path
    arcname: str
    only: frozenset[str] | None = None
    skip: tuple[str, ...] = ()


class _ChunkWriter:
    """A write-only file that hands every `size` bytes to `send` (bounded memory for any archive)."""

    def __init__(self, send: Callable[[bytes], None], size: int):
        self.send, self.size, self.buf, self.sent = send, size, bytearray(), 0

    def write(self, data) -> int:
        self.buf += data
        while len(self.buf) >= self.size:
            self.send(bytes(self.buf[:self.size]))
            del self.buf[:self.size]
            self.sent += self.size
        return len(data)

    def flush(self) -> None:
        if self.buf:
            self.sent += len(self.buf)
            self.send(bytes(self.buf))
            self.buf.clear()


def _files(upload: Upload) -> Iterable[tuple[Path, str]]:
    root = upload.local
    if root.is_file():
        yield root, upload.arcname
        return
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in upload.skip]
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if _skipped(name) or (here == root and name in upload.skip):
                continue
            if upload.only is not None and str(path.resolve()) not in upload.only:
                continue
            yield path, f"{upload.arcname}/{path.relative_to(root).as_posix()}"


def pack(uploads: Iterable[Upload], send: Callable[[bytes], None], path_map: PathMap | None = None,
         chunk: int = CHUNK_BYTES) -> int:
    """Send `uploads` as one tar stream in chunks of `chunk` bytes; JSON files have their paths mapped to
    the worker's. Returns the bytes sent."""
    writer = _ChunkWriter(send, chunk)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for upload in uploads:
            for path, arcname in _files(upload):
                if path_map is not None and path.suffix == ".json":
                    data = map_json_bytes(path.read_bytes(), path_map.to_remote, lines=False)
                    info = tar.gettarinfo(str(path), arcname)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.add(str(path), arcname, recursive=False)
    writer.flush()
    return writer.sent


def unpack(archive: Path, dest: Path) -> None:
    """Extract a `pack` stream written to `archive` into `dest` (members may not leave it)."""
    with tarfile.open(archive, mode="r:") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.11.4: the same check by hand
            for member in tar.getmembers():
                target = (dest / member.name).resolve()
                if not is_inside(str(target), str(dest.resolve())) or member.issym() or member.islnk():
                    raise ValueError(f"archive member {member.name!r} leaves the job folder")
            tar.extractall(dest)


# -- outputs: the worker's folder, mirrored here while the job runs ---------------------------------
@dataclass
class FolderWatcher:
    """On the worker: the parts of `root`'s files not yet sent. `sent` maps a relative path to the
    (mtime_ns, size) seen and the bytes of it sent so far."""

    root: Path
    sent: dict[str, tuple[tuple[int, int], int]] = field(default_factory=dict)

    def mark_present(self) -> None:
        """The files there now came from this computer (an uploaded run folder): do not send them back."""
        for rel, path in self._scan():
            st = path.stat()
            self.sent[rel] = ((st.st_mtime_ns, st.st_size), st.st_size)

    def _scan(self):
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if _skipped(name):
                    continue
                path = Path(dirpath) / name
                yield path.relative_to(self.root).as_posix(), path

    def changes(self, budget: int = CHUNK_BYTES) -> tuple[list[dict], bool]:
        """Pieces of changed files, at most about `budget` bytes, and files removed since (`deleted`); and
        whether more is waiting."""
        pieces, more, seen = [], False, set()
        for rel, path in self._scan():
            seen.add(rel)
            try:
                st = path.stat()
            except FileNotFoundError:  # replaced or removed between the listing and now
                continue
            key = (st.st_mtime_ns, st.st_size)
            prev_key, done = self.sent.get(rel, (None, 0))
            append = rel.endswith(APPEND_ONLY)
            if prev_key == key and done >= st.st_size:
                continue
            if prev_key == key or (append and prev_key is not None and st.st_size >= done):
                start = done  # the rest of a piece sent in part, or the new lines of a log
            else:
                start = 0
            if budget <= 0:
                more = True
                break
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(min(st.st_size - start, budget))
            except FileNotFoundError:
                continue
            if append:  # whole lines only, so that each one can be mapped as JSON here
                data = data[:data.rfind(b"\n") + 1]
                if not data:
                    continue
            end = start + len(data)
            final = end >= st.st_size
            pieces.append({"path": rel, "offset": start, "data": data, "final": final, "append": append})
            self.sent[rel] = (key, end)
            budget -= len(data)
            more = more or not final
        if not more:  # the listing was complete: what is not there any more was removed (or renamed)
            for rel in [r for r in self.sent if r not in seen]:
                del self.sent[rel]
                pieces.append({"path": rel, "offset": 0, "data": b"", "final": True, "append": False,
                               "deleted": True})
        return pieces, more


class FolderMirror:
    """Here: applies a watcher's pieces under `root`. A rewritten file is assembled in a `.milo-part`
    sibling and renamed over the old one when whole; logs are appended to in place, line by line."""

    def __init__(self, root: Path, path_map: PathMap):
        self.root, self.path_map = Path(root), path_map

    def apply(self, piece: dict) -> Path:
        rel = piece["path"]
        dest = (self.root / rel).resolve()
        if not is_inside(str(dest), str(self.root.resolve())):
            raise ValueError(f"the worker sent a path outside the output folder: {rel!r}")
        if piece.get("deleted"):
            dest.unlink(missing_ok=True)
            dest.with_name(dest.name + PART_SUFFIX).unlink(missing_ok=True)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = piece["data"]
        if piece["append"]:
            data = map_json_bytes(data, self.path_map.to_local, lines=True)
            with open(dest, "wb" if piece["offset"] == 0 else "ab") as fh:
                fh.write(data)
            return dest
        part = dest.with_name(dest.name + PART_SUFFIX)
        with open(part, "wb" if piece["offset"] == 0 else "ab") as fh:
            fh.write(data)
        if piece["final"]:
            if dest.suffix == ".json":
                part.write_bytes(map_json_bytes(part.read_bytes(), self.path_map.to_local, lines=False))
            os.replace(part, dest)
        return dest
