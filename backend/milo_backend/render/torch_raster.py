"""The pure-PyTorch renderer (CPU or CUDA): project -> bin into 16x16 tiles -> composite.

Differentiable w.r.t. means, quats, scales, opacities and SH; `out.means2d.grad` after backward is the
screen-space positional gradient densification uses.
"""
from __future__ import annotations

import torch

from milo_backend.render import RenderOutput, Splats
from milo_backend.render.channels import assemble_output, gaussian_channels
from milo_backend.render.composite import composite
from milo_backend.render.project import camera_tensors, project_gaussians
from milo_backend.render.tiles import bin_gaussians


def render_torch(splats: Splats, camera, *, sh_degree: int, background: torch.Tensor | None = None,
                 with_stats: bool = False) -> RenderOutput:
    width, height = int(camera.width), int(camera.height)
    viewmat, K = camera_tensors(camera, splats.means.device, splats.means.dtype)
    proj = project_gaussians(splats.means, splats.quats, splats.scales, splats.opacities, viewmat, K,
                             width, height)
    means2d = proj.means2d
    if means2d.requires_grad:
        means2d.retain_grad()
    channels = gaussian_channels(splats, viewmat, proj.depths, sh_degree)
    tiles = bin_gaussians(means2d, proj.radii, proj.depths, width, height)
    comp = composite(means2d, proj.conics, splats.opacities, channels, proj.radii, tiles, width, height,
                     with_stats=with_stats)
    return assemble_output(comp.features, comp.alpha, comp.median_id, proj.depths, means2d, proj.radii,
                           background, max_weight_id=comp.max_weight_id, weight_sum=comp.weight_sum,
                           pixels_touched=comp.pixels_touched)
