"""NeRF / instant-ngp / nerfstudio `transforms.json` datasets.

Layouts: one `transforms.json` (frames may carry "split": "train"/"test"/"val"), or
`transforms_train.json` + `transforms_test.json` (+ `transforms_val.json`, used as the held-out set only
when there is no test file, as 3DGS does). Intrinsics come from fl_x/fl_y/cx/cy/w/h (+ k1,k2,k3,k4,p1,p2,
is_fisheye / camera_model), globally or per frame, or from camera_angle_x(/y) (the Blender convention);
w/h default to the image size. Poses are camera-to-world in OpenGL axes (x right, y up, z backwards)
and are converted to OpenCV world-to-camera. `file_path` may omit the extension ("./train/r_0").

Missing images: skipped with a warning naming them while at most half are missing (partly copied
datasets are common: the fox's transforms.json lists 67 frames for its 50 photos); more than half missing
almost always means a wrong folder or file-name pattern, and is an error listing them.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pycolmap

from milo_backend.atomic import write_json
from milo_backend.data.camera import Camera
from milo_backend.data.features import (SfmOptions, colmap_log_level, extract_features, link_or_copy,
                                        match_pairs, pose_neighbour_pairs, staged_name)
from milo_backend.data.points import SparsePoints
from milo_backend.data.images import IMAGE_EXTENSIONS, image_size, natural_key
from milo_backend.data.undistort import colmap_camera
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter, Reporter
from milo_backend.run_folder import RunFolder

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flip camera y and z axes
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2",
                  "camera_angle_x", "camera_angle_y", "is_fisheye", "camera_model")
MIN_TRIANGULATED_POINTS = 1000


def find_transforms_files(root: Path) -> list[tuple[Path, str | None]]:
    """[(json file, split for all its frames or None = per-frame "split")]; empty if not a NeRF dataset."""
    if root.is_file():
        return [(root, None)]
    if (root / "transforms.json").is_file():
        return [(root / "transforms.json", None)]
    files = [(root / "transforms_train.json", "train")]
    if (root / "transforms_test.json").is_file():
        files.append((root / "transforms_test.json", "test"))
    elif (root / "transforms_val.json").is_file():
        files.append((root / "transforms_val.json", "test"))
    return [(f, s) for f, s in files if f.is_file()]


def is_transforms_dataset(root: Path) -> bool:
    return bool(find_transforms_files(root)) if root.is_dir() else root.suffix.lower() == ".json"


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MiloError(f"Cannot parse {path}: {exc}", hint="Fix or re-export the transforms file.", path=path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise MiloError(f"{path} has no \"frames\" list", hint="A transforms.json needs a non-empty \"frames\" "
                        "list of {\"file_path\", \"transform_matrix\"} entries.", path=path)
    return data


def resolve_image(base: Path, file_path: str) -> Path:
    """The image a frame's file_path names; tries the image extensions when it has none (Blender NeRF)."""
    rel = file_path.replace("\\", "/")
    path = Path(rel) if Path(rel).is_absolute() else base / rel
    if path.is_file() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return path
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    return path


def _pose(frame: dict, index: int, source: Path) -> np.ndarray:
    """world_to_cam (OpenCV) from an OpenGL camera-to-world transform_matrix (4x4 or 3x4)."""
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise MiloError(f"Frame {index} of {source} has no valid transform_matrix", path=source) from exc
    if m.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(m)):
        raise MiloError(f"Frame {index} of {source}: transform_matrix must be a finite 4x4 or 3x4 matrix",
                        path=source)
    c2w = np.eye(4)
    c2w[:3] = m[:3]
    U, S, Vt = np.linalg.svd(c2w[:3, :3])
    if np.linalg.det(U @ Vt) < 0 or np.max(np.abs(S - 1.0)) > 1e-2:
        raise MiloError(f"Frame {index} of {source}: the rotation part of transform_matrix is not a rotation "
                        f"(singular values {np.round(S, 4).tolist()})", path=source,
                        hint="Poses must be rigid camera-to-world transforms without scale or mirroring.")
    c2w[:3, :3] = U @ Vt  # remove float noise so Camera's R^T = R^-1 holds exactly
    return np.linalg.inv(c2w @ OPENGL_TO_OPENCV)


