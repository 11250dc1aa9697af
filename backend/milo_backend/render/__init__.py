"""One Gaussian renderer interface with two implementations behind it.

    out = render(splats, camera, sh_degree=3, backend="auto")

- `backend="torch"`: pure PyTorch, differentiable, tiled; runs on CPU and CUDA (`torch_raster.py`).
- `backend="gsplat"`: gsplat's CUDA rasteriser (`gsplat_raster.py`), only with CUDA tensors.
- `backend="auto"`: gsplat when the tensors are on CUDA and gsplat's kernels load, else torch.
Both return the same `RenderOutput`, so losses, densification and the mesh code never care which ran.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class Splats(NamedTuple):
    """Activated Gaussian parameters, as renderers consume them (3D smoothing filter applied)."""

    means: torch.Tensor      # (N,3) world
    quats: torch.Tensor      # (N,4) unit, wxyz
    scales: torch.Tensor     # (N,3) standard deviations
    opacities: torch.Tensor  # (N,)  in [0,1]
    sh: torch.Tensor         # (N,K,3) SH coefficients, K = (deg_max+1)^2 (K=1: DC only)


@dataclass
class RenderOutput:
    color: torch.Tensor           # (H,W,3) premultiplied colour + (1-alpha) * background
    alpha: torch.Tensor           # (H,W,1) accumulated opacity
    depth_median: torch.Tensor    # (H,W,1) camera z where transmittance crosses MEDIAN_TRANSMITTANCE (0 where never)
    depth_expected: torch.Tensor  # (H,W,1) sum(w z) / sum(w)  (0 where alpha ~ 0)
    normals: torch.Tensor         # (H,W,3) view-space unit normals (composited, renormalised; 0 where empty)
    means2d: torch.Tensor         # (N,2) projected centres in pixels; grad (retain_grad) drives densification
    radii: torch.Tensor           # (N,) int pixel radius, 0 = not visible in this view
    # per-Gaussian statistics, only with `with_stats=True` (no gradients):
    weight_sum: torch.Tensor | None = None        # (N,) sum over pixels of alpha*T
    pixels_touched: torch.Tensor | None = None    # (N,) pixels with alpha*T > 0 (alpha >= 1/255)
    pixels_dominated: torch.Tensor | None = None  # (N,) pixels where it is the max-weight contributor
    max_weight_id: torch.Tensor | None = None     # (H,W) long, id of the max-weight Gaussian, -1 if none


def render(splats: Splats, camera, *, sh_degree: int, background: torch.Tensor | None = None,
           backend: str = "auto", with_stats: bool = False) -> RenderOutput:
    """Render `splats` as seen by `camera` (a `milo_backend.data.camera.Camera`)."""
    if backend == "auto":
        backend = "gsplat" if splats.means.is_cuda and gsplat_available() else "torch"
    if backend == "gsplat":
        from milo_backend.render.gsplat_raster import render_gsplat
        return render_gsplat(splats, camera, sh_degree=sh_degree, background=background,
                             with_stats=with_stats)
    if backend == "torch":
        from milo_backend.render.torch_raster import render_torch
        return render_torch(splats, camera, sh_degree=sh_degree, background=background,
                            with_stats=with_stats)
    raise ValueError(f"unknown render backend {backend!r} (use auto, torch or gsplat)")


def gsplat_available() -> bool:
    """True when CUDA is present and gsplat's kernels load; a first build says so while it runs
    (`gpu_kernels.active`), and a machine that cannot build never tries."""
    if not torch.cuda.is_available():
        return False
    from milo_backend import gpu_kernels
    return gpu_kernels.active("gsplat").active == "gsplat"


