"""The Mip-Splatting 3D smoothing filter: the finest detail any training camera can resolve at a point.

f = sqrt(0.2) * min over the cameras that see the point of depth / focal (the world size of one pixel
there, times the std of a 0.2-pixel^2 low-pass). It is applied by `gaussians.model.apply_filter_3d` (effective scale and opacity).
Compute it with the cameras at the resolution being trained (half resolution early on).
"""
from __future__ import annotations

import math

import torch

from milo_backend.data.camera import Camera
from milo_backend.gaussians.visibility import visibility

FILTER_VARIANCE = 0.2   # pixel^2, Mip-Splatting
SCREEN_MARGIN = 0.15    # points slightly outside the image still count as seen (Mip-Splatting)


@torch.no_grad()
def compute_filter_3d(means: torch.Tensor, cameras: list[Camera], near: float = 0.0) -> torch.Tensor:
    """(N,) world-space filter std on the device of `means`.

    Points no camera sees get the largest value of the seen ones (Mip-Splatting), so they are never
    sharper than anything visible; if no point is seen at all the filter is 0 (nothing to sample).
    """
    vis = visibility(means.detach().float(), cameras, margin=SCREEN_MARGIN, near=near)
    ratio = vis.min_depth_over_focal
    seen = vis.n_views > 0
    if not bool(seen.any()):
        return torch.zeros_like(ratio)
    ratio = torch.where(seen, ratio, ratio[seen].max())
    return ratio * math.sqrt(FILTER_VARIANCE)
