"""Format detection, bad inputs, and pose comparison."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from milo_backend.data.camera import Camera, look_at
from milo_backend.data.dataset import assign_eval_split, detect_kind, load_dataset, photos_folder
from milo_backend.data.poses import compare_poses, umeyama
from milo_backend.errors import MiloError


def ring_cameras(n=10) -> list[Camera]:
    cams = []
    for i in range(n):
        a = 2 * np.pi * i / n
        cams.append(Camera(f"images/{i:04d}.jpg", 64, 48, 50, 50, 32, 24,
                           look_at((3 * np.cos(a), 3 * np.sin(a), 1 + 0.3 * np.sin(2 * a)), (0, 0, 0))))
    return cams


def transformed(cams: list[Camera], s: float, R: np.ndarray, t: np.ndarray) -> list[Camera]:
    """The same rig in a world changed by x' = s R x + t (camera rotations R_c R^T, centres s R c + t)."""
    out = []
    for c in cams:
        Rc = c.world_to_cam[:3, :3] @ R.T
        center = s * R @ c.center + t
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = Rc, -Rc @ center
        out.append(Camera(c.name.split("/")[-1].replace(".jpg", ".png"), 64, 48, 50, 50, 32, 24, m))
    return out


def test_compare_poses_is_zero_for_a_similarity_and_measures_errors():
    ref = ring_cameras()
    R = Rotation.from_euler("xyz", [30, -50, 110], degrees=True).as_matrix()
    moved = transformed(ref, 0.37, R, np.array([5.0, -2.0, 9.0]))
    res = compare_poses(moved, ref)  # matched by file stem: "images/0003.jpg" <-> "0003.png"
    assert res["matched"] == 10 and res["scale"] == pytest.approx(1 / 0.37)
    assert res["rotation_max_deg"] < 1e-6 and res["center_max_rel"] < 1e-9

    # one camera turned by 2 degrees and shifted by 1% of the scene size
    bad = moved[4]
    turn = Rotation.from_euler("y", 2, degrees=True).as_matrix()
    m = bad.world_to_cam.copy()
    m[:3, :3] = turn @ m[:3, :3]
    m[:3, 3] = -m[:3, :3] @ bad.center
    moved[4] = Camera(bad.name, 64, 48, 50, 50, 32, 24, m)
    res = compare_poses(moved, ref)
    assert res["rotation_max_deg"] == pytest.approx(2.0, abs=1e-6) and res["rotation_median_deg"] < 1e-6


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    R = Rotation.from_rotvec([0.3, -1.0, 0.4]).as_matrix()
    s, R2, t = umeyama(src, 2.5 * src @ R.T + [1, 2, 3])
    assert s == pytest.approx(2.5) and np.allclose(R2, R) and np.allclose(t, [1, 2, 3])


def test_compare_poses_needs_common_names():
    with pytest.raises(MiloError, match="same image name"):
        compare_poses(ring_cameras(3), [Camera("other.png", 1, 1, 1, 1, 0, 0)])


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(MiloError, match="not found"):
        load_dataset(tmp_path / "nope", tmp_path / "w")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MiloError, match="empty"):
        load_dataset(empty, tmp_path / "w")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("hi")
    with pytest.raises(MiloError, match="No images found"):
        load_dataset(docs, tmp_path / "w")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(MiloError, match="is a file"):
        load_dataset(tmp_path / "one.png", tmp_path / "w")
    few = tmp_path / "few"
    few.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(few / "a.png")
    with pytest.raises(MiloError, match="at least 3"):
        load_dataset(few, tmp_path / "w")


def test_photo_folder_detection(tmp_path):
    wrapped = tmp_path / "wrapped"
    (wrapped / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(wrapped / "images" / "a.JPG")
    (wrapped / ".DS_Store").write_bytes(b"")
    assert detect_kind(wrapped) == "photos" and photos_folder(wrapped) == wrapped / "images"
    (wrapped / "other").mkdir()  # images/ plus something else: not a plain photo folder
    assert photos_folder(wrapped) is None
    with pytest.raises(MiloError, match="also other") as err:
        detect_kind(wrapped)
    assert "images/ folder itself" in err.value.hint
    (wrapped / "sparse").mkdir()
    assert detect_kind(wrapped) == "colmap"


def test_eval_split_keeps_explicit_test_frames():
    cams = ring_cameras(10)
    held = assign_eval_split(cams, eval_split=True)
    assert [c.split for c in held].count("test") == 2 and held[0].split == "test" and held[8].split == "test"
    assert all(c.split == "train" for c in assign_eval_split(cams, eval_split=False))
    cams[3].split = "test"
    assert [c.split for c in assign_eval_split(cams, eval_split=True)].count("test") == 1
