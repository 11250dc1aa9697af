"""Undistortion: a distorted dot pattern comes out where the pinhole camera projects the dots."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from milo_backend.data.camera import Camera
from milo_backend.data.images import load_image
from milo_backend.data.undistort import colmap_camera, has_distortion, pinhole_for, undistort_views
from milo_backend.events import NullReporter

W, H = 200, 150
SIGMA = 1.3


def dot_points() -> np.ndarray:
    """3D points (camera frame) on a grid at depth 4 covering most of a ~90 degree field of view."""
    xs, ys = np.meshgrid(np.linspace(-1.5, 1.5, 9), np.linspace(-1.1, 1.1, 7))
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 4.0)], axis=1)


def render_dots(positions: np.ndarray, width: int, height: int) -> np.ndarray:
    """Gaussian dots centred at pixel coordinates `positions` (pixel centres at +0.5)."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    img = np.zeros((height, width))
    for x, y in positions:
        img += np.exp(-((u - x) ** 2 + (v - y) ** 2) / (2 * SIGMA ** 2))
    return np.clip(img, 0, 1)


def centroid(img: np.ndarray, x: float, y: float, r: int = 4) -> np.ndarray:
    x0, y0 = int(x), int(y)
    win = img[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
    v, u = np.mgrid[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1] + 0.5
    return np.array([(win * u).sum() / win.sum(), (win * v).sum() / win.sum()])


CAMERAS = {
    "OPENCV": [120.0, 118.0, 101.0, 74.0, -0.25, 0.06, 0.002, -0.001],
    "FULL_OPENCV": [120.0, 118.0, 99.0, 76.0, -0.2, 0.03, 0.001, 0.001, 0.01, 0.0, 0.0, 0.0],
    "SIMPLE_RADIAL": [120.0, 100.0, 75.0, -0.15],
    "OPENCV_FISHEYE": [110.0, 110.0, 100.0, 75.0, 0.05, -0.02, 0.0, 0.0],
}


@pytest.mark.parametrize("model", list(CAMERAS))
def test_undistorted_dots_land_on_the_pinhole_projection(tmp_path, model):
    distorted = colmap_camera(model, W, H, CAMERAS[model])
    assert has_distortion(distorted)
    pts = dot_points()
    img = render_dots(distorted.img_from_cam(pts), W, H)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp_path / "dots.png")

    base = Camera("dots.png", W, H, 0, 0, 0, 0, image_path=tmp_path / "dots.png")
    [cam] = undistort_views([(base, distorted)], tmp_path / "out", NullReporter())
    out, _ = load_image(cam.image_path)
    gray = out.mean(axis=2)
    assert gray.shape == (cam.height, cam.width)

    expected, _ = cam.project(pts)  # the pinhole camera of the undistorted image
    inside = (expected[:, 0] > 6) & (expected[:, 0] < cam.width - 6) & (expected[:, 1] > 6) & (expected[:, 1] < cam.height - 6)
    assert inside.sum() >= 20
    errors = np.array([np.linalg.norm(centroid(gray, *p) - p) for p in expected[inside]])
    assert errors.max() < 0.5, errors.max()
    assert np.median(errors) < 0.15


@pytest.mark.parametrize("model", list(CAMERAS))
def test_no_invalid_border_remains(tmp_path, model):
    distorted = colmap_camera(model, W, H, CAMERAS[model])
    Image.fromarray(np.full((H, W, 3), 255, np.uint8)).save(tmp_path / "white.png")
    base = Camera("white.png", W, H, 0, 0, 0, 0, image_path=tmp_path / "white.png")
    [cam] = undistort_views([(base, distorted)], tmp_path / "out", NullReporter())
    out, _ = load_image(cam.image_path)
    assert out.min() > 0.99  # every output pixel came from inside the photo
    # the crop keeps the focal length and loses only a small margin
    pin = pinhole_for(distorted)
    assert pin.focal_length_x == pytest.approx(distorted.focal_length_x)
    assert 0.6 * W < cam.width <= 2 * W and 0.6 * H < cam.height <= 2 * H


def test_undistortion_is_cached_and_redone_when_intrinsics_change(tmp_path):
    distorted = colmap_camera("OPENCV", W, H, CAMERAS["OPENCV"])
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 255, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    base = Camera("images/a.png", W, H, 0, 0, 0, 0, world_to_cam=np.diag([1.0, -1, -1, 1]),
                  image_path=tmp_path / "a.png", split="test")
    [cam] = undistort_views([(base, distorted)], tmp_path / "out")
    assert cam.name == "images/a.png" and cam.split == "test" and cam.image_path.name == "a.png"
    np.testing.assert_array_equal(cam.world_to_cam, base.world_to_cam)
    rgb, alpha = load_image(cam.image_path)
    assert alpha is not None and abs(alpha.mean() - 128 / 255) < 1e-3  # alpha survives undistortion
    stamp = os.stat(cam.image_path).st_mtime_ns

    [again] = undistort_views([(base, distorted)], tmp_path / "out")
    assert os.stat(again.image_path).st_mtime_ns == stamp and again == cam

    changed = colmap_camera("OPENCV", W, H, CAMERAS["OPENCV"][:4] + [-0.1, 0.0, 0.0, 0.0])
    [redone] = undistort_views([(base, changed)], tmp_path / "out")
    assert os.stat(redone.image_path).st_mtime_ns != stamp and redone.width != cam.width


def test_pinhole_models_are_not_distorted():
    assert not has_distortion(colmap_camera("PINHOLE", W, H, [100, 100, 100, 75]))
    assert not has_distortion(colmap_camera("SIMPLE_RADIAL", W, H, [100, 100, 75, 0.0]))
    pin = pinhole_for(colmap_camera("SIMPLE_PINHOLE", W, H, [100, 100, 75]))
    assert pin.model_name == "PINHOLE" and list(pin.params) == [100, 100, 100, 75]
