"""Which cameras see which points: one chunked pass over (points x cameras) shared by the 3D filter
(closest sampling distance) and random initialisation (how many views see a point)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from milo_backend.data.camera import Camera

# elements of the (points x cameras) work arrays per chunk: bounds memory for millions of points
CHUNK_ELEMENTS = 1 << 22


class Visibility(NamedTuple):
    n_views: torch.Tensor              # (N,) long: cameras that see the point
    min_depth_over_focal: torch.Tensor  # (N,) min over those cameras of z / max(fx, fy); inf if none


def camera_arrays(cameras: list[Camera], device, dtype=torch.float32):
    """Stacked world_to_cam rotations (C,3,3), translations (C,3) and fx, fy, cx, cy, W, H (C,6)."""
    w2c = torch.as_tensor(np.stack([c.world_to_cam for c in cameras]), dtype=dtype, device=device)
    intr = torch.tensor([[c.fx, c.fy, c.cx, c.cy, c.width, c.height] for c in cameras], dtype=dtype,
                        device=device)
    return w2c[:, :3, :3], w2c[:, :3, 3], intr


@torch.no_grad()
def visibility(points: torch.Tensor, cameras: list[Camera], margin: float = 0.0, near: float = 0.0,
               chunk_elements: int = CHUNK_ELEMENTS) -> Visibility:
    """A camera sees a point when its depth z > `near` and it projects inside the image widened by
    `margin` (a fraction of the width/height on each side)."""
    points = points.detach()
    rot, trans, intr = camera_arrays(cameras, points.device, points.dtype)
    fx, fy, cx, cy, w, h = intr.unbind(1)
    focal = torch.maximum(fx, fy)
    n = points.shape[0]
    n_views = torch.zeros(n, dtype=torch.long, device=points.device)
    min_ratio = torch.full((n,), float("inf"), dtype=points.dtype, device=points.device)
    step = max(1, chunk_elements // max(len(cameras), 1))
    for start in range(0, n, step):
        p = points[start:start + step]
        pc = torch.einsum("cij,nj->nci", rot, p) + trans  # (n,C,3)
        z = pc[..., 2]
        zs = z.clamp_min(1e-12)  # only used where z > near >= 0
        u = fx * pc[..., 0] / zs + cx
        v = fy * pc[..., 1] / zs + cy
        seen = ((z > near) & (u >= -margin * w) & (u <= (1 + margin) * w)
                & (v >= -margin * h) & (v <= (1 + margin) * h))
        n_views[start:start + step] = seen.sum(1)
        ratio = torch.where(seen, z / focal, torch.full_like(z, float("inf")))
        min_ratio[start:start + step] = ratio.min(1).values
    return Visibility(n_views, min_ratio)
