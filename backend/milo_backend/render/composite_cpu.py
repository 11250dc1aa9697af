"""The compiled CPU compositor (`csrc/composite_cpu.cpp`): the blending of `composite.py`, one tile per task.

The torch compositor is vectorised over (pixel, Gaussian) pairs; on the CPU it spends most of its time
building, sorting and gathering those pairs. The C++ loop walks each tile's Gaussians front to back over
their pixel boxes instead, keeps the pixel state in the cache and stops a pixel once it is opaque, with the
same semantics and outputs (tested against the torch path, which stays the reference and the fallback).

It is built once per machine with the system's C++ compiler through torch's extension builder (about a
minute; cached by torch under ~/.cache/torch_extensions). Without a compiler, or with
`MILO_CPU_COMPOSITOR=torch`, the torch compositor runs, and `doctor` says which one is active and why.
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

import torch
from torch.autograd.function import once_differentiable

ENV = "MILO_CPU_COMPOSITOR"   # "torch": the reference compositor; anything else: the compiled one if it builds
SOURCE = Path(__file__).parent / "csrc" / "composite_cpu.cpp"
MODULE_NAME = "milo_composite_cpu"


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
    """torch's builder runs `ninja` from PATH; a venv's own ninja is not there unless the venv is active."""
    if shutil.which("ninja"):
        return True
    scripts = Path(sys.executable).parent
    if shutil.which("ninja", path=str(scripts)):
        os.environ["PATH"] = str(scripts) + os.pathsep + os.environ.get("PATH", "")
        return True
    return False


def _build():
    from torch.utils.cpp_extension import load
    # OpenMP spreads the tiles over torch's threads; Apple's clang has no -fopenmp (one thread there)
    openmp = sys.platform.startswith("linux")
    # torch's builder prints to stdout, which carries the JSON events
    with contextlib.redirect_stdout(sys.stderr):
        return load(name=MODULE_NAME, sources=[str(SOURCE)], extra_cflags=["-O3"] + (["-fopenmp"] if openmp else []),
                    extra_ldflags=["-fopenmp"] if openmp else [], verbose=False)


def predict() -> KernelState:
    """Which CPU compositor would run, without building anything (`doctor`)."""
    if _STATE is not None:
        return _STATE
    if os.environ.get(ENV, "").lower() == "torch":
        return KernelState("torch", f"{ENV}=torch asks for the reference compositor")
    if _compiler() is None:
        return KernelState("torch", "no C++ compiler found (install g++ or clang, or set CXX): the torch "
                                    "compositor runs (same pictures, several times slower)")
    if not _ninja_on_path():
        return KernelState("torch", "ninja is missing (pip install ninja): the torch compositor runs")
    return KernelState("compiled", "a C++ compiler is here: the compiled CPU compositor is built at first use "
                                   "(about a minute, once per machine)")


def state(say: Callable[[str], None] | None = None) -> KernelState:
    """Which CPU compositor this process uses; the first call builds or loads the compiled one."""
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
        _MODULE = with_heartbeat(_build, say, "Building the CPU compositor")
    except Exception as exc:  # noqa: BLE001 - a failed build means the torch path, said plainly
        _STATE = KernelState("torch", f"the CPU compositor failed to build ({type(exc).__name__}: "
                                      f"{str(exc)[:300]}): the torch compositor runs")
        say(f"Warning: {_STATE.why}")
        return _STATE
    seconds = time.monotonic() - start
    if seconds > 5:
        say(f"Built the CPU compositor in {seconds:.0f} s (once per machine)")
    _STATE = KernelState("compiled", "the compiled CPU compositor is built and loads")
    return _STATE


def available() -> bool:
    return not _FORCE_TORCH and state().active == "compiled"


@contextlib.contextmanager
def reference_compositor():
    """The torch compositor inside this block, whatever is built (benchmarks run both side by side)."""
    global _FORCE_TORCH
    before, _FORCE_TORCH = _FORCE_TORCH, True
    try:
        yield
    finally:
        _FORCE_TORCH = before


def _constants():
    from milo_backend.render.composite import ALPHA_MAX, MEDIAN_TRANSMITTANCE, TRANSMITTANCE_MIN
    from milo_backend.render.project import ALPHA_THRESHOLD
    return ALPHA_MAX, ALPHA_THRESHOLD, TRANSMITTANCE_MIN, MEDIAN_TRANSMITTANCE


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, radii, tiles, width, height, with_stats):
        args = (means2d.detach().contiguous(), conics.detach().contiguous(), opacities.detach().contiguous(),
                features.detach().contiguous(), radii.to(torch.float64).contiguous(), tiles.offsets.contiguous(),
                tiles.flatten_ids.contiguous(), tiles.tiles_x, tiles.tiles_y, tiles.tile_size, width, height)
        feat, alpha, t_final, median, max_id, last, entry_w, entry_touched = _MODULE.forward(
            *args, with_stats, *_constants())
        ctx.args = args
        ctx.save_for_backward(t_final, last)
        n = means2d.shape[0]
        outs = (feat, alpha, median)
        if with_stats:
            ids = tiles.flatten_ids
            weight_sum = torch.zeros(n, dtype=alpha.dtype).index_add_(0, ids, entry_w)
            touched = torch.zeros(n, dtype=torch.int64).index_add_(0, ids, entry_touched)
            outs += (max_id, weight_sum, touched)
        ctx.mark_non_differentiable(*outs[2:])
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_feat, grad_alpha, *_):
        t_final, last = ctx.saved_tensors
        args = ctx.args
        entry = _MODULE.backward(*args, *_constants(), t_final, last, grad_feat.contiguous(),
                                 grad_alpha.contiguous())
        d = args[3].shape[1]
        grads = torch.zeros(args[0].shape[0], d + 6, dtype=entry.dtype).index_add_(0, args[6], entry)
        return grads[:, d:d + 2], grads[:, d + 2:d + 5], grads[:, d + 5], grads[:, :d], None, None, None, None, None


def composite_cpu(means2d, conics, opacities, features, radii, tiles, width: int, height: int,
                  with_stats: bool):
    """(features (H,W,D) or None, alpha (H,W,1), median_id, max_id, weight_sum, touched), as `composite`."""
    feats = features if features is not None else means2d.new_zeros(means2d.shape[0], 0)
    outs = _CompositeCPU.apply(means2d, conics, opacities, feats, radii, tiles, width, height, with_stats)
    feat, alpha, median = outs[:3]
    max_id, weight_sum, touched = outs[3:] if with_stats else (None, None, None)
    return (None if features is None else feat.reshape(height, width, -1), alpha.reshape(height, width, 1),
            median.reshape(height, width), None if max_id is None else max_id.reshape(height, width),
            weight_sum, touched)
