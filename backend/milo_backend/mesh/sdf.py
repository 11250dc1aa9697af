"""The per-pivot SDF: depth-fusion initialisation and its occupancy parameterisation.

Sign convention everywhere: sdf > 0 outside (free space), sdf < 0 inside, values in [-1, 1].
Learned representation: occupancy = sigmoid(base + shift), `base` fixed, `shift` learnable, and
sdf = (0.5 - occupancy) * 2 / 0.99, so sdf in [-1,1] maps to occupancy in [0.005, 0.995] where the
logit is finite. Fusion resets fold the blended occupancy into `base` (see `reset_base`).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from milo_backend.data.camera import Camera
from milo_backend.events import NullReporter, Reporter

OCC_MIN, OCC_MAX = 0.005, 0.995
_SDF_TO_OCC = 0.99 / 2.0


@torch.no_grad()
def initial_sdf(cameras: Iterable[Camera], render_depth_fn: Callable[[Camera], torch.Tensor],
                pivots: torch.Tensor, tau: float, reporter: Reporter | None = None) -> torch.Tensor:
    """Depth-fusion SDF (P,) of the pivots, normalised to max |sdf| = 1 (method section 5).

    For each camera, `render_depth_fn(camera)` gives the median depth D (H,W) (or (H,W,1); 0 where
    nothing was rendered). A pivot at camera depth z > 0 projecting to pixel p inside the image with
    D(p) > 0 gets d = min((D(p) - z) / tau, 1), ignored when d < -1 (hidden far behind the surface).
    Its SDF is the mean of d over those views; pivots that no view measures get -1 (inside).
    `tau` is 0.002 x the camera extent in the method.
    """
    reporter = reporter or NullReporter()
    cameras = list(cameras)
    total = torch.zeros(pivots.shape[0], dtype=torch.float64, device=pivots.device)
    count = torch.zeros_like(total)
    points = pivots.detach().to(torch.float64)
    for i, cam in enumerate(cameras):
        depth = render_depth_fn(cam).detach()
        depth = depth.reshape(depth.shape[0], depth.shape[1]).to(points.device, torch.float64)
        if depth.shape != (cam.height, cam.width):
            raise ValueError(f"render_depth_fn returned {tuple(depth.shape)} for camera {cam.name!r}, "
                             f"expected ({cam.height}, {cam.width})")
        d, valid = _fusion_term(points, depth, cam, tau)
        total += torch.where(valid, d, 0.0)
        count += valid.double()
        reporter.progress("sdf_fusion", i + 1, len(cameras))
    sdf = torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, -1.0))
    sdf = sdf / sdf.abs().max().clamp_min(1e-12)
    return sdf.to(pivots.dtype)


def _fusion_term(points: torch.Tensor, depth: torch.Tensor, cam: Camera, tau: float):
    """(d, valid) of every point for one view; nearest pixel, so that depth is never averaged
    across a silhouette (bilinear lookup would invent surfaces between foreground and background)."""
    w2c = torch.as_tensor(cam.world_to_cam, dtype=torch.float64, device=points.device)
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    z_safe = torch.where(z > 0, z, torch.ones_like(z))
    u = cam.fx * pc[:, 0] / z_safe + cam.cx
    v = cam.fy * pc[:, 1] / z_safe + cam.cy
    inside = (z > 0) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    col = u.floor().long().clamp(0, cam.width - 1)  # pixel i covers [i, i+1): centre at i + 0.5
    row = v.floor().long().clamp(0, cam.height - 1)
    surface = depth[row, col]
    d = ((surface - z) / tau).clamp(max=1.0)
    return d, inside & (surface > 0) & (d >= -1.0)


# -- occupancy parameterisation ------------------------------------------------------------------
def occupancy_from_sdf(sdf: torch.Tensor) -> torch.Tensor:
    return 0.5 - sdf * _SDF_TO_OCC


def sdf_from_occupancy(occupancy: torch.Tensor) -> torch.Tensor:
    return (0.5 - occupancy) / _SDF_TO_OCC


def base_from_sdf(sdf: torch.Tensor) -> torch.Tensor:
    """Fixed occupancy logits `base` for an SDF in [-1,1] (the learnable shift starts at 0)."""
    return torch.logit(occupancy_from_sdf(sdf).clamp(OCC_MIN, OCC_MAX))


def occupancy(base: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(base + shift)


def sdf_from_base_shift(base: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The SDF fed to marching tetrahedra; differentiable in `shift`."""
    return sdf_from_occupancy(occupancy(base, shift))


def blended_occupancy(occ_fusion: torch.Tensor, occ_current: torch.Tensor) -> torch.Tensor:
    """Fusion reset of the method: clamp(0.4 occ_fusion + 0.6 occ_current, 0.005, 0.995)."""
    return (0.4 * occ_fusion + 0.6 * occ_current).clamp(OCC_MIN, OCC_MAX)


@torch.no_grad()
def reset_base(base: torch.Tensor, shift: torch.Tensor, sdf_fusion: torch.Tensor) -> torch.Tensor:
    """New `base` after a fusion reset, leaving `shift` (and its optimiser state) untouched:
    sigmoid(new_base + shift) equals the blended occupancy of `sdf_fusion` and the current one."""
    target = blended_occupancy(occupancy_from_sdf(sdf_fusion), occupancy(base, shift))
    return torch.logit(target) - shift
