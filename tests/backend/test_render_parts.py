"""Renderer building blocks against gsplat's own pure-torch reference implementations (they run on CPU)."""
import math

import pytest
import torch
from gsplat.cuda import _torch_impl as gs

from milo_backend.bench.render import random_scene
from milo_backend.render import render
from milo_backend.render.composite import composite
from milo_backend.render.project import (camera_tensors, covariance_3d, project_gaussians, quat_to_rotmat,
                                         view_normals)
from milo_backend.render.sh import eval_sh
from milo_backend.render.tiles import bin_gaussians, tile_lists_from_gsplat


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_gsplat_for_every_degree(degree):
    g = torch.Generator().manual_seed(degree)
    sh = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3  # any length: normalised inside
    expected = torch.clamp_min(gs._spherical_harmonics(degree, dirs, sh) + 0.5, 0.0)
    torch.testing.assert_close(eval_sh(sh, dirs, degree), expected)


def test_eval_sh_uses_only_the_active_degree_and_rejects_short_coefficients():
    sh = torch.zeros(2, 16, 3)
    sh[:, 4:] = 10.0  # degree 2 and 3 coefficients must not matter at degree 1
    rgb = eval_sh(sh, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), 1)
    torch.testing.assert_close(rgb, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="needs 9"):
        eval_sh(torch.zeros(2, 4, 3), torch.ones(2, 3), 2)


def test_rotation_and_covariance_match_gsplat():
    g = torch.Generator().manual_seed(0)
    quats = torch.randn(20, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(20, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(quat_to_rotmat(quats), gs._quat_to_rotmat(quats))
    covars, _ = gs._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(covariance_3d(quats, scales), covars)


def test_projection_matches_gsplat_reference():
    splats, camera = random_scene(300, 64, 48, radius_px=(1.0, 30.0), dtype=torch.float64, seed=2)
    # push some Gaussians off-screen and behind the camera so the clamped Jacobian and culling are used
    means, scales = splats.means.clone(), splats.scales.clone()
    means[:20, 0] = 0.7 * (means[:20, 1] + 4.0)  # x/z = 0.7: beyond the 0.65 where the Jacobian clamps
    scales[:20] *= 6.0                            # big enough to still reach into the image
    means[20:30, 1] -= 8.0
    viewmat, K = camera_tensors(camera, "cpu", torch.float64)
    ours = project_gaussians(means, splats.quats, scales, splats.opacities, viewmat, K, 64, 48)
    covars = covariance_3d(splats.quats, scales)
    radii, means2d, depths, conics, _ = gs._fully_fused_projection(means, covars, viewmat[None], K[None], 64, 48)
    visible = ours.radii[:, 0] > 0
    assert 100 < visible.sum() <= 290 and not visible[20:30].any()
    torch.testing.assert_close(ours.means2d[visible], means2d[0][visible])
    torch.testing.assert_close(ours.conics[visible], conics[0][visible])
    torch.testing.assert_close(ours.depths, depths[0])
    # gsplat's reference ignores opacity (3.33 sigma); ours shrinks the box to where alpha >= 1/255
    assert (ours.radii[visible] <= radii[0][visible]).all()
    extent = torch.sqrt(2 * torch.log(255 * splats.opacities[visible])).clamp_max(3.33)
    a = 1 / (conics[0][visible][:, 0] - conics[0][visible][:, 1] ** 2 / conics[0][visible][:, 2])
    torch.testing.assert_close(ours.radii[visible][:, 0].double(), torch.ceil(extent * a.sqrt()))
    clamped = (ours.means2d[:, 0] > 64 + 0.15 * 64) & visible  # beyond 1.3x the half field of view
    assert clamped.any()
    assert (ours.radii[20:30] == 0).all()  # behind the camera


def test_view_normal_is_shortest_axis_facing_the_camera():
    splats, camera = random_scene(100, 32, 32, dtype=torch.float64, seed=4)
    viewmat, _ = camera_tensors(camera, "cpu", torch.float64)
    n = view_normals(splats.means, splats.quats, splats.scales, viewmat)
    rot = quat_to_rotmat(splats.quats)
    axis = rot[torch.arange(100), :, splats.scales.argmin(1)] @ viewmat[:3, :3].T
    p_cam = splats.means @ viewmat[:3, :3].T + viewmat[:3, 3]
    torch.testing.assert_close(n.abs(), axis.abs())
    assert ((n * p_cam).sum(1) <= 0).all()
    torch.testing.assert_close(n.norm(dim=1), torch.ones(100, dtype=torch.float64))


def gsplat_reference_tiles(proj, width, height):
    tx, ty = math.ceil(width / 16), math.ceil(height / 16)
    _, isect_ids, flatten_ids = gs._isect_tiles(proj.means2d[None], proj.radii[None], proj.depths[None], 16, tx, ty)
    offsets = gs._isect_offset_encode(isect_ids, 1, tx, ty)
    return tile_lists_from_gsplat(offsets, flatten_ids, 16)


def test_tile_lists_equal_gsplat_reference():
    splats, camera = random_scene(200, 50, 37, radius_px=(1.0, 25.0), seed=6)
    viewmat, K = camera_tensors(camera, "cpu", torch.float32)
    proj = project_gaussians(*splats[:4], viewmat, K, 50, 37)
    ours = bin_gaussians(proj.means2d, proj.radii, proj.depths, 50, 37)
    ref = gsplat_reference_tiles(proj, 50, 37)
    assert (ours.tiles_x, ours.tiles_y) == (ref.tiles_x, ref.tiles_y) == (4, 3)
    torch.testing.assert_close(ours.offsets, ref.offsets)
    torch.testing.assert_close(ours.flatten_ids, ref.flatten_ids)


def test_compositor_on_gsplat_tile_lists_gives_the_torch_statistics():
    # the gsplat backend computes median depth and statistics this way; check it on CPU
    splats, camera = random_scene(80, 48, 40, radius_px=(2.0, 15.0), seed=8)
    out = render(splats, camera, sh_degree=3, backend="torch", with_stats=True)
    viewmat, K = camera_tensors(camera, "cpu", torch.float32)
    proj = project_gaussians(*splats[:4], viewmat, K, 48, 40)
    assert out.alpha.max() > 0.9 and out.pixels_touched.gt(0).sum() > 60
    extra = composite(proj.means2d, proj.conics, splats.opacities, None,
                      proj.radii, gsplat_reference_tiles(proj, 48, 40), 48, 40, with_stats=True)
    assert extra.features is None
    torch.testing.assert_close(extra.alpha, out.alpha)
    torch.testing.assert_close(extra.weight_sum, out.weight_sum)
    assert extra.median_id.shape == extra.max_weight_id.shape == (40, 48)
    torch.testing.assert_close(extra.max_weight_id, out.max_weight_id)
    torch.testing.assert_close(extra.pixels_touched, out.pixels_touched)
    depth = torch.cat([proj.depths, torch.zeros(1)])[extra.median_id]
    torch.testing.assert_close(depth[..., None], out.depth_median)
