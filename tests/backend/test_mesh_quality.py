"""Mesh quality without ground truth: held-out sparse points, mesh-only views, roughness."""
import numpy as np
import pytest
import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.data.points import SparsePoints
from milo_backend.mesh_quality import point_accuracy, render_mesh_colors, roughness


def grid(n=60, noise=0.0, seed=0):
    """A unit square in z = 0 as an n x n grid of quads (two triangles each), z jittered by `noise`."""
    xs = np.linspace(0, 1, n)
    x, y = np.meshgrid(xs, xs, indexing="ij")
    z = np.random.default_rng(seed).normal(0, noise, x.shape) if noise else np.zeros_like(x)
    verts = np.stack([x, y, z], -1).reshape(-1, 3)
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1], i[1:, :-1], i[:-1, 1:], i[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return verts, faces


def test_roughness_is_zero_on_a_plane_and_grows_with_noise():
    flat = roughness(*grid(), radius=0.05)
    assert flat["median_deg"] < 1e-3 and flat["p90_deg"] < 1e-3
    bumpy = roughness(*grid(noise=0.003), radius=0.05)
    rougher = roughness(*grid(noise=0.01), radius=0.05)
    assert 1.0 < bumpy["median_deg"] < rougher["median_deg"] and bumpy["p90_deg"] > bumpy["median_deg"]


def test_point_accuracy_in_shares_of_the_extent():
    verts, faces = grid()
    rng = np.random.default_rng(1)
    points = np.c_[rng.uniform(0.1, 0.9, (1000, 2)), np.r_[np.full(800, 0.004), np.full(200, 0.03)]]
    acc = point_accuracy(verts, faces, points, extent=1.0)
    assert acc["points"] == 1000 and acc["median_pct"] == pytest.approx(0.4, abs=0.01)
    assert acc["within_0.5pct"] == pytest.approx(0.8) and acc["within_1pct"] == pytest.approx(0.8)
    assert acc["p90_pct"] == pytest.approx(3.0, abs=0.01)
    assert "unavailable" in point_accuracy(verts, faces, np.zeros((0, 3)), extent=1.0)  # never a 0


def test_mesh_colours_are_interpolated_at_each_pixel():
    verts = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0]])
    faces = torch.tensor([[0, 1, 2]])
    colors = torch.eye(3)
    cam = Camera("c", 64, 64, 60.0, 60.0, 32.0, 32.0, look_at((0, 0, 3.0), (0, 0, 0), up=(0, 1, 0)))
    image, shade, covered = render_mesh_colors(verts, faces, colors, cam)
    assert covered.sum() > 500 and (shade[covered[..., 0] > 0] > 0.9).all()  # facing the camera
    inside = image[covered[..., 0] > 0]
    assert torch.allclose(inside.sum(-1), torch.ones(len(inside)), atol=1e-4)  # weights sum to one
    # the pixel nearest the projected centroid carries about a third of each colour
    uv = cam.project(verts.mean(0, keepdim=True).double().numpy())[0][0]
    assert torch.allclose(image[int(uv[1]), int(uv[0])], torch.full((3,), 1 / 3), atol=0.05)


def test_every_fifth_well_measured_point_is_held_out_and_the_rest_start_the_gaussians(tmp_path):
    from milo_backend.config import TrainConfig
    from milo_backend.data.dataset import Dataset
    from milo_backend.events import NullReporter
    from milo_backend.run_folder import RunFolder
    from milo_backend.train import initial_model

    n = 2000  # above MIN_TRIANGULATED_POINTS: the Gaussians start at the points
    track = np.where(np.arange(n) % 4 == 0, 2, 5)       # a quarter seen in only 2 photos
    error = np.where(np.arange(n) % 7 == 0, 1.5, 0.4)   # some with a large error
    sparse = SparsePoints.from_arrays(np.random.default_rng(0).normal(size=(n, 3)), np.full((n, 3), 0.5),
                                      track, error)
    kept, scored = sparse.split_scored()
    good = sparse.well_measured()
    assert len(scored) == good.sum() // 5 and scored.well_measured().all()
    assert len(kept) + len(scored) == n and sparse.split_scored()[1].xyz.tolist() == scored.xyz.tolist()

    cams = [Camera(f"c{i}", 32, 32, 30, 30, 16, 16, look_at((4 * np.cos(i), 4 * np.sin(i), 1), (0, 0, 0)))
            for i in range(4)]
    model = initial_model(Dataset(tmp_path, "colmap", cams, sparse), tmp_path, TrainConfig(iterations=100),
                          NullReporter(), "cpu", max_gaussians=10_000)
    held = SparsePoints.load(RunFolder(tmp_path).scored_points)
    assert len(model) == len(kept) and len(held) == len(scored)
    starts = model.params["means"].detach().double().numpy()
    assert not np.isin(held.xyz[:, 0], starts[:, 0].astype(np.float32).astype(np.float64)).any()


def test_eval_and_eval_gt_share_mesh_eval_json(tmp_path):
    import json

    from milo_backend.atomic import merge_json

    path = tmp_path / "mesh_eval.json"
    path.write_text("{ damaged")
    merge_json(path, {"without_ground_truth": {"roughness": {"median_deg": 3.0}}})
    merge_json(path, {"chamfer_pct": 0.4, "fscore": 0.9})
    merge_json(path, {"fscore": 0.95})
    assert json.loads(path.read_text()) == {"without_ground_truth": {"roughness": {"median_deg": 3.0}},
                                            "chamfer_pct": 0.4, "fscore": 0.95}


def test_point_accuracy_ignores_far_background_faces_and_caps_far_points():
    verts, faces = grid()
    # a huge far-away background triangle: subdividing it to 0.2% of the extent would take gigabytes
    big = np.array([[-1e3, -1e3, 50.0], [1e3, -1e3, 50.0], [0.0, 1e3, 50.0]])
    verts2 = np.r_[verts, big]
    faces2 = np.r_[faces, [[len(verts), len(verts) + 1, len(verts) + 2]]]
    points = np.array([[0.5, 0.5, 0.004], [0.5, 0.5, 0.2]])  # the second is beyond the 5% reach
    acc = point_accuracy(verts2, faces2, points, extent=1.0)
    assert acc["beyond_reach"] == 0.5 and acc["within_0.5pct"] == 0.5
    assert acc["median_pct"] == pytest.approx((0.4 + 5.0) / 2, abs=0.01)
