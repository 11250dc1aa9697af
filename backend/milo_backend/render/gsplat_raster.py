"""The CUDA renderer: gsplat 1.5.3's kernels for projection, tile intersection and compositing.

It calls gsplat's building blocks (`fully_fused_projection`, `isect_tiles`, `isect_offset_encode`,
`rasterize_to_pixels`) rather than `gsplat.rasterization`, so that:
- colour, normal and depth are composited in ONE pass as 7 feature channels (`sh_degree=None` in gsplat's
  terms; SH is evaluated by `render/sh.py`, the normals by `render/project.py`, shared with the torch path);
- `means2d` is the (N,2) tensor that feeds the rasteriser, so `out.means2d.grad` is the screen-space
  gradient densification needs (the wrapper's `meta["means2d"]` is (1,N,2));
- the same tile lists serve the outputs gsplat cannot produce for 3DGS: the median depth and the
  per-Gaussian weight statistics. These come from `composite.py` run without gradients on gsplat's own
  projected Gaussians and `isect_offsets`/`flatten_ids` (exactly gsplat's per-tile, depth-sorted lists).
  The median depth is then a gather of the differentiable camera z of the chosen Gaussian, so it has
  gradients w.r.t. the means, as in the torch path.
Differences from the torch path are float rounding only: gsplat accumulates T in float32 one Gaussian at a
time, the compositor in float64 sums, so a pixel sitting exactly on a threshold (alpha = 1/255,
T = MEDIAN_TRANSMITTANCE or 1e-4) can resolve differently. Where the radius is 0 (culled), gsplat leaves
means2d undefined.
Importable without CUDA; calling it needs CUDA tensors and compiled gsplat kernels.
"""
from __future__ import annotations

import torch

from milo_backend.render import RenderOutput, Splats
from milo_backend.render.channels import assemble_output, gaussian_channels
from milo_backend.render.composite import composite
from milo_backend.render.project import EPS2D, NEAR_PLANE, camera_tensors, tile_grid, to_camera
from milo_backend.render.tiles import TILE_SIZE, tile_lists_from_gsplat


def render_gsplat(splats: Splats, camera, *, sh_degree: int, background: torch.Tensor | None = None,
                  with_stats: bool = False) -> RenderOutput:
    if not splats.means.is_cuda:
        raise ValueError("the gsplat renderer needs CUDA tensors; use backend='torch' on the CPU")
    if splats.means.shape[0] == 0:  # gsplat's kernels do not accept empty launches
        from milo_backend.render.torch_raster import render_torch
        return render_torch(splats, camera, sh_degree=sh_degree, background=background, with_stats=with_stats)
    from gsplat.cuda import _wrapper
    return render_with_kernels(_wrapper, splats, camera, sh_degree=sh_degree, background=background,
                               with_stats=with_stats)


def render_with_kernels(kernels, splats: Splats, camera, *, sh_degree: int,
                        background: torch.Tensor | None = None, with_stats: bool = False) -> RenderOutput:
    """The pipeline above, with `kernels` providing gsplat's `fully_fused_projection`, `isect_tiles`,
    `isect_offset_encode` and `rasterize_to_pixels` (gsplat.cuda._wrapper, or CPU stand-ins in tests)."""
    splats = Splats(*(t.float() for t in splats))  # gsplat's kernels are float32 only
    width, height = int(camera.width), int(camera.height)
    viewmat, K = camera_tensors(camera, splats.means.device, torch.float32)
    radii, means2d_b, depths_b, conics_b, _ = kernels.fully_fused_projection(
        splats.means, None, splats.quats, splats.scales, viewmat[None], K[None], width, height,
        eps2d=EPS2D, near_plane=NEAR_PLANE, packed=False, opacities=splats.opacities)
    means2d, conics, radii = means2d_b[0], conics_b[0], radii[0]
    if means2d.requires_grad:
        means2d.retain_grad()
    # camera z from torch (gsplat leaves culled entries undefined); identical values where visible
    depths = to_camera(splats.means, viewmat)[:, 2]
    channels = gaussian_channels(splats, viewmat, depths, sh_degree)

    tiles_x, tiles_y = tile_grid(width, height, TILE_SIZE)
    _, isect_ids, flatten_ids = kernels.isect_tiles(means2d_b.detach(), radii[None], depths_b.detach(),
                                                    TILE_SIZE, tiles_x, tiles_y, packed=False)
    isect_offsets = kernels.isect_offset_encode(isect_ids, 1, tiles_x, tiles_y)
    rendered, alpha = kernels.rasterize_to_pixels(means2d[None], conics[None], channels[None],
                                                  splats.opacities[None], width, height, TILE_SIZE,
                                                  isect_offsets, flatten_ids, packed=False)
    with torch.no_grad():
        tiles = tile_lists_from_gsplat(isect_offsets, flatten_ids, TILE_SIZE)
        extra = composite(means2d, conics, splats.opacities, None, radii, tiles, width, height,
                          with_stats=with_stats)
    return assemble_output(rendered[0], alpha[0], extra.median_id, depths, means2d, radii, background,
                           max_weight_id=extra.max_weight_id, weight_sum=extra.weight_sum,
                           pixels_touched=extra.pixels_touched)
