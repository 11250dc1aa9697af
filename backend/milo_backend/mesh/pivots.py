"""Which Gaussians span the mesh, and the 9 pivots (Delaunay vertices) each of them contributes.

Layout of the pivots of `M` chosen Gaussians: a (M*9, 3) tensor, Gaussian-major. Rows 9j .. 9j+8
belong to the j-th chosen Gaussian `idx[j]`: row 9j is its centre, rows 9j+1 .. 9j+8 the corners
mu + R(q) diag(3 k s) c of its scaled 3-sigma box, c running over {-1,+1}^3 in the order of
`BOX_CORNERS`. `pivot_gaussian(p) = idx[p // 9]` maps a pivot back to its Gaussian.
"""
from __future__ import annotations

import torch
from milo_backend.quaternions import quat_to_rotmat  # noqa: F401 (re-exported)

PIVOTS_PER_GAUSSIAN = 9

# Corners c of the unit box, in binary order (x fastest); row 0 is the centre.
BOX_CORNERS = torch.tensor(
    [[0.0, 0.0, 0.0]] + [[(-1.0, 1.0)[(i >> a) & 1] for a in range(3)] for i in range(8)])


def surface_gaussians(scores: torch.Tensor, views_seen: torch.Tensor, budget: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (sorted, int64) of at most `budget` Gaussians to build the mesh from.

    Gaussians seen in <= 1 view are never chosen. If the rest fit in the budget they are all chosen;
    otherwise `budget` of them are drawn without replacement with probability proportional to
    `scores` (the importance scores of the method, >= 0). Zero-score Gaussians can only be drawn
    once every positive-score one is taken; they fill the remainder uniformly.
    """
    if scores.shape != views_seen.shape or scores.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)} and views_seen {tuple(views_seen.shape)} "
                         "must be 1-D tensors of the same length")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    candidates = torch.nonzero(views_seen > 1).squeeze(1)
    if candidates.numel() <= budget:
        return candidates
    w = torch.nan_to_num(scores[candidates].double(), nan=0.0, posinf=0.0).clamp_min(0.0)
    # Efraimidis-Spirakis: the `budget` largest keys u^(1/w) are a weighted sample without
    # replacement; in log space log(u)/w. Unlike torch.multinomial it has no 2^24 size limit.
    rng_device = generator.device if generator is not None else w.device
    u = torch.rand(w.shape, generator=generator, dtype=torch.float64, device=rng_device).to(w.device)
    keys = torch.where(w > 0, torch.log(u.clamp_min(1e-300)) / w.clamp_min(1e-300),
                       torch.full_like(w, -float("inf")))
    n_positive = int((w > 0).sum())
    if n_positive >= budget:
        chosen = torch.topk(keys, budget).indices
    else:
        positive = torch.nonzero(w > 0).squeeze(1)
        zero = torch.nonzero(w <= 0).squeeze(1)
        fill = torch.randperm(zero.numel(), generator=generator, device=rng_device)[:budget - n_positive]
        chosen = torch.cat([positive, zero[fill.to(zero.device)]])
    return torch.sort(candidates[chosen]).values


def pivots(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor, idx: torch.Tensor,
           n_total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pivot positions (M*9,3) and radii (M*9,) of the Gaussians `idx` (see the module docstring).

    means (N,3), scales (N,3) standard deviations (the renderer's, i.e. with the 3D filter folded
    in), rotations (N,4) wxyz quaternions, unnormalised is fine. The boxes are enlarged by
    k = (n_total / M)^(1/3) so that a subset of M Gaussians still covers the volume of all
    `n_total` (default N). Radius of every pivot of a Gaussian: 3 k max(s). Differentiable in
    means, scales and rotations.
    """
    n_total = means.shape[0] if n_total is None else int(n_total)
    m = idx.numel()
    if m == 0:
        return means.new_zeros(0, 3), means.new_zeros(0)
    k = (n_total / m) ** (1.0 / 3.0)
    mu, s = means[idx], scales[idx] * (3.0 * k)
    rot = quat_to_rotmat(rotations[idx])
    corners = BOX_CORNERS.to(device=means.device, dtype=means.dtype)        # (9,3)
    local = corners[None, :, :] * s[:, None, :]                               # (M,9,3)
    world = mu[:, None, :] + torch.einsum("mij,mpj->mpi", rot, local)         # (M,9,3)
    radii = s.max(dim=1).values                                               # 3 k max(s)
    return world.reshape(m * PIVOTS_PER_GAUSSIAN, 3), radii.repeat_interleave(PIVOTS_PER_GAUSSIAN)


def pivot_gaussian(idx: torch.Tensor) -> torch.Tensor:
    """(M*9,) index of the Gaussian each pivot belongs to."""
    return idx.repeat_interleave(PIVOTS_PER_GAUSSIAN)
