"""Tile binning: which projected Gaussians touch which 16x16 tile, front to back.

The result is the same compressed layout as gsplat's `isect_tiles` + `isect_offset_encode`, so the
compositor in `composite.py` consumes either: entries `offsets[t]:offsets[t+1]` of `flatten_ids` are the
Gaussians of tile t (row-major tile index) sorted by depth, ties by Gaussian index (gsplat's radix sort
is stable over the same keys).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from milo_backend.render.project import tile_grid

TILE_SIZE = 16


class TileLists(NamedTuple):
    offsets: torch.Tensor      # (n_tiles + 1,) int64, start of each tile's run in flatten_ids
    flatten_ids: torch.Tensor  # (n_isects,) int64 Gaussian index per (tile, Gaussian) intersection
    tiles_x: int
    tiles_y: int
    tile_size: int


def tile_ranges(means2d: torch.Tensor, radii: torch.Tensor, tiles_x: int, tiles_y: int, tile_size: int):
    """Per Gaussian the tile rectangle [x0, x1) x [y0, y1) covered by its bounding box (as gsplat)."""
    r = radii.to(means2d.dtype)
    t = means2d / tile_size
    tr = r / tile_size
    lo = torch.floor(t - tr).to(torch.int64)
    hi = torch.ceil(t + tr).to(torch.int64)
    x0, y0 = lo[:, 0].clamp(0, tiles_x), lo[:, 1].clamp(0, tiles_y)
    x1, y1 = hi[:, 0].clamp(0, tiles_x), hi[:, 1].clamp(0, tiles_y)
    drawn = (radii > 0).all(dim=-1)
    x1 = torch.where(drawn, x1, x0)
    return x0, x1, y0, y1


@torch.no_grad()
def bin_gaussians(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int,
                  height: int, tile_size: int = TILE_SIZE) -> TileLists:
    """Per-tile depth-sorted lists of the Gaussians whose bounding box overlaps the tile."""
    means2d, radii, depths = means2d.detach(), radii.detach(), depths.detach()
    tiles_x, tiles_y = tile_grid(width, height, tile_size)
    n_tiles = tiles_x * tiles_y
    device = means2d.device
    x0, x1, y0, y1 = tile_ranges(means2d, radii, tiles_x, tiles_y, tile_size)
    w, h = x1 - x0, y1 - y0
    count = w * h
    total = int(count.sum())
    gid = torch.repeat_interleave(torch.arange(len(count), device=device), count, output_size=total)
    local = torch.arange(total, device=device) - (torch.cumsum(count, 0) - count)[gid]
    tile_id = (y0[gid] + local // w[gid]) * tiles_x + x0[gid] + local % w[gid]
    depth_rank = torch.empty(len(count), dtype=torch.int64, device=device)
    depth_rank[torch.argsort(depths, stable=True)] = torch.arange(len(count), device=device)
    order = torch.argsort(tile_id * len(count) + depth_rank[gid])
    per_tile = torch.bincount(tile_id, minlength=n_tiles)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(per_tile, 0)
    return TileLists(offsets, gid[order], tiles_x, tiles_y, tile_size)


def tile_lists_from_gsplat(isect_offsets: torch.Tensor, flatten_ids: torch.Tensor, tile_size: int) -> TileLists:
    """Wrap gsplat's intersection output for one image ([1, th, tw] offsets) in `TileLists`."""
    tiles_y, tiles_x = isect_offsets.shape[-2:]
    offsets = torch.empty(tiles_x * tiles_y + 1, dtype=torch.int64, device=isect_offsets.device)
    if flatten_ids.numel() == 0:  # gsplat leaves the offsets unwritten when nothing is visible
        offsets.zero_()
    else:
        offsets[:-1] = isect_offsets.reshape(-1).to(torch.int64)
        offsets[-1] = flatten_ids.numel()
    return TileLists(offsets, flatten_ids.to(torch.int64), tiles_x, tiles_y, tile_size)