def frame_intrinsics(meta: dict, image_path: Path, where: str, source: Path) -> pycolmap.Camera:
    """The (possibly distorted) camera of one frame, in pixels of its image file as found on disk."""
    actual_w, actual_h = image_size(image_path)
    w, h = float(meta.get("w") or actual_w), float(meta.get("h") or actual_h)

    def focal(key: str, angle_key: str, size: float) -> float | None:
        if meta.get(key):
            return float(meta[key])
        if meta.get(angle_key):
            return 0.5 * size / math.tan(0.5 * float(meta[angle_key]))
        return None

    fx, fy = focal("fl_x", "camera_angle_x", w), focal("fl_y", "camera_angle_y", h)
    if fx is None and fy is None:
        raise MiloError(f"{where} of {source} has no focal length (fl_x/fl_y or camera_angle_x)", path=source,
                        hint="Add \"camera_angle_x\" (radians) or \"fl_x\" (pixels) to the transforms file.")
    fx, fy = fx or fy, fy or fx
    cx, cy = float(meta.get("cx", w / 2.0)), float(meta.get("cy", h / 2.0))
    k = {n: float(meta.get(n) or 0.0) for n in ("k1", "k2", "k3", "k4", "p1", "p2")}
    fisheye = bool(meta.get("is_fisheye")) or str(meta.get("camera_model", "")).upper() == "OPENCV_FISHEYE"
    if fisheye:
        cam = colmap_camera("OPENCV_FISHEYE", round(w), round(h), [fx, fy, cx, cy, k["k1"], k["k2"], k["k3"], k["k4"]])
    elif k["k3"] or k["k4"]:
        cam = colmap_camera("FULL_OPENCV", round(w), round(h),
                            [fx, fy, cx, cy, k["k1"], k["k2"], k["p1"], k["p2"], k["k3"], k["k4"], 0.0, 0.0])
    elif any(k[n] for n in ("k1", "k2", "p1", "p2")):
        cam = colmap_camera("OPENCV", round(w), round(h), [fx, fy, cx, cy, k["k1"], k["k2"], k["p1"], k["p2"]])
    else:
        cam = colmap_camera("PINHOLE", round(w), round(h), [fx, fy, cx, cy])
    if (actual_w, actual_h) != (cam.width, cam.height):  # images stored at another resolution
        if abs(actual_w / actual_h - w / h) > 0.01 * w / h:
            raise MiloError(f"Image {image_path} is {actual_w}x{actual_h} but {source.name} says {w:g}x{h:g}",
                            hint="The image does not match its camera (different aspect ratio).", path=image_path)
        cam.rescale(actual_w, actual_h)
    return cam


def check_missing_images(paths: dict[str, Path], source: Path, reporter: Reporter) -> set[str]:
    """The missing-file policy (see module docstring): names to skip, or MiloError listing them."""
    missing = [name for name, p in paths.items() if not p.is_file()]
    if not missing:
        return set()
    listing = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    if 2 * len(missing) > len(paths):
        raise MiloError(f"{len(missing)} of the {len(paths)} images listed in {source} are missing: {listing}",
                        hint=f"Check that the image folders sit next to {source.name} and that the file names "
                             "(and extensions) match its \"file_path\" entries.", path=source)
    reporter.warning(f"{len(missing)} of the {len(paths)} images listed in {source.name} are missing and are "
                     f"skipped: {listing}", hint="Copy the missing photos next to the others to use them.")
    return set(missing)


def read_transforms(root: str | Path, reporter: Reporter | None = None) -> list[tuple[Camera, pycolmap.Camera]]:
    """[(camera with pose/name/image/split and pinhole-part intrinsics, its possibly distorted intrinsics)].

    No pixels are touched here (undistortion happens in `load_dataset`), so reading poses is instant.
    """
    reporter = reporter or NullReporter()
    root = Path(root)
    files = find_transforms_files(root)
    if not files:
        raise MiloError(f"No transforms.json or transforms_train.json in {root}", path=root)
    dataset_root = files[0][0].parent
    views = []
    for source, file_split in files:
        data = _load_json(source)
        base = source.parent
        global_meta = {k: data[k] for k in INTRINSIC_KEYS if k in data}
        entries = []
        for i, frame in enumerate(data["frames"]):
            if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
                raise MiloError(f"Frame {i} of {source} has no \"file_path\"", path=source)
            entries.append((i, frame, resolve_image(base, frame["file_path"])))
        skip = check_missing_images({f["file_path"]: p for _, f, p in entries}, source, reporter)
        for i, frame, path in entries:
            if frame["file_path"] in skip:
                continue
            world_to_cam = _pose(frame, i, source)
            cam = frame_intrinsics({**global_meta, **{k: frame[k] for k in INTRINSIC_KEYS if k in frame}},
                                   path, f"Frame {i}", source)
            split = file_split or ("test" if str(frame.get("split", "train")).lower() in ("test", "val") else "train")
            try:
                name = path.relative_to(dataset_root).as_posix()
            except ValueError:
                name = path.name
            views.append((Camera(name=name, width=cam.width, height=cam.height, fx=cam.focal_length_x,
                                 fy=cam.focal_length_y, cx=cam.principal_point_x, cy=cam.principal_point_y,
                                 world_to_cam=world_to_cam, image_path=path, split=split), cam))
    views.sort(key=lambda v: (v[0].split != "train", natural_key(v[0].name)))
    return views


