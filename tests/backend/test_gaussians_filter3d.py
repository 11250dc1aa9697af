"""Mip-Splatting 3D filter: depth/focal of the closest camera that sees a point, times sqrt(0.2)."""
import math

import pytest
import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.gaussians.filter3d import compute_filter_3d
from milo_backend.gaussians.visibility import visibility

S = math.sqrt(0.2)


def cam_at(eye, target, focal, width=100, height=80):
    return Camera("c", width, height, focal, focal, width / 2, height / 2, look_at(eye, target))


def test_filter_is_depth_over_focal_of_the_finest_view():
    near_cam = cam_at((0, -4, 0), (0, 0, 0), focal=100.0)   # depth 4, focal 100 -> 0.04 per pixel
    far_cam = cam_at((0, 10, 0), (0, 0, 0), focal=500.0)    # depth 10, focal 500 -> 0.02 per pixel
    f = compute_filter_3d(torch.zeros(1, 3), [near_cam])
    assert f.item() == pytest.approx(4 / 100 * S, rel=1e-5)
    f = compute_filter_3d(torch.zeros(1, 3), [near_cam, far_cam])
    assert f.item() == pytest.approx(10 / 500 * S, rel=1e-5)


def test_cameras_that_do_not_see_the_point_are_ignored():
    front = cam_at((0, -4, 0), (0, 0, 0), focal=100.0)
    behind = cam_at((0, -2, 0), (0, -10, 0), focal=1000.0)   # looks away from the point
    assert compute_filter_3d(torch.zeros(1, 3), [front, behind]).item() == pytest.approx(0.04 * S, rel=1e-5)
    # the 15% margin: 10% outside the image still counts, 30% outside does not
    # x offset at depth 4 for u = 110 (10% beyond the 100 px width): (110 - 50) / 100 * 4 = 2.4
    close = cam_at((2.4, -4, 0), (2.4, 0, 0), focal=100.0)
    assert compute_filter_3d(torch.zeros(1, 3), [front, close]).item() == pytest.approx(0.04 * S, rel=1e-5)
    just_outside = cam_at((-2.4, -2, 0), (-2.4, 0, 0), focal=100.0)  # u = 50 + 2.4/2*100 = 170
    two = torch.tensor([[0.0, 0, 0], [-2.4, 0, 0]])
    f = compute_filter_3d(two, [front, just_outside])
    assert f[0].item() == pytest.approx(0.04 * S, rel=1e-5)
    assert f[1].item() == pytest.approx(2 / 100 * S, rel=1e-5)


def test_unseen_points_get_the_largest_seen_value():
    cam = cam_at((0, -4, 0), (0, 0, 0), focal=100.0)
    pts = torch.tensor([[0.0, 0, 0], [0.0, 4, 0], [0.0, -10, 0]])  # depth 4, depth 8, behind the camera
    f = compute_filter_3d(pts, [cam])
    assert f.tolist() == pytest.approx([0.04 * S, 0.08 * S, 0.08 * S], rel=1e-5)
    assert compute_filter_3d(torch.tensor([[0.0, -10, 0]]), [cam]).item() == 0.0  # nothing seen at all


def test_chunking_does_not_change_the_result():
    cams = [cam_at((4 * math.cos(a), 4 * math.sin(a), 1), (0, 0, 0), focal=60.0 + 10 * a) for a in range(5)]
    pts = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    whole = visibility(pts, cams, margin=0.15)
    chunked = visibility(pts, cams, margin=0.15, chunk_elements=7)
    assert torch.equal(whole.n_views, chunked.n_views)
    assert torch.allclose(whole.min_depth_over_focal, chunked.min_depth_over_focal, rtol=1e-6)  # einsum batch ulps
    assert whole.n_views.max() > 1
