"""Depth-fusion SDF initialisation and the occupancy parameterisation."""
import numpy as np
import pytest
import torch

from milo_backend.data.camera import Camera
from milo_backend.events import NullReporter
from milo_backend.mesh import (base_from_sdf, blended_occupancy, initial_sdf, occupancy, occupancy_from_sdf,
                               reset_base, sdf_from_base_shift, sdf_from_occupancy)

TAU = 0.1


def camera_at_origin(name="c", shift_x=0.0) -> Camera:
    """Looks along +z from (shift_x, 0, 0); 40x30 pixels, focal 20."""
    w2c = np.eye(4)
    w2c[0, 3] = -shift_x
    return Camera(name, 40, 30, 20.0, 20.0, 20.0, 15.0, w2c)


def wall(depth: float):
    """render_depth_fn of a wall at camera depth `depth`, seen by every pixel, nothing in the left
    quarter of the image (median depth 0 there)."""
    def render(cam: Camera) -> torch.Tensor:
        d = torch.full((cam.height, cam.width), depth)
        d[:, : cam.width // 4] = 0.0
        return d
    return render


def test_fusion_signs_truncation_and_unseen_pivots():
    pivots = torch.tensor([
        [0.0, 0.0, 2.0],              # far in front of the wall at z = 5: d = 1
        [0.0, 0.0, 5.0 - 0.5 * TAU],  # just in front: d = 0.5
        [0.0, 0.0, 5.0 + 0.5 * TAU],  # just behind: d = -0.5
        [0.0, 0.0, 5.0 + 3.0 * TAU],  # far behind: ignored -> never measured -> -1
        [0.0, 0.0, -1.0],             # behind the camera -> -1
        [-0.8, 0.0, 1.0],             # in the empty left quarter (D = 0) -> -1
        [100.0, 0.0, 2.0],            # outside the image -> -1
    ], dtype=torch.float64)
    sdf = initial_sdf([camera_at_origin()], wall(5.0), pivots, tau=TAU)
    assert torch.allclose(sdf, torch.tensor([1.0, 0.5, -0.5, -1, -1, -1, -1], dtype=torch.float64))


def test_fusion_averages_valid_views_and_normalises_by_the_largest_magnitude():
    cams = [camera_at_origin("a"), camera_at_origin("b")]
    depths = {"a": 5.0, "b": 5.0 + 0.5 * TAU}
    render = lambda cam: torch.full((cam.height, cam.width, 1), depths[cam.name])  # noqa: E731 - (H,W,1) accepted
    pivots = torch.tensor([[0.0, 0.0, 5.0 - 0.25 * TAU], [0.0, 0.0, 5.0 + 0.25 * TAU]])
    reporter = NullReporter()
    sdf = initial_sdf(cams, render, pivots, tau=TAU, reporter=reporter)
    # d = (0.25, 0.75) -> 0.5 and (-0.25, 0.25) -> 0; divided by max |sdf| = 0.5.
    assert torch.allclose(sdf, torch.tensor([1.0, 0.0]), atol=1e-6)
    assert sdf.dtype == pivots.dtype
    assert [e["step"] for e in reporter.of("progress")] == [1, 2]


def test_fusion_uses_the_pixel_each_pivot_projects_to():
    cam = camera_at_origin()
    def render(c):  # near wall (z=2) in the top half of the image, far wall (z=8) below
        d = torch.full((c.height, c.width), 8.0)
        d[: c.height // 2] = 2.0
        return d
    # Same depth z = 4: above the image centre it is behind the near wall, below in front of the far one.
    pivots = torch.tensor([[0.0, -1.0, 4.0], [0.0, 1.0, 4.0]])
    sdf = initial_sdf([cam], render, pivots, tau=1.0)
    assert sdf[0] < 0 < sdf[1]


def test_fusion_rejects_depth_maps_of_the_wrong_size():
    with pytest.raises(ValueError, match="expected"):
        initial_sdf([camera_at_origin()], lambda c: torch.ones(10, 10), torch.zeros(3, 3), tau=TAU)


def test_occupancy_parameterisation_round_trips_and_keeps_signs():
    sdf = torch.linspace(-1, 1, 21, dtype=torch.float64)
    occ = occupancy_from_sdf(sdf)
    assert torch.isclose(occ[0], torch.tensor(0.995, dtype=torch.float64))   # inside: occupied
    assert torch.isclose(occ[-1], torch.tensor(0.005, dtype=torch.float64))  # outside: free
    assert torch.allclose(sdf_from_occupancy(occ), sdf)
    base = base_from_sdf(sdf)
    assert torch.isfinite(base).all()
    shift = torch.zeros_like(base, requires_grad=True)
    out = sdf_from_base_shift(base, shift)
    assert torch.allclose(out, sdf, atol=1e-9)
    out.sum().backward()
    assert (shift.grad < 0).all()  # raising the shift raises occupancy, i.e. moves inwards


def test_reset_blends_fusion_into_the_base_and_keeps_the_shift():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, generator=g, dtype=torch.float64)
    shift = torch.randn(50, generator=g, dtype=torch.float64) * 0.3
    fused = torch.rand(50, generator=g, dtype=torch.float64) * 2 - 1
    new_base = reset_base(base, shift, fused)
    expected = (0.4 * occupancy_from_sdf(fused) + 0.6 * occupancy(base, shift)).clamp(0.005, 0.995)
    assert torch.allclose(occupancy(new_base, shift), expected)
    assert torch.allclose(blended_occupancy(torch.ones(1), torch.ones(1)), torch.tensor([0.995]))
