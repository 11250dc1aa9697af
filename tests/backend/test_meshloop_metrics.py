"""Mesh files and `eval OUT --gt MESH`: metrics on meshes whose answer is known."""
from __future__ import annotations

import json

import numpy as np
import pytest

from milo_backend.errors import MiloError
from milo_backend.mesh_io import read_mesh, write_mesh_ply
from milo_backend.mesh_metrics import SurfaceDistance, bbox_diagonal, mesh_metrics, point_triangle_distance


def uv_sphere(radius: float = 1.0, n: int = 48, center=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    th, ph = np.meshgrid(np.linspace(0, np.pi, n + 1), np.linspace(0, 2 * np.pi, 2 * n + 1), indexing="ij")
    v = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    idx = np.arange(len(v)).reshape(th.shape)
    f = [(idx[i, j], idx[i + 1, j], idx[i + 1, j + 1]) for i in range(n) for j in range(2 * n)]
    f += [(idx[i, j], idx[i + 1, j + 1], idx[i, j + 1]) for i in range(n) for j in range(2 * n)]
    return v * radius + np.asarray(center), np.asarray(f, dtype=np.int64)


def test_point_triangle_distance_is_exact():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 300, 3))
    p = rng.normal(size=(300, 3)) * 2
    d = point_triangle_distance(p, a, b, c)
    # dense barycentric sampling of each triangle can only over-estimate the distance
    uv = rng.random((4000, 2))
    uv = np.where(uv.sum(1, keepdims=True) > 1, 1 - uv, uv)
    q = a[None] + uv[:, 0, None, None] * (b - a)[None] + uv[:, 1, None, None] * (c - a)[None]
    sampled = np.linalg.norm(q - p[None], axis=2).min(0)
    assert (d <= sampled + 1e-9).all() and np.median(sampled - d) < 0.02
    # points on the triangles and at their corners are at distance 0
    assert np.allclose(point_triangle_distance(q[0], a, b, c), 0, atol=1e-12)
    assert np.allclose(point_triangle_distance(c, a, b, c), 0)


def test_surface_distance_matches_brute_force():
    v, f = uv_sphere(1.0, n=12)
    v = v * np.array([1.0, 0.6, 0.3])                  # an ellipsoid: triangles of very different shapes
    rng = np.random.default_rng(1)
    p = rng.normal(size=(500, 3)) * 0.8
    brute = np.stack([point_triangle_distance(p, *(np.repeat(v[f[i:i + 1, k]], len(p), 0) for k in range(3)))
                      for i in range(len(f))]).min(0)
    assert np.allclose(SurfaceDistance(v, f, resolution=0.05)(p), brute, atol=1e-12)


def test_a_mesh_against_itself_is_perfect():
    v, f = uv_sphere()
    m = mesh_metrics(v, f, v, f, n_samples=5_000)
    assert m["accuracy"] < 1e-9 and m["completeness"] < 1e-9 and m["chamfer"] < 1e-9
    assert m["precision"] == m["recall"] == m["fscore"] == 1.0
    assert m["vertices"] == len(v) == m["vertices_in_box"]


@pytest.mark.parametrize("offset", [0.005, 0.02])
def test_an_offset_surface_has_the_known_error(offset):
    """A sphere grown by `offset` diagonals: every point is that far from the ground truth."""
    v, f = uv_sphere(1.0)
    diag = bbox_diagonal(v)
    grown = v * (1 + offset * diag)
    m = mesh_metrics(grown, f, v, f, threshold=0.01, n_samples=5_000)
    # exact up to the facets' sagitta (the tessellation is ~200x finer than the sphere)
    assert m["accuracy"] == pytest.approx(offset, rel=0.03)
    assert m["completeness"] == pytest.approx(offset, rel=0.03)
    assert m["chamfer"] == pytest.approx(offset, rel=0.03)
    expected = 1.0 if offset < 0.01 else 0.0
    assert m["precision"] == m["recall"] == m["fscore"] == expected
    assert m["offset"] == pytest.approx(offset, rel=0.03)  # grown: outside the ground truth
    if offset < 0.01:  # (grown by 2%, the sphere pokes out of the crop box: the cut-off parts are holes)
        # off everywhere by less than the outlier distance: no outliers, the inlier Chamfer is the Chamfer
        assert m["outliers_prediction"] == m["outliers_gt"] == 0.0 and m["chamfer_inliers"] == m["chamfer"]
    shrunk = mesh_metrics(v * (1 - offset * diag), f, v, f, threshold=0.01, n_samples=5_000)
    assert shrunk["offset"] == pytest.approx(-offset, rel=0.03)


