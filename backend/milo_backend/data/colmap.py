"""COLMAP datasets (`images/` + `sparse/0` or `sparse/`, binary or text) -> pinhole cameras + coloured points.

Reading is pycolmap's (`pycolmap.Reconstruction`); cameras with distortion go through the one
undistortion path (`undistort.py`) into the work folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from milo_backend.data.camera import Camera
from milo_backend.data.images import natural_key
from milo_backend.data.undistort import camera_from_pinhole, has_distortion, pinhole_for, undistort_views
from milo_backend.data.points import SparsePoints
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter, Reporter

MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class ColmapScene:
    cameras: list[Camera]            # undistorted pinhole, sorted by image name
    sparse: SparsePoints             # the model's points, with track lengths and errors
    mean_reprojection_error: float   # pixels, as stored in the model


def is_colmap_dataset(root: Path) -> bool:
    return (root / "sparse").is_dir() or any((root / f"cameras{ext}").exists() for ext in (".bin", ".txt"))


def _has_model(folder: Path) -> bool:
    return any((folder / f"{name}{ext}").exists() for name in MODEL_FILES for ext in (".bin", ".txt"))


def find_model_dir(root: str | Path) -> Path:
    """The folder holding cameras/images/points3D: sparse/0, sparse, the first model in sparse/N, or root."""
    root = Path(root)
    sparse = root / "sparse"
    numbered = sorted((p for p in sparse.iterdir() if p.is_dir() and _has_model(p)),
                      key=lambda p: natural_key(p.name)) if sparse.is_dir() else []
    for folder in [sparse / "0", sparse, *numbered, root]:
        if folder.is_dir() and _has_model(folder):
            missing = [n for n in MODEL_FILES if not any((folder / f"{n}{e}").exists() for e in (".bin", ".txt"))]
            if missing:
                raise MiloError(f"Incomplete COLMAP model in {folder}: missing "
                                + ", ".join(f"{n}.bin/.txt" for n in missing),
                                hint="Copy the whole sparse model folder (cameras, images and points3D), "
                                     "or delete sparse/ to let MILo run structure from motion.", path=folder)
            return folder
    raise MiloError(f"No COLMAP model found in {root} (looked for sparse/0, sparse/ and sparse/N)",
                    hint="A COLMAP dataset needs images/ and sparse/0/{cameras,images,points3D}.bin (or .txt).",
                    path=root)


def read_reconstruction(model_dir: Path) -> pycolmap.Reconstruction:
    try:
        rec = pycolmap.Reconstruction(model_dir)
    except Exception as exc:  # noqa: BLE001 - pycolmap reports every parse failure as a generic exception
        raise MiloError(f"Cannot read the COLMAP model in {model_dir}: {exc}",
                        hint="The model files are corrupt or from an incompatible tool; re-export them from "
                             "COLMAP, or delete sparse/ to let MILo run structure from motion.",
                        path=model_dir) from exc
    if rec.num_reg_images() == 0:
        raise MiloError(f"The COLMAP model in {model_dir} has no registered images",
                        hint="Re-run COLMAP's mapper, or delete sparse/ to let MILo run structure from motion.",
                        path=model_dir)
    return rec


def read_colmap(root: str | Path, workdir: str | Path, reporter: Reporter | None = None,
                images_dir: str | Path | None = None) -> ColmapScene:
    """Read a COLMAP dataset. Images are looked up in `images_dir` (default root/images); distorted
    cameras are undistorted into workdir/undistorted (cached)."""
    reporter = reporter or NullReporter()
    root = Path(root)
    images_dir = Path(images_dir) if images_dir is not None else root / "images"
    model_dir = find_model_dir(root)
    rec = read_reconstruction(model_dir)
    if not images_dir.is_dir():
        raise MiloError(f"COLMAP dataset {root} has no images/ folder", hint="Put the photos in images/.",
                        path=images_dir)

    views: list[tuple[Camera, pycolmap.Camera]] = []
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        cam = rec.cameras[image.camera_id]
        world_to_cam = np.eye(4)
        world_to_cam[:3, :4] = image.cam_from_world().matrix()
        base = Camera(name=image.name, width=cam.width, height=cam.height, fx=0.0, fy=0.0, cx=0.0, cy=0.0,
                      world_to_cam=world_to_cam, image_path=images_dir / image.name)
        views.append((base, cam))
    views.sort(key=lambda v: natural_key(v[0].name))

    missing = [b.name for b, _ in views if not b.image_path.is_file()]
    if missing:
        raise MiloError(f"{len(missing)} of the {len(views)} images of the COLMAP model are missing from "
                        f"{images_dir}: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
                        hint="Copy the photos the model was made from into images/.", path=images_dir)

    distorted = [(b, c) for b, c in views if has_distortion(c)]
    undistorted = iter(undistort_views(distorted, Path(workdir) / "undistorted", reporter) if distorted else [])
    cameras = [next(undistorted) if has_distortion(c) else camera_from_pinhole(pinhole_for(c), b)
               for b, c in views]

    sparse = SparsePoints.from_reconstruction(rec)
    bad = np.flatnonzero(~np.isfinite(sparse.xyz).all(axis=1))
    if len(bad):
        ids = sorted(rec.point3D_ids())
        raise MiloError(f"{model_dir}: {len(bad)} of the {len(sparse)} points in points3D have non-finite "
                        f"coordinates (point id {ids[bad[0]]}: {sparse.xyz[bad[0]].tolist()})",
                        hint="the model is damaged: re-run structure from motion (or re-export the model)",
                        path=model_dir)
    return ColmapScene(cameras, sparse, float(rec.compute_mean_reprojection_error()))
