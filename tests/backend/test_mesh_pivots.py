"""Pivots (9 per chosen Gaussian) and the importance-sampled choice of Gaussians."""
import math

import pytest
import torch

from milo_backend.mesh import PIVOTS_PER_GAUSSIAN, pivot_gaussian, pivots, quat_to_rotmat, surface_gaussians


def test_pivot_layout_centre_then_scaled_rotated_box_corners():
    # One chosen Gaussian out of 8: k = (8/1)^(1/3) = 2, box half-size 3 k s = 6 s.
    means = torch.zeros(8, 3, dtype=torch.float64)
    means[5] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    scales = torch.ones(8, 3, dtype=torch.float64)
    scales[5] = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    quats = torch.zeros(8, 4, dtype=torch.float64)
    quats[:, 0] = 1
    quats[5] = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=torch.float64)  # 90 deg about z
    p, r = pivots(means, scales, quats, torch.tensor([5]))
    assert p.shape == (PIVOTS_PER_GAUSSIAN, 3) and r.shape == (PIVOTS_PER_GAUSSIAN,)
    assert torch.allclose(p[0], means[5])
    # Rotation by 90 deg about z maps local (x, y, z) to world (-y, x, z).
    offsets = p[1:] - means[5]
    half = torch.tensor([0.6, 1.2, 1.8], dtype=torch.float64)
    signs = torch.tensor([[x, y, z] for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)], dtype=torch.float64)
    local = signs * half
    expected = torch.stack([-local[:, 1], local[:, 0], local[:, 2]], dim=1)
    assert torch.allclose(offsets, expected)  # corners in binary order, x fastest
    assert torch.allclose(r, torch.full((9,), 3 * 2 * 0.3, dtype=torch.float64))
    assert pivot_gaussian(torch.tensor([5, 7])).tolist() == [5] * 9 + [7] * 9


def test_subset_factor_uses_n_total_and_quaternions_need_not_be_unit():
    g = torch.Generator().manual_seed(0)
    means, scales = torch.randn(10, 3, generator=g), torch.rand(10, 3, generator=g) + 0.1
    quats = torch.randn(10, 4, generator=g)
    idx = torch.tensor([1, 4])
    p_unit, r = pivots(means, scales, torch.nn.functional.normalize(quats, dim=1), idx, n_total=250)
    p_raw, _ = pivots(means, scales, 3.7 * quats, idx, n_total=250)
    assert torch.allclose(p_unit, p_raw, atol=1e-6)
    k = (250 / 2) ** (1 / 3)
    assert torch.allclose(r[:9], torch.full((9,), 3 * k * scales[1].max().item()))
    # Corner distance from the centre is |3 k s| for any rotation.
    corner_dist = (p_unit[1:9] - p_unit[0]).norm(dim=1)
    assert torch.allclose(corner_dist, torch.full((8,), 3 * k * scales[1].norm().item()), rtol=1e-5)


def test_rotation_matrices_are_orthonormal():
    R = quat_to_rotmat(torch.randn(50, 4, dtype=torch.float64))
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(50, dtype=torch.float64))


def test_pivots_are_differentiable_in_means_scales_rotations():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scales = (torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    quats = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 2, 3])
    assert torch.autograd.gradcheck(lambda m, s, q: pivots(m, s, q, idx, n_total=7)[0],
                                    (means, scales, quats))


def test_surface_gaussians_drops_single_view_gaussians_and_takes_all_under_budget():
    scores = torch.tensor([5.0, 0.0, 1.0, 2.0, 3.0])
    views = torch.tensor([3, 2, 1, 0, 9])
    assert surface_gaussians(scores, views, budget=10).tolist() == [0, 1, 4]
    assert surface_gaussians(scores, views, budget=3).tolist() == [0, 1, 4]


def test_surface_gaussians_samples_budget_distinct_in_proportion_to_score():
    n, budget = 400, 40
    scores = torch.ones(n)
    scores[:100] = 20.0   # a heavy quarter
    scores[100:150] = 0.0  # never chosen while positive scores remain
    views = torch.full((n,), 5)
    counts = torch.zeros(n)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        idx = surface_gaussians(scores, views, budget, generator=g)
        assert idx.numel() == budget and torch.unique(idx).numel() == budget
        assert torch.equal(idx, torch.sort(idx).values)
        counts[idx] += 1
    assert counts[100:150].sum() == 0
    # 100 of weight 20 vs 250 of weight 1: the heavy ones take most of the draws.
    assert counts[:100].sum() > 4 * counts[150:].sum()
    a = surface_gaussians(scores, views, budget, generator=torch.Generator().manual_seed(3))
    b = surface_gaussians(scores, views, budget, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_surface_gaussians_fills_with_zero_scores_only_when_positives_run_out():
    scores = torch.tensor([0.0, 4.0, 0.0, 0.0, 1.0, 0.0])
    views = torch.full((6,), 2)
    idx = surface_gaussians(scores, views, budget=4, generator=torch.Generator().manual_seed(0))
    assert idx.numel() == 4 and {1, 4} <= set(idx.tolist())


def test_surface_gaussians_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        surface_gaussians(torch.ones(3), torch.ones(4), budget=2)
