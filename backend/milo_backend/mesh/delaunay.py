"""3D Delaunay tetrahedralisation of the pivots, every tetrahedron positively oriented.

Backends (measured on 1M uniform random points, 2 CPU cores; see BENCHMARKS.md "mesh"):
- "shull": the `shull` wheel (Rust, Shewchuk's exact predicates, GPL-3): ~7 s, ~0.9 GB, and its
  tetrahedra are already positively oriented. Chosen by "auto" whenever it imports.
- "scipy": Qhull, the fallback: ~50 s, ~2.4 GB, half of its tetrahedra come out negatively
  oriented (we swap two vertices of those) and degenerate inputs may yield flat ones (dropped).

Non-finite pivots are ignored (no tetrahedron references them), exact duplicates keep one copy,
and inputs without a 3D triangulation (fewer than 4 distinct points, all coplanar) raise MiloError.
shull needs 5 distinct points: smaller or degenerate sets it refuses go to scipy.
Connectivity is not differentiable: the result is plain int64 indices into the input rows.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from milo_backend.errors import MiloError

# shull's block-parallel build: sequential anyway below ~100k points, and on 2 cores it measured
# slower than the sequential one (6.7 vs 6.5 s idle, 34 vs 21 s on a loaded machine, 1M points).
_SHULL_PARALLEL_FROM = 200_000
_SHULL_PARALLEL_MIN_CORES = 4


def shull_available() -> bool:
    try:
        import shull  # noqa: F401
    except ImportError:
        return False
    return True


def delaunay(points: torch.Tensor | np.ndarray, backend: str = "auto") -> torch.Tensor:
    """Tetrahedra (T,4) int64 of the Delaunay tetrahedralisation of `points` (P,3).

    Every row (a,b,c,d) satisfies det[b-a, c-a, d-a] > 0. Returned on the device of `points`
    (CPU for numpy input). `backend`: "auto" (shull if installed, else scipy), "shull", "scipy".
    """
    device = points.device if isinstance(points, torch.Tensor) else torch.device("cpu")
    pts = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (P,3), got {pts.shape}")
    if pts.dtype not in (np.float32, np.float64):
        pts = pts.astype(np.float64)
    finite = np.isfinite(pts).all(axis=1)
    kept = np.flatnonzero(finite) if not finite.all() else None
    if kept is not None:
        pts = pts[kept]
    if len(pts) < 4:
        raise _too_few(len(pts))

    if backend == "auto":
        backend = "shull" if shull_available() else "scipy"
    if backend == "shull":
        tets = _shull_tets(pts)
    elif backend == "scipy":
        tets = _scipy_tets(pts)
    else:
        raise ValueError(f"unknown delaunay backend {backend!r} (use auto, shull or scipy)")

    tets = torch.from_numpy(tets.astype(np.int64, copy=False))
    if kept is not None:
        tets = torch.from_numpy(kept)[tets]
    return tets.to(device)


def _too_few(n: int) -> MiloError:
    return MiloError(
        f"Cannot build a mesh: the {n} usable pivot points do not span a volume "
        "(fewer than 4 distinct points, or all on one plane).",
        hint="The scene has too few Gaussians for mesh extraction; train longer, check that the "
             "photos overlap, or raise the mesh resolution preset.")


def _shull_tets(pts: np.ndarray) -> np.ndarray:
    import shull

    try:
        parallel = len(pts) >= _SHULL_PARALLEL_FROM and _usable_cores() >= _SHULL_PARALLEL_MIN_CORES
        tri = shull.Delaunay(pts, parallel=parallel)
    except ValueError:
        # shull refuses fewer than 5 distinct points and fully degenerate sets; Qhull still
        # triangulates a lone tetrahedron and raises MiloError for the truly degenerate rest.
        return _scipy_tets(pts)
    return tri.simplices  # exact predicates: positively oriented already


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _scipy_tets(pts: np.ndarray) -> np.ndarray:
    from scipy.spatial import Delaunay, QhullError

    try:
        tri = Delaunay(pts.astype(np.float64, copy=False))
    except QhullError as e:
        raise _too_few(len(pts)) from e
    return orient_positive(pts, tri.simplices.astype(np.int64))


def orient_positive(pts: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Swap two vertices of negatively oriented tetrahedra, drop flat ones (volume exactly 0)."""
    p = pts.astype(np.float64, copy=False)
    a = p[tets[:, 0]]
    det = np.einsum("ij,ij->i", np.cross(p[tets[:, 1]] - a, p[tets[:, 2]] - a), p[tets[:, 3]] - a)
    tets = tets.copy()
    neg = det < 0
    tets[neg] = tets[neg][:, [0, 1, 3, 2]]
    return tets[det != 0]
