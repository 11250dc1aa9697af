"""What each Gaussian carries into the image, and how the composited channels become a `RenderOutput`.

Both renderers composite the same 7 channels per Gaussian in one pass: RGB from SH (3), view-space
normal (3) and camera z (1). Shared here so the two backends cannot drift apart.
"""
from __future__ import annotations

import torch

from milo_backend.render import RenderOutput, Splats
from milo_backend.render.project import sh_view_dirs, view_normals
from milo_backend.render.sh import eval_sh

RGB, NORMAL, DEPTH = slice(0, 3), slice(3, 6), slice(6, 7)
N_CHANNELS = 7


def gaussian_channels(splats: Splats, viewmat: torch.Tensor, depths: torch.Tensor, sh_degree: int) -> torch.Tensor:
    """(N, 7) per-Gaussian RGB, view-space normal and depth."""
    rgb = eval_sh(splats.sh, sh_view_dirs(splats.means, viewmat), sh_degree)
    normals = view_normals(splats.means, splats.quats, splats.scales, viewmat)
    return torch.cat([rgb, normals, depths[:, None]], dim=1)


def assemble_output(channels: torch.Tensor, alpha: torch.Tensor, median_id: torch.Tensor,
                    depths: torch.Tensor, means2d: torch.Tensor, radii: torch.Tensor,
                    background: torch.Tensor | None, max_weight_id: torch.Tensor | None = None,
                    weight_sum: torch.Tensor | None = None,
                    pixels_touched: torch.Tensor | None = None) -> RenderOutput:
    """`channels` (H,W,7) = sum of w * channel, `alpha` (H,W,1), `median_id` (H,W) (-1 = none)."""
    color = channels[..., RGB]
    if background is not None:
        color = color + (1.0 - alpha) * background.to(color)
    # divide by alpha as gsplat's "ED" mode does: empty pixels have a zero numerator, hence depth 0
    depth_expected = channels[..., DEPTH] / alpha.clamp_min(1e-10)
    normals = torch.nn.functional.normalize(channels[..., NORMAL], dim=-1, eps=1e-12)
    # index -1 (no median) picks the appended 0
    depth_median = torch.cat([depths, depths.new_zeros(1)])[median_id]
    out = RenderOutput(color=color, alpha=alpha, depth_median=depth_median[..., None],
                       depth_expected=depth_expected, normals=normals, means2d=means2d,
                       radii=radii.max(dim=-1).values if radii.dim() == 2 else radii)
    if max_weight_id is not None:
        valid = max_weight_id[max_weight_id >= 0]
        out.max_weight_id = max_weight_id
        out.weight_sum = weight_sum
        out.pixels_touched = pixels_touched
        out.pixels_dominated = torch.bincount(valid, minlength=depths.shape[0])
    return out
