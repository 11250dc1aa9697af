"""COLMAP datasets written with pycolmap (binary and text), distorted models, and broken inputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from milo_backend.data.camera import look_at
from milo_backend.data.dataset import load_dataset
from milo_backend.data.undistort import colmap_camera
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter

W, H = 64, 48
EYES = [(4.0, 0.0, 1.0), (0.0, 4.0, 1.0), (-4.0, 0.5, 1.0)]


def write_model(root: Path, model="PINHOLE", params=(60.0, 60.0, 32.0, 24.0), fmt="bin", names=None) -> list[np.ndarray]:
    """A 3-image COLMAP dataset with one observed point per image pair; returns the world_to_cam matrices."""
    names = names or [f"img {i} é.png" for i in range(len(EYES))]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(colmap_camera(model, W, H, list(params), camera_id=1))
    poses = []
    for i, (eye, name) in enumerate(zip(EYES, names), start=1):
        w2c = look_at(eye, (0, 0, 0))
        poses.append(w2c)
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, keypoints=np.array([[10.0, 10.0]]), camera_id=1,
                                                        image_id=i), pycolmap.Rigid3d(w2c[:3, :4]))
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(root / "images" / name)
    track = pycolmap.Track()
    for i in (1, 2, 3):
        track.add_element(i, 0)
    rec.add_point3D(np.array([0.1, 0.2, 0.3]), track, np.array([255, 128, 0], np.uint8))
    out = root / "sparse" / "0"
    out.mkdir(parents=True, exist_ok=True)
    rec.write_text(out) if fmt == "txt" else rec.write_binary(out)
    return poses


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_reads_binary_and_text_models(tmp_path, fmt):
    root = tmp_path / "scène colmap"
    poses = write_model(root, fmt=fmt, names=[f"img{i}.png" for i in range(3)])
    ds = load_dataset(root, tmp_path / "work", NullReporter())
    assert ds.kind == "colmap" and len(ds.cameras) == 3
    for cam, w2c, i in zip(ds.cameras, poses, range(3)):
        assert cam.name == f"img{i}.png" and cam.image_path == root / "images" / f"img{i}.png"
        assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (W, H, 60.0, 60.0, 32.0, 24.0)
        np.testing.assert_allclose(cam.world_to_cam, w2c, atol=1e-9)
    np.testing.assert_allclose(ds.points, [[0.1, 0.2, 0.3]])
    np.testing.assert_allclose(ds.point_colors, [[1.0, 128 / 255, 0.0]])


def test_model_directly_in_sparse_and_non_ascii_names(tmp_path):
    write_model(tmp_path)
    for f in (tmp_path / "sparse" / "0").iterdir():
        f.rename(tmp_path / "sparse" / f.name)
    (tmp_path / "sparse" / "0").rmdir()
    ds = load_dataset(tmp_path, tmp_path / "work")
    assert [c.name for c in ds.cameras] == ["img 0 é.png", "img 1 é.png", "img 2 é.png"]
    assert all(c.image_path.is_file() for c in ds.cameras)


def test_distorted_model_is_undistorted_into_the_work_folder(tmp_path):
    write_model(tmp_path, model="OPENCV", params=(60.0, 60.0, 32.0, 24.0, -0.1, 0.01, 0.0, 0.0))
    ds = load_dataset(tmp_path, tmp_path / "work")
    cam = ds.cameras[0]
    assert cam.image_path.parent == tmp_path / "work" / "undistorted"
    assert cam.fx == 60.0 and Image.open(cam.image_path).size == (cam.width, cam.height)


def test_broken_partial_and_incomplete_inputs_raise_milo_error(tmp_path):
    good = tmp_path / "good"
    write_model(good)

    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    data = (truncated / "sparse/0/images.bin").read_bytes()
    (truncated / "sparse/0/images.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(MiloError, match="Cannot read the COLMAP model") as err:
        load_dataset(truncated, tmp_path / "w1")
    assert err.value.hint and "sparse" in err.value.path

    partial = tmp_path / "partial"
    shutil.copytree(good, partial)
    (partial / "sparse/0/points3D.bin").unlink()
    with pytest.raises(MiloError, match="missing points3D"):
        load_dataset(partial, tmp_path / "w2")

    no_images = tmp_path / "no_images"
    shutil.copytree(good, no_images)
    (no_images / "images" / "img 1 é.png").unlink()
    with pytest.raises(MiloError, match="img 1 é.png"):
        load_dataset(no_images, tmp_path / "w3")

    empty_sparse = tmp_path / "empty_sparse"
    (empty_sparse / "sparse").mkdir(parents=True)
    with pytest.raises(MiloError, match="No COLMAP model"):
        load_dataset(empty_sparse, tmp_path / "w4")


def test_a_truncated_cameras_file_is_refused_naming_the_camera_and_field(tmp_path):
    """`truncate -s 32 sparse/0/cameras.bin` once loaded with focal length 0 and training turned to NaN."""
    good = tmp_path / "good"
    write_model(good)
    cams = good / "sparse/0/cameras.bin"
    cams.write_bytes(cams.read_bytes()[:32])
    with pytest.raises(MiloError) as err:
        load_dataset(good, tmp_path / "w")
    assert "focal length fx=0.0" in err.value.message and "'img 0 é.png'" in err.value.message
    assert "structure from motion" in err.value.hint


def test_a_point_with_non_finite_coordinates_is_refused_naming_the_file(tmp_path):
    root = tmp_path / "model"
    write_model(root)
    points = root / "sparse/0/points3D.bin"  # count (u64), then id (u64) and x, y, z (f64) of the point
    data = bytearray(points.read_bytes())
    data[16:24] = np.array([np.nan]).tobytes()
    points.write_bytes(bytes(data))
    with pytest.raises(MiloError) as err:
        load_dataset(root, tmp_path / "w")
    assert "points3D" in err.value.message and "non-finite" in err.value.message
    assert str(root / "sparse" / "0") in err.value.message


@pytest.mark.parametrize("bad, field", [
    ({"fx": 0.0}, "focal length"), ({"cx": 500.0}, "principal point"), ({"width": 0}, "image size"),
    ({"pose": np.diag([1.0, 1.0, -1.0, 1.0])}, "rotation"), ({"pose": np.full((4, 4), np.nan)}, "non-finite"),
])
def test_impossible_cameras_are_refused_with_the_file_camera_and_field(bad, field):
    from milo_backend.data.camera import Camera, check_cameras

    pose = bad.get("pose", look_at((4.0, 0.0, 1.0), (0, 0, 0)))
    kw = {"width": W, "height": H, "fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 24.0}
    kw.update({k: v for k, v in bad.items() if k != "pose"})
    check_cameras([Camera(name="ok.png", width=W, height=H, fx=60.0, fy=60.0, cx=32.0, cy=24.0,
                          world_to_cam=look_at((4.0, 0.0, 1.0), (0, 0, 0)))], "m")  # a good one passes
    with pytest.raises(MiloError) as err:
        check_cameras([Camera(name="b.png", **kw, world_to_cam=pose)], "sparse/0")
    assert field in err.value.message and "'b.png'" in err.value.message and "sparse/0" in err.value.message
