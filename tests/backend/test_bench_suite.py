"""The robustness suite's parts: Cycles scenes with ground truth and crop box, the alignment of a run
from photos to the true frame, the Gaussian count column."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from milo_backend.atomic import write_json
from milo_backend.bench.suite import alignment_to_truth, gaussian_counts
from milo_backend.bench.suite_scenes import SCENES, make_suite_scene, suite_cameras
from milo_backend.data.camera import Camera
from milo_backend.mesh_io import read_mesh
from milo_backend.mesh_metrics import read_crop


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy (Blender as a module) is not installed")
def test_a_suite_scene_is_rendered_with_its_ground_truth_and_a_crop_above_the_ground(tmp_path):
    out = make_suite_scene("ground", tmp_path / "scène ground", n_views=2, size=32, samples=4)
    frames = json.loads((out / "transforms.json").read_text())["frames"]
    assert [f["file_path"] for f in frames] == ["images/0001.png", "images/0002.png"]
    img = np.asarray(Image.open(out / "images" / "0001.png"))
    assert img.shape == (32, 32, 3) and img.std() > 10          # a picture, not a blank
    verts, faces = read_mesh(out / "ground_truth.obj")
    lo, hi = read_crop(out / "crop.json")
    # only the object is ground truth: it stands on z = 0 and is about a unit across, not the 40 m ground
    assert len(faces) > 1000 and verts[:, 2].min() == pytest.approx(0.0, abs=1e-4)
    assert np.ptp(verts, axis=0).max() < 3.0
    diag = float(np.linalg.norm(np.ptp(verts, axis=0)))
    assert lo[2] == pytest.approx(0.02 * diag, rel=1e-3) and np.allclose(hi, verts.max(axis=0))
    # the photos' cameras are the suite's cameras (OpenGL axes in the file)
    cam = suite_cameras(SCENES["ground"], 2, 32)[1]
    c2w = np.asarray(frames[1]["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
    assert np.allclose(c2w, cam.cam_to_world, atol=1e-9)
    # a second call reuses the scene
    stamp = (out / "images" / "0001.png").stat().st_mtime_ns
    make_suite_scene("ground", out, n_views=2, size=32, samples=4)
    assert (out / "images" / "0001.png").stat().st_mtime_ns == stamp


def test_a_run_from_photos_is_aligned_to_the_true_cameras(tmp_path):
    truth = suite_cameras(SCENES["two"], 8, 32)
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    s, t = 0.37, np.array([1.0, -2.0, 0.5])
    # the SfM frame: x_sfm = s R x_true + t; a camera's world_to_cam changes accordingly
    sfm = []
    for c in truth:
        c2w = c.cam_to_world.copy()
        c2w[:3, :3] = R @ c2w[:3, :3]
        c2w[:3, 3] = s * R @ c2w[:3, 3] + t
        sfm.append(Camera(name=c.name, width=c.width, height=c.height, fx=c.fx, fy=c.fy, cx=c.cx, cy=c.cy,
                          world_to_cam=np.linalg.inv(c2w)))
    write_json(tmp_path / "cameras.json", {"cameras": [c.to_json() for c in sfm]})
    T = alignment_to_truth(tmp_path, truth)
    p = np.random.default_rng(0).normal(size=(20, 3))
    p_sfm = p @ (s * R).T + t
    assert np.allclose(p_sfm @ T[:3, :3].T + T[:3, 3], p, atol=1e-9)


def test_gaussian_counts_sample_the_run_evenly():
    events = [{"event": "progress", "stage": "train", "step": i, "gaussians": n}
              for i, n in enumerate([100, 5000, 67200, 67200, 14000, 12800])]
    events.insert(2, {"event": "progress", "stage": "mesh", "step": 1})
    assert gaussian_counts(events) == "0.1k 5.0k 67.2k 67.2k 14.0k 12.8k"
    assert gaussian_counts([]) == "-"
