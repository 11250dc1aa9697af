"""View-space geometry shared by the mesh rasterisers (`raster.py` and its two implementations) and the
mesh phase: the output type, world-to-view transform, projection and flat face normals."""
from __future__ import annotations

from typing import NamedTuple

import torch

from milo_backend.data.camera import Camera


class MeshRender(NamedTuple):
    depth: torch.Tensor     # (H,W,1) view-space z, antialiased; differentiable in verts
    normals: torch.Tensor   # (H,W,3) flat unit face normals, view space; 0 where empty
    mask: torch.Tensor      # (H,W,1) float coverage (1 where a face covers the pixel centre)
    face_ids: torch.Tensor  # (H,W) int64 row of `faces` seen at each pixel, -1 where empty


def world_to_view(verts: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(V,3) camera coordinates (x right, y down, z forward) of world points."""
    w2c = torch.as_tensor(camera.world_to_cam, dtype=verts.dtype, device=verts.device)
    return verts @ w2c[:3, :3].T + w2c[:3, 3]


def project(v_cam: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(V,2) pixel coordinates (pixel centres at +0.5) of camera-space points with z > 0."""
    z = v_cam[:, 2]
    z = torch.where(z > 0, z, torch.ones_like(z))
    return torch.stack([camera.fx * v_cam[:, 0] / z + camera.cx,
                        camera.fy * v_cam[:, 1] / z + camera.cy], dim=1)


def face_normals(v_cam: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F,3) unit normals (b-a) x (c-a) of the faces."""
    a, b, c = v_cam[faces[:, 0]], v_cam[faces[:, 1]], v_cam[faces[:, 2]]
    return torch.nn.functional.normalize(torch.cross(b - a, c - a, dim=1), dim=1)


def gather_normals(v_cam: torch.Tensor, faces: torch.Tensor, face_ids: torch.Tensor) -> torch.Tensor:
    """(H,W,3) flat normals of the faces seen at each pixel, 0 where `face_ids` < 0."""
    covered = face_ids >= 0
    out = v_cam.new_zeros(*face_ids.shape, 3)
    seen = face_ids[covered]
    out[covered] = face_normals(v_cam, faces[seen])
    return out


def ray_plane_depth(corners: torch.Tensor, ray: torch.Tensor) -> torch.Tensor:
    """(N,) view-space depth where each ray (N,3), scaled to z = 1, meets the plane of its triangle
    `corners` (N,3,3) in view space; +inf where the ray grazes the plane."""
    n = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1)
    denom = (n * ray).sum(1)
    graze = denom.abs() <= 1e-12 * n.norm(dim=1).clamp_min(1e-30)
    depth = (n * corners[:, 0]).sum(1) / torch.where(graze, torch.ones_like(denom), denom)
    return torch.where(graze, torch.full_like(depth, float("inf")), depth)