def triangulate_known_poses(dataset, workdir: str | Path, reporter: Reporter | None = None,
                            options: SfmOptions | None = None,
                            min_points: int = MIN_TRIANGULATED_POINTS) -> SparsePoints | None:
    """An SfM-like point cloud for a dataset with known poses (NeRF inputs): SIFT features of the training
    images, matches between cameras that look at the same part of the scene, triangulation with the poses
    held fixed. Returns the points (with colours, track lengths and errors), or None when fewer than `min_points` come
    out (the caller then starts from random points, `train.initial_model`).
    The result is cached in workdir/triangulation (same cameras and options: not redone)."""
    reporter = reporter or NullReporter()
    options = options or SfmOptions()
    # intrinsics of the image files as stored (the dataset's cameras may be scaled down by max_size)
    cameras = [c.scaled(*image_size(c.image_path)) for c in dataset.train_cameras]
    work = RunFolder(workdir).triangulation
    signature = {"cameras": [[c.name, c.width, c.height, c.fx, c.fy, c.cx, c.cy,
                              np.round(c.world_to_cam, 9).tolist()] for c in cameras], "options": options.to_json()}
    cache, cache_info = work / "sparse_points.npz", work / "points.json"
    try:
        cached = json.loads(cache_info.read_text(encoding="utf-8")) == signature and cache.exists()
    except (OSError, ValueError):
        cached = False
    if cached:
        sparse = SparsePoints.load(cache)
        reporter.log(f"Reusing {len(sparse)} points triangulated earlier")
    else:
        shutil.rmtree(work, ignore_errors=True)
        sparse = _triangulate(cameras, work, reporter, options)
        sparse.save(cache)
        write_json(cache_info, signature)
    if len(sparse) < min_points:
        return None
    return sparse


def _triangulate(cameras: list[Camera], work: Path, reporter: Reporter,
                 options: SfmOptions) -> SparsePoints:
    staged, db_path, model_dir = work / "images", work / "database.db", work / "model"
    staged.mkdir(parents=True)
    model_dir.mkdir()
    names = [staged_name(i, Path(c.image_path)) for i, c in enumerate(cameras)]
    for cam, name in zip(cameras, names):
        link_or_copy(Path(cam.image_path), staged / name)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cameras):
        groups.setdefault((c.width, c.height, c.fx, c.fy, c.cx, c.cy), []).append(i)
    pycolmap.set_random_seed(options.seed)
    with colmap_log_level():
        reporter.stage("triangulate", f"Triangulating points from {len(cameras)} posed images")
        extract_features(db_path, staged, [(colmap_camera("PINHOLE", w, h, [fx, fy, cx, cy]), [names[i] for i in idx])
                                           for (w, h, fx, fy, cx, cy), idx in groups.items()],
                         options, reporter, "triangulate", total=2 * len(cameras))
        centers = np.stack([c.center for c in cameras])
        directions = np.stack([c.world_to_cam[2, :3] for c in cameras])  # camera z axis in world
        pairs = pose_neighbour_pairs(names, centers, directions)
        match_pairs(db_path, pairs, work, options, NullReporter(), "triangulate")
        reporter.progress("triangulate", 2 * len(cameras) - 1, 2 * len(cameras))

        db = pycolmap.Database.open(db_path)
        rec = pycolmap.Reconstruction()
        for cam in db.read_all_cameras():
            rec.add_camera_with_trivial_rig(cam)
        by_name = {n: c for n, c in zip(names, cameras)}
        for image in db.read_all_images():
            w2c = by_name[image.name].world_to_cam
            rec.add_image_with_trivial_frame(
                pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=image.image_id),
                pycolmap.Rigid3d(w2c[:3, :4]))
        db.close()
        mapper = pycolmap.IncrementalPipelineOptions()
        mapper.num_threads = options.num_threads
        mapper.random_seed = options.seed
        result = pycolmap.triangulate_points(rec, db_path, staged, model_dir, options=mapper)
        reporter.progress("triangulate", 2 * len(cameras), 2 * len(cameras))
    shutil.rmtree(staged, ignore_errors=True)
    db_path.unlink(missing_ok=True)
    sparse = SparsePoints.from_reconstruction(result)
    reporter.log(f"Triangulated {len(sparse)} points from known poses "
                 f"(mean reprojection error {result.compute_mean_reprojection_error():.2f} px)")
    return sparse
