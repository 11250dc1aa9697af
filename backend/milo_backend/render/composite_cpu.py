"""The compiled CPU compositor's autograd glue (kernel: `csrc/composite.cpp`, reference: `composite.py`).

Same inputs and outputs as `composite.composite`, which calls it on the CPU where `cpu_kernels.available()`.
Per-Gaussian sums (weights, touched pixels, gradients) come back per tile-list entry and are added here in
one order, so the result does not depend on the number of threads.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from milo_backend import cpu_kernels


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, radii, tiles, width, height, with_stats, constants):
        args = (means2d.detach().contiguous(), conics.detach().contiguous(), opacities.detach().contiguous(),
                features.detach().contiguous(), radii.to(torch.float64).contiguous(), tiles.offsets.contiguous(),
                tiles.flatten_ids.contiguous(), tiles.tiles_x, tiles.tiles_y, tiles.tile_size, width, height)
        feat, alpha, t_final, median, max_id, last, entry_w, entry_touched = cpu_kernels.module().composite_forward(
            *args, with_stats, *constants)
        ctx.args, ctx.constants = args, constants
        ctx.save_for_backward(t_final, last)
        n = means2d.shape[0]
        outs = (feat, alpha, median)
        if with_stats:
            ids = tiles.flatten_ids
            weight_sum = torch.zeros(n, dtype=alpha.dtype).index_add_(0, ids, entry_w)
            touched = torch.zeros(n, dtype=torch.int64).index_add_(0, ids, entry_touched)
            outs += (max_id, weight_sum, touched)
        ctx.mark_non_differentiable(*outs[2:])
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_feat, grad_alpha, *_):
        t_final, last = ctx.saved_tensors
        args = ctx.args
        entry = cpu_kernels.module().composite_backward(*args, *ctx.constants, t_final, last,
                                                        grad_feat.contiguous(), grad_alpha.contiguous())
        d = args[3].shape[1]
        grads = torch.zeros(args[0].shape[0], d + 6, dtype=entry.dtype).index_add_(0, args[6], entry)
        return (grads[:, d:d + 2], grads[:, d + 2:d + 5], grads[:, d + 5], grads[:, :d]) + (None,) * 6


def composite_cpu(means2d, conics, opacities, features, radii, tiles, width: int, height: int,
                  with_stats: bool, constants: tuple[float, float, float, float]):
    """(features (H,W,D) or None, alpha (H,W,1), median_id, max_id, weight_sum, touched), as `composite`.
    `constants`: composite.py's alpha clamp, alpha threshold, final transmittance and median transmittance."""
    feats = features if features is not None else means2d.new_zeros(means2d.shape[0], 0)
    outs = _CompositeCPU.apply(means2d, conics, opacities, feats, radii, tiles, width, height, with_stats,
                               constants)
    feat, alpha, median = outs[:3]
    max_id, weight_sum, touched = outs[3:] if with_stats else (None, None, None)
    return (None if features is None else feat.reshape(height, width, -1), alpha.reshape(height, width, 1),
            median.reshape(height, width), None if max_id is None else max_id.reshape(height, width),
            weight_sum, touched)
