"""transforms.json datasets: both layouts, intrinsics conventions, OpenGL -> OpenCV, missing files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from milo_backend.data.dataset import load_dataset
from milo_backend.data.images import load_image
from milo_backend.data.transforms import read_transforms
from milo_backend.data.undistort import pinhole_for
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter


def opengl_c2w(eye, target, up=(0.0, 0.0, 1.0)) -> list:
    """Camera-to-world in the NeRF/OpenGL convention: columns x right, y up, z pointing backwards."""
    eye, target, up = (np.asarray(v, float) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, true_up, back, eye
    return m.tolist()


def write_image(path: Path, w: int, h: int, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def blender_like(root: Path, n_train=3, n_test=2, w=40, h=30, angle_x=0.8) -> None:
    """Blender NeRF synthetic layout: transforms_{train,test}.json, file_path without extension."""
    for split, n in (("train", n_train), ("test", n_test)):
        frames = []
        for i in range(n):
            write_image(root / split / f"r_{i}.png", w, h)
            a = 2 * math.pi * i / max(n, 1)
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": opengl_c2w((4 * math.cos(a), 4 * math.sin(a), 1), (0, 0, 0))})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}))


def test_blender_layout_camera_angle_and_opengl_to_opencv(tmp_path):
    blender_like(tmp_path)
    ds = load_dataset(tmp_path, tmp_path / "work", NullReporter())
    assert ds.kind == "transforms" and len(ds.train_cameras) == 3 and len(ds.test_cameras) == 2
    cam = ds.train_cameras[0]
    assert cam.image_path == tmp_path / "train" / "r_0.png" and cam.name == "train/r_0.png"
    assert (cam.width, cam.height) == (40, 30)
    assert cam.fx == pytest.approx(0.5 * 40 / math.tan(0.4)) and cam.fy == pytest.approx(cam.fx)
    assert (cam.cx, cam.cy) == (20.0, 15.0)
    np.testing.assert_allclose(cam.center, [4, 0, 1], atol=1e-9)
    # the looked-at point projects to the image centre, in front of the camera (OpenCV: z forward)
    uv, z = cam.project(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.5, 0.0]]))
    np.testing.assert_allclose(uv[0], [20.0, 15.0], atol=1e-9)
    assert z[0] > 0
    assert uv[1, 1] < 15.0  # world up appears higher in the image (OpenCV y points down)
    assert uv[2, 0] > 20.0  # camera at +x looking at the origin: world +y is to its right
    assert ds.points is None


def test_single_file_with_splits_intrinsics_and_resized_images(tmp_path):
    frames = []
    for i in range(4):
        write_image(tmp_path / "images" / f"f{i}.jpg", 50, 25)  # stored at half the declared 100x50
        frame = {"file_path": f"images/f{i}.jpg", "transform_matrix": opengl_c2w((3, i, 0.5), (0, 0, 0))}
        if i == 3:
            frame["split"] = "test"
        frames.append(frame)
    frames[1]["fl_x"] = 120.0  # per-frame intrinsics override the global ones
    meta = {"fl_x": 80.0, "fl_y": 82.0, "cx": 51.0, "cy": 24.0, "w": 100, "h": 50, "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    views = read_transforms(tmp_path)
    cams = [c for c, _ in views]
    assert [c.split for c in cams] == ["train", "train", "train", "test"]
    assert (cams[0].width, cams[0].height) == (50, 25)
    assert (cams[0].fx, cams[0].fy, cams[0].cx, cams[0].cy) == pytest.approx((40.0, 41.0, 25.5, 12.0))
    assert cams[1].fx == pytest.approx(60.0)
    # the json file itself is also accepted as input
    ds = load_dataset(tmp_path / "transforms.json", tmp_path / "work", eval_split=True)
    assert len(ds.test_cameras) == 1 and ds.root == tmp_path


def test_eval_split_every_8th_and_max_size(tmp_path):
    blender_like(tmp_path, n_train=17, n_test=0, w=64, h=48)
    (tmp_path / "transforms_test.json").unlink()
    ds = load_dataset(tmp_path, tmp_path / "w", eval_split=True, max_size=32)
    assert [c.name for c in ds.test_cameras] == ["train/r_0.png", "train/r_8.png", "train/r_16.png"]
    assert all((c.width, c.height) == (32, 24) for c in ds.cameras)
    assert ds.cameras[0].fx == pytest.approx(0.5 * 32 / math.tan(0.4))
    assert len(load_dataset(tmp_path, tmp_path / "w").test_cameras) == 0


def test_distorted_transforms_are_undistorted_once(tmp_path):
    frames = []
    for i in range(3):
        write_image(tmp_path / "images" / f"{i}.png", 80, 60, value=200)
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": opengl_c2w((3, i, 0.5), (0, 0, 0))})
    meta = {"fl_x": 70.0, "fl_y": 70.0, "cx": 40.0, "cy": 30.0, "w": 80, "h": 60, "k1": -0.1, "k2": 0.01,
            "p1": 0.001, "p2": 0.0, "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    [(_, cam)] = read_transforms(tmp_path)[:1]
    assert cam.model_name == "OPENCV"
    ds = load_dataset(tmp_path, tmp_path / "work")
    c = ds.cameras[0]
    assert c.image_path.parent == tmp_path / "work" / "undistorted" and c.image_path.is_file()
    pin = pinhole_for(cam)
    assert (c.width, c.height, c.fx, c.cx) == (pin.width, pin.height, 70.0, pin.principal_point_x)
    assert load_image(c.image_path)[0].shape == (c.height, c.width, 3)
    stamp = c.image_path.stat().st_mtime_ns
    load_dataset(tmp_path, tmp_path / "work")
    assert c.image_path.stat().st_mtime_ns == stamp  # resume: not redone

    meta["is_fisheye"], meta["k3"], meta["k4"] = True, 0.0, 0.0
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    assert read_transforms(tmp_path)[0][1].model_name == "OPENCV_FISHEYE"
    meta["is_fisheye"], meta["k3"] = False, 0.002
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    assert read_transforms(tmp_path)[0][1].model_name == "FULL_OPENCV"


def test_missing_files_few_are_skipped_with_a_warning_most_are_an_error(tmp_path):
    frames = [{"file_path": f"images/{i}.png", "transform_matrix": opengl_c2w((3, i, 0.5), (0, 0, 0))} for i in range(5)]
    for i in range(3):
        write_image(tmp_path / "images" / f"{i}.png", 20, 20)
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 1.0, "frames": frames}))
    rep = NullReporter()
    views = read_transforms(tmp_path, rep)
    assert len(views) == 3
    [warning] = rep.of("warning")
    assert "images/3.png" in warning["message"] and "images/4.png" in warning["message"]

    (tmp_path / "images" / "2.png").unlink()
    with pytest.raises(MiloError) as err:
        read_transforms(tmp_path)
    assert "3 of the 5" in err.value.message and "images/2.png" in err.value.message


@pytest.mark.parametrize("content, match", [
    ("{not json", "Cannot parse"),
    ('{"frames": []}', "no \"frames\""),
    ('{"frames": [{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}]}', "4x4"),
    ('{"frames": [{"file_path": "a.png", "transform_matrix": [[2,0,0,0],[0,2,0,0],[0,0,2,0],[0,0,0,1]]}]}', "not a rotation"),
    ('{"frames": [{"file_path": "a.png", "transform_matrix": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}]}', "focal"),
])
def test_malformed_transforms_raise_milo_error(tmp_path, content, match):
    write_image(tmp_path / "a.png", 10, 10)
    (tmp_path / "transforms.json").write_text(content)
    with pytest.raises(MiloError, match=match) as err:
        load_dataset(tmp_path, tmp_path / "work")
    assert err.value.path == str(tmp_path / "transforms.json")


def test_fox_transforms_parse(tmp_path):
    from milo_backend.bench import shared_data

    fox = shared_data("fox")
    if not (fox / "transforms.json").exists():
        pytest.skip(f"the shared fox dataset is not at {fox} (set MILO_SHARED_DATA)")
    rep = NullReporter()
    views = read_transforms(fox, rep)
    assert len(views) == 50 and len(rep.of("warning")) == 1  # 17 frames without a photo
    cam, distorted = views[0]
    assert distorted.model_name == "OPENCV" and (distorted.width, distorted.height) == (1080, 1920)
    # every camera looks roughly at the scene centre (the origin of instant-ngp's normalised space)
    for c, _ in views:
        _, z = c.project(np.zeros((1, 3)))
        assert z[0] > 0