def test_background_outside_the_ground_truth_box_is_not_judged():
    v, f = uv_sphere(1.0)
    floor_v = np.array([[-20, -20, -5], [20, -20, -5], [20, 20, -5], [-20, 20, -5]], float)
    floor_f = np.array([[0, 1, 2], [0, 2, 3]]) + len(v)
    pred_v, pred_f = np.vstack([v, floor_v]), np.vstack([f, floor_f])
    m = mesh_metrics(pred_v, pred_f, v, f, n_samples=5_000)
    assert m["fscore"] == 1.0 and m["accuracy"] < 1e-9
    assert m["vertices"] == len(v) + 4 and m["vertices_in_box"] == len(v)
    # half of the object missing: recall (completeness) drops, precision does not
    keep = f[(v[f][:, :, 2] > 0).all(axis=1)]
    half = mesh_metrics(v, keep, v, f, n_samples=5_000)
    assert half["precision"] == 1.0 and 0.4 < half["recall"] < 0.6 and half["completeness"] > 0.05


def test_a_crop_box_leaves_out_the_ground_an_object_stands_on(tmp_path, cli):
    """An object on a ground plane: the ground touches the object's box, so without a crop box the
    predicted ground inside the box counts as error; the suite's crop box starts above it."""
    v, f = uv_sphere(0.5, center=(0.0, 0.0, 0.5))            # resting on z = 0
    ground_v = np.array([[-3, -3, 0], [3, -3, 0], [3, 3, 0], [-3, 3, 0]], float)
    ground_f = np.array([[0, 1, 2], [0, 2, 3]]) + len(v)
    pred_v, pred_f = np.vstack([v, ground_v]), np.vstack([f, ground_f])
    plain = mesh_metrics(pred_v, pred_f, v, f, n_samples=5_000)
    assert plain["precision"] < 0.9                            # the ground's square under the sphere
    lo, hi = np.array([-0.6, -0.6, 0.02]), np.array([0.6, 0.6, 1.1])
    cropped = mesh_metrics(pred_v, pred_f, v, f, n_samples=5_000, crop=(lo, hi))
    assert cropped["fscore"] == 1.0 and cropped["accuracy"] < 1e-9
    # the same through the command line, with the box in a file
    run = tmp_path / "run"
    write_mesh_ply(run / "mesh.ply", pred_v, pred_f)
    gt = tmp_path / "gt.obj"
    gt.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in v) + "".join(f"f {a+1} {b+1} {c+1}\n" for a, b, c in f))
    box = tmp_path / "crop box.json"
    box.write_text(json.dumps({"lo": lo.tolist(), "hi": hi.tolist()}))
    code, events, err = cli.run("eval", run, "--gt", gt, "--crop", box)
    assert code == 0, err
    assert events[-1]["outputs"]["fscore"] == 1.0
    box.write_text(json.dumps({"lo": [0, 0, 0], "hi": [1, 1]}))
    code, events, _ = cli.run("eval", run, "--gt", gt, "--crop", box)
    assert code == 2 and "crop box" in events[-1]["message"] and str(box) in events[-1]["message"]


