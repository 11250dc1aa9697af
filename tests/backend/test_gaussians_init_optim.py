"""Initial Gaussians (kNN sizes, random points in view) and the optimiser set-up / learning rates."""
import math

import numpy as np
import pytest
import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.errors import MiloError
from milo_backend.gaussians.init import init_from_points, knn_scales, random_points_in_view, view_depth_range
from milo_backend.gaussians.model import sh0_to_rgb
from milo_backend.gaussians.optim import LearningRates, make_optimizers, position_lr, set_position_lr


def ring_cameras(n=8, radius=4.0, height=1.0):
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = (radius * math.cos(a), radius * math.sin(a), height)
        cams.append(Camera(f"c{i}", 64, 48, 50.0, 50.0, 32.0, 24.0, look_at(eye, (0, 0, 0))))
    return cams


def test_knn_scale_is_rms_distance_to_three_nearest():
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [10, 10, 10]])
    s = knn_scales(pts)
    assert s[0] == pytest.approx(math.sqrt((1 + 4 + 9) / 3))
    # duplicates get the 3DGS floor instead of a zero (log(0)) size
    assert np.all(knn_scales(np.zeros((5, 3))) == pytest.approx(math.sqrt(1e-7)))
    # fewer than 4 points: use the neighbours there are
    assert knn_scales(np.array([[0.0, 0, 0], [0, 0, 2]])) == pytest.approx([2, 2])


def test_init_from_points_sets_3dgs_defaults():
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    cols = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=torch.uint8)
    m = init_from_points(pts, cols)
    sp = m.splats(with_filter=False)
    assert torch.allclose(sp.opacities, torch.full((4,), 0.1))
    assert torch.allclose(sh0_to_rgb(m.params["sh0"][:, 0]), cols.float() / 255, atol=1e-6)
    assert torch.allclose(sp.scales[0], torch.full((3,), 1.0))
    assert torch.equal(sp.means, pts)
    assert m.params["shN"].shape == (4, 15, 3) and torch.all(m.params["shN"] == 0)
    with pytest.raises(MiloError):
        init_from_points(np.zeros((0, 3)), np.zeros((0, 3)))


def test_random_points_are_seen_by_two_cameras_and_reproducible():
    cams = ring_cameras()
    pts = random_points_in_view(cams, 300, np.random.default_rng(1))
    assert pts.shape == (300, 3) and pts.dtype == np.float32
    seen = np.zeros(len(pts), int)
    for c in cams:
        uv, z = c.project(pts.astype(np.float64))
        seen += (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= c.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= c.height)
    assert seen.min() >= 2
    assert np.linalg.norm(pts, axis=1).max() < 4 * 4.0  # stays near the ring, not at infinity
    assert np.array_equal(pts, random_points_in_view(cams, 300, np.random.default_rng(1)))


def test_depth_range_brackets_the_object_for_ring_and_forward_facing_layouts():
    near, far = view_depth_range(ring_cameras(radius=4.0, height=0.0))
    assert near < 4.0 < far  # the centre of the ring lies 4 units in front of every camera
    forward = [Camera(f"f{i}", 64, 48, 50.0, 50.0, 32.0, 24.0, look_at((i * 0.5, 0, 0), (i * 0.5, 5, 0)))
               for i in range(4)]  # parallel axes: no common focus
    near, far = view_depth_range(forward)
    assert 0 < near < far
    pts = random_points_in_view(forward, 50, np.random.default_rng(0))
    assert len(pts) == 50 and np.all(pts[:, 1] > 0)  # in front of the cameras


def test_random_start_is_sized_to_the_views_and_lies_where_the_few_points_are():
    from milo_backend.gaussians.init import init_random, random_start_count, sparse_depth_range

    cams = ring_cameras()
    pixels = max(c.width * c.height for c in cams)
    assert random_start_count(cams, 10 ** 6) == pixels // 2 and random_start_count(cams, 10) == 10
    # a few triangulated points around the ring's centre: the random points keep to their depths
    rng = np.random.default_rng(0)
    seeds = rng.normal(0, 0.3, (50, 3))
    near, far = sparse_depth_range(seeds, cams)
    assert 1.5 < near < 4.0 < far < 6.5  # cameras 4 units from the centre, points within ~1 unit of it
    assert sparse_depth_range(seeds[:5], cams) is None  # too few to say anything
    m = init_random(cams, 400, rng, depth_range=(near, far), seed_points=seeds, seed_colors=np.full((50, 3), 0.2))
    assert len(m) == 450 and torch.allclose(m.params["means"][:50].double(), torch.as_tensor(seeds))
    # each random point lies within the band in the camera that drew it
    depths = np.stack([c.project(m.params["means"][50:].detach().double().numpy())[1] for c in cams])
    assert np.all(((depths >= near - 1e-4) & (depths <= far + 1e-4)).any(axis=0))
    # sizes from the spacing of the points (3DGS's kNN rule), not a pixel cap: a cap at 2 px left floaters
    # that fit a few training views (2.9 dB less held out on the suite's `ground`)
    assert torch.allclose(torch.exp(m.params["scales"][:, 0]).double(),
                          torch.as_tensor(knn_scales(m.params["means"].detach())), rtol=1e-5)


def test_make_optimizers_uses_the_method_learning_rates():
    m = init_from_points(torch.randn(6, 3), torch.rand(6, 3))
    opts = make_optimizers(m, extent=3.0)
    assert opts is m.optimizers and set(opts) == set(m.params.keys())
    lr = {k: o.param_groups[0]["lr"] for k, o in opts.items()}
    assert lr == pytest.approx({"means": 1.6e-4 * 3, "sh0": 2.5e-3, "shN": 2.5e-3 / 20, "opacities": 0.025,
                                "scales": 5e-3, "quats": 1e-3})
    assert all(o.param_groups[0]["eps"] == 1e-15 for o in opts.values())
    assert all(o.param_groups[0]["params"][0] is m.params[k] for k, o in opts.items())


def test_position_lr_hits_its_endpoints_and_decays_exponentially():
    assert position_lr(0, 1000, 2.0) == pytest.approx(1.6e-4 * 2)
    assert position_lr(1000, 1000, 2.0) == pytest.approx(1.6e-6 * 2)
    assert position_lr(5000, 1000, 2.0) == pytest.approx(1.6e-6 * 2)  # constant after the decay
    assert position_lr(500, 1000, 2.0) == pytest.approx(1.6e-5 * 2)  # geometric midpoint
    custom = LearningRates(position_init=1e-2, position_final=1e-4)
    assert position_lr(250, 1000, 1.0, custom) == pytest.approx(10 ** -2.5)
    m = init_from_points(torch.randn(6, 3), torch.rand(6, 3))
    make_optimizers(m, extent=1.0)
    value = set_position_lr(m, 1000, 1000, 1.0)
    assert m.optimizers["means"].param_groups[0]["lr"] == value == pytest.approx(1.6e-6)
