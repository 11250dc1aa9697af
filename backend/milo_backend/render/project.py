"""Shared Gaussian maths: rotations, 3D covariances, EWA projection to the image, view-space normals.

Pure torch and differentiable; follows gsplat 1.5.3's "classic" projection so that both renderers agree:
- EWA: Sigma2D = J W Sigma W^T J^T + 0.3 I (the 0.3 px low-pass of 3DGS), with the same clamping of
  the Jacobian's x/z, y/z to 1.3 x the field of view as 3DGS/gsplat;
- Gaussians with camera z < `NEAR_PLANE` are culled;
- the bounding radius is opacity-aware: extent k = min(3.33, sqrt(2 ln(255 o))) standard deviations,
  per axis rx = ceil(k sqrt(Sigma2D_xx)), ry = ceil(k sqrt(Sigma2D_yy)). This is exactly the region where
  alpha = o exp(-d^2/2) >= 1/255 (so no contribution is lost, unlike a plain 3-sigma radius, which drops
  the 3..3.33 sigma rim of opaque Gaussians), and what gsplat's kernel computes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from milo_backend.quaternions import quat_to_rotmat  # noqa: F401 (re-exported)

NEAR_PLANE = 0.01
EPS2D = 0.3                 # px^2 added to the 2D covariance (3DGS low-pass filter)
ALPHA_THRESHOLD = 1.0 / 255.0
MAX_EXTENT = 3.33           # gsplat's bound on the radius in standard deviations


class Projection(NamedTuple):
    """Per-Gaussian screen-space quantities for one camera (all (N, ...); radii 0 = not drawn)."""

    means2d: torch.Tensor   # (N,2) pixel coordinates of the centres
    conics: torch.Tensor    # (N,3) inverse 2D covariance, upper triangle (a, b, c)
    depths: torch.Tensor    # (N,)  camera z of the centres
    radii: torch.Tensor     # (N,2) int32 bounding half-sizes in pixels (x, y); 0 = culled


def camera_tensors(camera, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(world_to_cam (4,4), K (3,3)) of a `Camera` as tensors."""
    viewmat = torch.as_tensor(np.asarray(camera.world_to_cam, dtype=np.float64), device=device).to(dtype)
    K = torch.as_tensor(camera.K, device=device).to(dtype)
    return viewmat, K


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances R diag(s^2) R^T, (N,3,3)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def to_camera(points: torch.Tensor, viewmat: torch.Tensor) -> torch.Tensor:
    return points @ viewmat[:3, :3].T + viewmat[:3, 3]


def project_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                      opacities: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
                      width: int, height: int) -> Projection:
    """EWA splatting of 3D Gaussians into a pinhole camera (see the module notes)."""
    R = viewmat[:3, :3]
    p = to_camera(means, viewmat)
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Culled Gaussians still flow through the maths (their outputs are masked by radius 0), so keep
    # their z away from 0 to avoid inf/nan that would poison gradients through torch.where.
    visible_z = z >= NEAR_PLANE
    zs = torch.where(visible_z, z, torch.ones_like(z))
    u = fx * x / zs + cx
    v = fy * y / zs + cy
    # 3DGS/gsplat clamp the Jacobian's view angles to 1.3x the frustum so off-screen splats stay sane.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = zs * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / zs))
    ty = zs * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / zs))
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / (zs * zs),
                     zero, fy / zs, -fy * ty / (zs * zs)], dim=-1).reshape(-1, 2, 3)
    cov_cam = R @ covariance_3d(quats, scales) @ R.T
    cov2d = J @ cov_cam @ J.transpose(-1, -2)
    a = cov2d[:, 0, 0] + EPS2D
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + EPS2D
    det = a * c - b * b
    ok = visible_z & (det > 0) & (opacities >= ALPHA_THRESHOLD)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    with torch.no_grad():
        extent = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extent = extent.clamp_max(MAX_EXTENT)
        rx = torch.ceil(extent * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c.clamp_min(0)))
        on_screen = (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height)
        keep = ok & on_screen & ((rx > 0) | (ry > 0))
        radii = torch.stack([rx, ry], dim=-1).where(keep[:, None], torch.zeros_like(rx)[:, None])
        radii = radii.to(torch.int32)
    return Projection(torch.stack([u, v], dim=-1), conics, z, radii)


def view_normals(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                 viewmat: torch.Tensor) -> torch.Tensor:
    """View-space unit normals (N,3): each Gaussian's shortest axis, flipped to face the camera."""
    R = viewmat[:3, :3]
    axes = quat_to_rotmat(quats)                           # columns = principal axes (world)
    shortest = torch.argmin(scales, dim=-1)                # the choice itself carries no gradient
    n_world = torch.gather(axes, 2, shortest[:, None, None].expand(-1, 3, 1)).squeeze(-1)
    n_view = n_world @ R.T
    p = to_camera(means, viewmat)
    # Facing the camera (at the view-space origin) means pointing against the centre's position.
    flip = (n_view * p).sum(-1, keepdim=True) > 0
    return torch.where(flip, -n_view, n_view)


def camera_center(viewmat: torch.Tensor) -> torch.Tensor:
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    return -R.T @ t


def sh_view_dirs(means: torch.Tensor, viewmat: torch.Tensor) -> torch.Tensor:
    """Directions camera centre -> Gaussian (world), the argument of the view-dependent colour."""
    return means - camera_center(viewmat)


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    """(tiles across, tiles down)."""
    return math.ceil(width / tile_size), math.ceil(height / tile_size)
