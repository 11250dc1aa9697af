"""Delaunay tetrahedralisation: orientation, degenerate inputs, both backends."""
import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull

from milo_backend.errors import MiloError
from milo_backend.mesh import delaunay

BACKENDS = ["shull", "scipy"]


def signed_volumes(points: np.ndarray, tets: np.ndarray) -> np.ndarray:
    a = points[tets[:, 0]]
    return np.einsum("ij,ij->i", np.cross(points[tets[:, 1]] - a, points[tets[:, 2]] - a),
                     points[tets[:, 3]] - a) / 6.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_points_positive_tets_filling_the_hull(backend):
    pts = np.random.default_rng(0).normal(size=(3000, 3))
    tets = delaunay(torch.from_numpy(pts), backend=backend)
    assert tets.dtype == torch.int64 and tets.shape[1] == 4
    vol = signed_volumes(pts, tets.numpy())
    assert (vol > 0).all()
    # A tetrahedralisation of the points tiles their convex hull exactly.
    assert np.isclose(vol.sum(), ConvexHull(pts).volume, rtol=1e-9)


def test_backends_agree_on_general_position_points():
    pts = np.random.default_rng(1).random((2000, 3)).astype(np.float32)
    a, b = delaunay(pts, backend="shull"), delaunay(pts, backend="scipy")
    assert a.shape == b.shape
    canon = lambda t: {tuple(sorted(r)) for r in t.tolist()}  # noqa: E731
    assert canon(a) == canon(b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grid_duplicates_and_partly_coplanar_points_do_not_crash(backend):
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij"), -1).reshape(-1, 3)  # cospherical
    pts = np.concatenate([grid, grid[:10]])                                               # duplicates
    tets = delaunay(pts, backend=backend).numpy()
    vol = signed_volumes(pts, tets)
    assert (vol > 0).all() and np.isclose(vol.sum(), 27.0)
    plane_plus_apex = np.concatenate([np.c_[np.random.default_rng(2).random((30, 2)), np.zeros(30)],
                                      [[0.5, 0.5, 1.0]]])
    tets = delaunay(plane_plus_apex, backend=backend).numpy()
    assert (signed_volumes(plane_plus_apex, tets) > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_points_make_one_tetrahedron(backend):
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    tets = delaunay(pts, backend=backend).numpy()
    assert tets.shape == (1, 4) and signed_volumes(pts, tets)[0] > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pts", [np.eye(3), np.ones((10, 3)),
                                 np.c_[np.random.default_rng(3).random((40, 2)), np.zeros(40)]],
                         ids=["three points", "all duplicates", "coplanar"])
def test_no_volume_is_a_clear_error(backend, pts):
    with pytest.raises(MiloError) as err:
        delaunay(pts, backend=backend)
    assert "do not span a volume" in err.value.message and err.value.hint


def test_non_finite_pivots_are_left_out():
    rng = np.random.default_rng(4)
    pts = rng.random((200, 3))
    pts[[7, 50]] = np.nan
    pts[99, 1] = np.inf
    tets = delaunay(torch.from_numpy(pts)).numpy()
    assert not np.isin(tets, [7, 50, 99]).any()
    clean = np.delete(pts, [7, 50, 99], axis=0)
    assert np.isclose(signed_volumes(pts, tets).sum(), ConvexHull(clean).volume)


def test_result_follows_the_input_device_and_rejects_bad_shapes():
    pts = torch.rand(50, 3)
    assert delaunay(pts).device == pts.device
    with pytest.raises(ValueError):
        delaunay(torch.rand(10, 2))
