"""TSDF fusion of rendered depth maps: the baseline 2DGS and GOF report, built from this project's parts.

A regular grid of voxel corners over `bounds` gets the truncated signed distance of each view's depth
map (`sdf._fusion_term`: the same per-view term as MILo's initial SDF, truncation `trunc` in world
units), averaged over the views that measure it. The surface is the zero level of the cells whose
eight corners are all measured (an unmeasured corner is no evidence of free space or of matter),
extracted by marching tetrahedra on the cells' Kuhn subdivision (six tetrahedra per cube; the same
surface as marching cubes up to the interpolation inside a cell).

Used by `extract OUT --tsdf` (writes `mesh_tsdf.ply`) and by `bench mesh-loop`'s baseline row.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from milo_backend.data.camera import Camera
from milo_backend.mesh.marching_tets import marching_tetrahedra
from milo_backend.mesh.sdf import _fusion_term

# the 6 tetrahedra of a cube (corner k = x + 2y + 4z) around its main diagonal 0-7
KUHN = torch.tensor([[0, 1, 3, 7], [0, 3, 2, 7], [0, 2, 6, 7], [0, 6, 4, 7], [0, 4, 5, 7], [0, 5, 1, 7]])
TRUNCATION_VOXELS = 4.0


def fuse(cameras: Iterable[Camera], render_depth_fn: Callable[[Camera], torch.Tensor], lo: torch.Tensor,
         hi: torch.Tensor, resolution: int, trunc: float | None = None, progress=None):
    """(points (N,3) of the grid, tsdf (N,) in [-1, 1] (nan where no view measures), shape (nx,ny,nz)).
    `resolution`: voxels along the longest side of the box."""
    lo, hi = lo.double(), hi.double()
    voxel = float((hi - lo).max()) / resolution
    shape = [max(2, int(torch.ceil((hi[i] - lo[i]) / voxel)) + 1) for i in range(3)]
    axes = [lo[i] + voxel * torch.arange(shape[i], dtype=torch.float64) for i in range(3)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    trunc = trunc or TRUNCATION_VOXELS * voxel
    total = torch.zeros(len(points), dtype=torch.float64)
    count = torch.zeros_like(total)
    cameras = list(cameras)
    for i, cam in enumerate(cameras):
        depth = render_depth_fn(cam).detach().reshape(cam.height, cam.width).double().cpu()
        d, valid = _fusion_term(points, depth, cam, trunc)
        total += torch.where(valid, d, 0.0)
        count += valid.double()
        if progress:
            progress(i + 1, len(cameras))
    tsdf = torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, float("nan")))
    return points, tsdf, tuple(shape)


def extract(points: torch.Tensor, tsdf: torch.Tensor, shape: tuple[int, int, int]):
    """(verts (V,3), faces (F,3)) of the tsdf = 0 surface over fully measured cells that it crosses;
    faces are counter-clockwise seen from the outside (tsdf > 0: in front of the surfaces)."""
    nx, ny, nz = shape
    idx = torch.arange(nx * ny * nz).reshape(nx, ny, nz)
    corners = torch.stack([idx[(k & 1):nx - 1 + (k & 1), (k >> 1 & 1):ny - 1 + (k >> 1 & 1),
                               (k >> 2 & 1):nz - 1 + (k >> 2 & 1)].reshape(-1) for k in range(8)], 1)  # (C,8)
    values = tsdf[corners]
    measured = ~torch.isnan(values).any(1)
    positive = (values > 0).sum(1)
    crossed = measured & (positive > 0) & (positive < 8)
    cells = corners[crossed]
    if len(cells) == 0:
        return torch.zeros(0, 3, dtype=points.dtype), torch.zeros(0, 3, dtype=torch.int64)
    tets = cells[:, KUHN].reshape(-1, 4)
    used, tets = torch.unique(tets, return_inverse=True)
    mesh = marching_tetrahedra(points[used], tsdf[used], tets)
    return mesh.verts, mesh.faces


def tsdf_mesh(cameras, render_depth_fn, lo, hi, resolution: int = 256, trunc: float | None = None, progress=None):
    points, tsdf, shape = fuse(cameras, render_depth_fn, lo, hi, resolution, trunc, progress)
    return extract(points, tsdf, shape)
