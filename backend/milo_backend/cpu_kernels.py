"""The compiled CPU kernels (`csrc/`): built once per machine, with the torch code as reference and fallback.

The hot loops of a CPU run are written in C++, each with the same semantics and outputs as its torch
reference (tested against it):
- the Gaussian compositor (`render/composite_cpu.py`, reference `render/composite.py`): the torch code is
  vectorised over (pixel, Gaussian) pairs and spends most of its time building, sorting and gathering
  them; the C++ loop walks each tile's Gaussians front to back over their pixel boxes and stops a pixel
  once it is opaque;
- the mesh z-buffer (`mesh/raster_torch.visible_faces`): one loop over the faces' pixel boxes instead of
  a scatter over every (face, pixel) candidate;
- the faces' neighbours for the silhouette antialiasing (`mesh/raster_torch._wing_vertices`): per-vertex
  face lists instead of a sort of every edge near the visible faces.
(Marching tetrahedra's connectivity was tried in C++ too and measured no faster than its torch pass: 33 ms
either way for 1M tetrahedra, so it stays in torch.)

They are built once per machine with the system's C++ compiler through torch's extension builder (about
a minute on 2 cores; cached under ~/.cache/milo_backend/kernels). Without a compiler, or with
`MILO_CPU_KERNELS=torch`, the torch code runs, and `doctor` says which is active and why.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ENV = "MILO_CPU_KERNELS"   # "torch": the torch references; anything else: the compiled kernels if they build
SOURCES = [Path(__file__).parent / "csrc" / name for name in ("module.cpp", "composite.cpp", "zbuffer.cpp",
                                                                 "wing_vertices.cpp")]
MODULE_NAME = "milo_cpu_kernels"


@dataclass(frozen=True)
class KernelState:
    active: str   # "compiled" | "torch"
    why: str


_STATE: KernelState | None = None
_MODULE = None
_FORCE_TORCH = False


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _ninja_on_path() -> bool:
    """torch's builder runs `ninja` from PATH. The interpreter's own ninja (our dependency) goes first:
    two ninja versions keep build logs that each other reads as stale, so a build made from an activated
    venv (its ninja) was redone from scratch, about a minute, when Blender or a script ran the same
    venv's python directly (the system's ninja), and again on the way back."""
    scripts = Path(sys.executable).parent
    own = shutil.which("ninja", path=str(scripts))
    if own:
        if shutil.which("ninja") != own:
            os.environ["PATH"] = str(scripts) + os.pathsep + os.environ.get("PATH", "")
        return True
    return shutil.which("ninja") is not None


def build_directory(flags: list[str]) -> Path:
    """Where this build lives: named by a digest of the sources, the flags and torch's version and folder,
    under the user's cache (`MILO_KERNEL_CACHE` to move it). The sources are compiled from a copy there, so
    two copies of the code run by one torch (a checkout and the GPU kit's folder) share one build, and a
    changed source gets a folder of its own. Two venvs get a folder each: the build file names torch's
    include folders, so with one folder each venv rebuilt (about a minute) whenever the other had built."""
    import hashlib

    import torch
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(flags + [torch.__version__, sys.version, torch_folder()]).encode())
    return kernel_cache() / f"{MODULE_NAME}_{digest.hexdigest()[:16]}"


def torch_folder() -> str:
    import torch
    return str(Path(torch.__file__).resolve().parent)


def kernel_cache() -> Path:
    """The folder of all builds: `MILO_KERNEL_CACHE`, else the user's cache folder."""
    if os.environ.get("MILO_KERNEL_CACHE"):
        return Path(os.environ["MILO_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "milo_backend" / "kernels"


def _flags() -> tuple[list[str], list[str]]:
    # OpenMP spreads the work over torch's threads; Apple's clang has no -fopenmp (one thread there)
    openmp = sys.platform.startswith("linux")
    return ["-O3"] + (["-fopenmp"] if openmp else []), ["-fopenmp"] if openmp else []


def _build(say: Callable[[str], None]):
    from torch.utils.cpp_extension import load

    from milo_backend.atomic import atomic_path
    cflags, ldflags = _flags()
    folder = build_directory(cflags + ldflags)
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob(f"{folder.name}*.so")) and not any(folder.glob(f"{folder.name}*.pyd")):
        say(f"Building the CPU kernels once for this machine (about a minute on 2 cores) in {folder}")
    sources = []
    for path in SOURCES:
        copy = folder / path.name
        if not copy.is_file() or copy.read_bytes() != path.read_bytes():
            with atomic_path(copy) as tmp:  # another process may be compiling the same copy
                tmp.write_bytes(path.read_bytes())
        sources.append(str(copy))
    # torch's builder prints to stdout, which carries the JSON events
    with contextlib.redirect_stdout(sys.stderr):
        return load(name=folder.name, sources=sources, extra_cflags=cflags, extra_ldflags=ldflags,
                    build_directory=str(folder), verbose=False)


def predict() -> KernelState:
    """Whether the compiled kernels would run, without building anything (`doctor`)."""
    if _STATE is not None:
        return _STATE
    if os.environ.get(ENV, "").lower() == "torch":
        return KernelState("torch", f"{ENV}=torch asks for the torch references")
    if _compiler() is None:
        return KernelState("torch", "no C++ compiler found (install g++ or clang, or set CXX): the torch "
                                    "code runs (same results, slower)")
    if not _ninja_on_path():
        return KernelState("torch", "ninja is missing (pip install ninja): the torch code runs")
    return KernelState("compiled", "a C++ compiler is here: the compiled CPU kernels are built at first use "
                                   "(about a minute, once per machine)")


def state(say: Callable[[str], None] | None = None) -> KernelState:
    """Whether this process uses the compiled kernels; the first call builds or loads them."""
    global _STATE, _MODULE
    if _STATE is not None:
        return _STATE
    plan = predict()
    if plan.active != "compiled":
        _STATE = plan
        return _STATE
    from milo_backend.gpu_kernels import with_heartbeat
    say = say or _stderr
    start = time.monotonic()
    try:
        _MODULE = with_heartbeat(lambda: _build(say), say, "Building the CPU kernels")
    except Exception as exc:  # noqa: BLE001 - a failed build means the torch path, said plainly
        _STATE = KernelState("torch", f"the CPU kernels failed to build ({type(exc).__name__}: "
                                      f"{str(exc)[:300]}): the torch code runs")
        say(f"Warning: {_STATE.why}")
        return _STATE
    seconds = time.monotonic() - start
    if seconds > 5:
        say(f"Built the CPU kernels in {seconds:.0f} s")
    _STATE = KernelState("compiled", "the compiled CPU kernels are built and load")
    return _STATE


def available() -> bool:
    return not _FORCE_TORCH and state().active == "compiled"


def module():
    """The loaded extension (call only where `available()`)."""
    return _MODULE


@contextlib.contextmanager
def reference_code():
    """The torch references inside this block, whatever is built (benchmarks run both side by side)."""
    global _FORCE_TORCH
    before, _FORCE_TORCH = _FORCE_TORCH, True
    try:
        yield
    finally:
        _FORCE_TORCH = before