def test_far_pieces_and_holes_are_counted_as_outliers():
    """A floater inside the ground truth's box and a missing cap: the Chamfer distance grows, the inlier
    Chamfer distance stays near 0 (only the hole's rim counts), and the outlier shares name the two."""
    v, f = uv_sphere(1.0)
    # a square of side 0.45 near a corner of the sphere's box, 5-19% of the diagonal from the sphere
    sq = np.array([[0.5, 0.5, 0.95], [0.95, 0.5, 0.95], [0.95, 0.95, 0.95], [0.5, 0.95, 0.95]])
    sq_f = np.array([[0, 1, 2], [0, 2, 3]]) + len(v)
    cap = (v[f][:, :, 2] < -0.8).all(axis=1)                # the south cap: a hole of ~10% of the area
    pred_v, pred_f = np.vstack([v, sq]), np.vstack([f[~cap], sq_f])
    m = mesh_metrics(pred_v, pred_f, v, f, n_samples=20_000)
    assert m["chamfer_inliers"] < 0.1 * m["chamfer"] and m["chamfer"] > 0.003
    floater_area, sphere_area = 0.45 ** 2, 4 * np.pi
    assert m["outliers_prediction"] == pytest.approx(floater_area / (floater_area + 0.9 * sphere_area), abs=0.005)
    # the cap's samples further than 3% of the diagonal from its rim (z < -0.8 cut, rim radius 0.6)
    assert 0.05 < m["outliers_gt"] < 0.1
    assert m["outlier_distance"] == pytest.approx(0.03)


def test_ply_and_obj_round_trip(tmp_path):
    v, f = uv_sphere(0.5, n=6)
    colors = (np.arange(len(v) * 3) % 256).astype(np.uint8).reshape(-1, 3)
    path = write_mesh_ply(tmp_path / "maillage é" / "mesh.ply", v, f, colors)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian")
    v2, f2 = read_mesh(path)
    assert np.allclose(v2, v, atol=1e-6) and (f2 == f).all()
    # the Blender extension's reader gets the same vertices, faces and colours
    from milo_blender.core.mesh_ply import read_mesh_ply
    data = read_mesh_ply(path)
    assert np.allclose(data.vertices, v, atol=1e-6) and (data.corners.reshape(-1, 3) == f).all()
    assert np.allclose(data.colors * 255, colors, atol=0.51)

    obj = tmp_path / "quad.obj"
    obj.write_text("# a quad and a triangle\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\n"
                   "f 1/1/1 2/1/1 3/1/1 4/1/1\nf -4 -2 -1\n", encoding="utf-8")
    v3, f3 = read_mesh(obj)
    assert v3.shape == (4, 3) and f3.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]


def test_bad_mesh_files_raise_milo_errors(tmp_path):
    with pytest.raises(MiloError, match="not found"):
        read_mesh(tmp_path / "absent.ply")
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nf 1 2 3\n")
    with pytest.raises(MiloError, match="missing vertices"):
        read_mesh(bad)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"not a ply at all")
    with pytest.raises(MiloError, match="not a readable mesh") as e:
        read_mesh(junk)
    assert e.value.path == str(junk)


def test_eval_gt_command(tmp_path, cli):
    v, f = uv_sphere(1.0, n=24)
    run = tmp_path / "run ünï"
    write_mesh_ply(run / "mesh.ply", v * 1.02, f)       # 2% of the radius = 0.58% of the diagonal
    gt = tmp_path / "gt.obj"
    gt.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in v) + "".join(f"f {a+1} {b+1} {c+1}\n" for a, b, c in f))
    code, events, err = cli.run("eval", run, "--gt", gt, "--threshold", 0.01)
    assert code == 0, err
    m = events[-1]["outputs"]
    assert m["fscore"] == 1.0 and m["chamfer"] == pytest.approx(0.02 / np.sqrt(12), rel=0.05)
    assert m["vertices"] == len(v)
    assert json.loads((run / "mesh_eval.json").read_text())["fscore"] == 1.0

    code, events, _ = cli.run("eval", tmp_path / "empty run", "--gt", gt)
    assert code == 2 and events[-1]["event"] == "error"
    (tmp_path / "no mesh").mkdir()
    code, events, _ = cli.run("eval", tmp_path / "no mesh", "--gt", gt)
    assert code == 2 and "extract" in events[-1]["hint"]


def test_readme_documents_extract_eval_gt_and_the_mesh_example():
    """The README's mesh section stays in step with the CLI and with the tested docstring example."""
    from pathlib import Path

    from test_mesh_example import docstring_example

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert docstring_example().strip() in readme
    for text in ("milo-backend extract OUT", "eval OUT --gt MESH", "mesh_stats.json", "--no-mesh", "--depth-prior"):
        assert text in readme, text
