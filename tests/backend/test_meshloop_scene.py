"""The benchmark's object scenes: photos of a textured mesh whose cameras and ground truth agree."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from milo_backend.data.dataset import load_dataset
from milo_backend.data.mesh_scene import make_mesh_scene
from milo_backend.mesh_io import read_mesh
from milo_backend.bench.mesh_loop import BUNNY

pytestmark = pytest.mark.skipif(not BUNNY.exists(), reason=f"the shared bunny mesh is not at {BUNNY} "
                                                           "(set MILO_SHARED_DATA to the shared data folder)")


def test_mesh_scene_photos_cameras_and_ground_truth_agree(tmp_path):
    """With a transparent background the coverage (alpha) shows where the object is."""
    scene = make_mesh_scene(BUNNY, tmp_path / "lapin é", n_views=8, size=40, background="none")
    dataset = load_dataset(scene, tmp_path / "work")
    assert len(dataset.cameras) == 8 and [c.split for c in dataset.cameras].count("test") == 1
    verts, faces = read_mesh(scene / "ground_truth.obj")
    assert len(faces) == 4968 and abs(np.linalg.norm(verts, axis=1).max() - 1.0) < 1e-5  # in the unit ball
    for cam in dataset.cameras:
        im = Image.open(cam.image_path)
        assert im.mode == "RGBA" and im.size == (40, 40)
        alpha = np.asarray(im)[..., 3]
        uv, z = cam.project(verts)
        px = np.floor(uv).astype(int)
        inside = (z > 0) & (px >= 0).all(1) & (px < 40).all(1)
        assert inside.all()                                          # the object is fully in view
        covered = alpha[px[:, 1], px[:, 0]] > 0
        assert covered.mean() > 0.97                                  # ground truth lands on the photo's object
        assert 0.05 < (alpha > 127).mean() < 0.6                      # object and background both present


def test_the_default_background_is_a_textured_dome(tmp_path):
    scene = make_mesh_scene(BUNNY, tmp_path / "dome", n_views=2, size=24, test_every=0)
    for path in sorted((scene / "images").glob("*.png")):
        im = np.asarray(Image.open(path))
        assert im.shape == (24, 24, 3)
        assert im.reshape(-1, 3).max(axis=1).min() > 20          # no void: every pixel sees a surface
        assert im.reshape(-1, 3).std(axis=0).mean() > 15         # textured
