"""One entry point for every input: `load_dataset(path, workdir, reporter)` detects the format.

    path/sparse/ (or cameras.bin|txt)   -> COLMAP dataset                        kind "colmap"
    path/transforms*.json (or the file) -> NeRF / instant-ngp                    kind "transforms"
    a folder of photos, or a folder whose only content is images/ with photos -> SfM into workdir/sfm,
                                                                                 kind "photos"
Held-out views: frames marked "split": "test" (or transforms_test.json) always; otherwise every 8th
camera in name order when `eval_split` (the usual 3DGS/MILo protocol).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from milo_backend.data.camera import Camera, check_cameras
from milo_backend.data.colmap import is_colmap_dataset, read_colmap
from milo_backend.data.points import SparsePoints
from milo_backend.data.images import fit_size, is_image_file
from milo_backend.data.poses import compare_poses
from milo_backend.data.sfm import SfmOptions, run_sfm
from milo_backend.data.transforms import is_transforms_dataset, read_transforms
from milo_backend.data.undistort import has_distortion, undistort_views
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter, Reporter

__all__ = ["Dataset", "load_dataset", "compare_poses", "detect_kind", "assign_eval_split"]

EVAL_EVERY = 8


@dataclass
class Dataset:
    root: Path
    kind: str                                  # "colmap" | "transforms" | "photos"
    cameras: list[Camera] = field(default_factory=list)
    sparse: SparsePoints | None = None         # sparse points, None = none available

    @property
    def points(self) -> np.ndarray | None:
        return None if self.sparse is None else self.sparse.xyz

    @property
    def point_colors(self) -> np.ndarray | None:
        return None if self.sparse is None else self.sparse.colors

    @property
    def train_cameras(self) -> list[Camera]:
        return [c for c in self.cameras if c.split == "train"]

    @property
    def test_cameras(self) -> list[Camera]:
        return [c for c in self.cameras if c.split == "test"]


def photos_folder(root: Path) -> Path | None:
    """root if it holds photos; root/images if that is all root holds (besides hidden files); else None."""
    if any(is_image_file(p) for p in root.iterdir()):
        return root
    visible = [p for p in root.iterdir() if not p.name.startswith(".")]
    images = root / "images"
    if visible == [images] and images.is_dir() and any(is_image_file(p) for p in images.iterdir()):
        return images
    return None


def detect_kind(root: Path) -> str:
    if not root.exists():
        raise MiloError(f"Input not found: {root}", hint="Check the path.", path=root)
    if root.is_file():
        if root.suffix.lower() == ".json":
            return "transforms"
        raise MiloError(f"{root} is a file; the input must be a folder (photos, a COLMAP dataset or a "
                        "transforms.json dataset) or a transforms.json file", path=root,
                        hint="Select the folder that contains the photos.")
    if is_colmap_dataset(root):
        return "colmap"
    if is_transforms_dataset(root):
        return "transforms"
    if not any(True for _ in root.iterdir()):
        raise MiloError(f"The folder {root} is empty", hint="Put the photos of the object in it.", path=root)
    if photos_folder(root) is None:
        images = root / "images"
        if images.is_dir() and any(is_image_file(p) for p in images.iterdir()):
            others = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p != images)
            raise MiloError(f"{root} has photos in images/ but also " + ", ".join(others[:5]) +
                            ", and no sparse/ or transforms.json", path=root,
                            hint="Select the images/ folder itself to reconstruct from the photos, or add the "
                                 "COLMAP model (sparse/) or transforms.json that belongs to them.")
        raise MiloError(f"No images found in {root} (looked for .jpg .jpeg .png .tif .tiff .bmp .webp, also in "
                        "images/) and no sparse/ or transforms.json", path=root,
                        hint="Select a folder of photos, a COLMAP dataset (images/ + sparse/) or a folder "
                             "with a transforms.json.")
    return "photos"


def assign_eval_split(cameras: list[Camera], eval_split: bool) -> list[Camera]:
    """Keep explicit test frames; without any, hold out every 8th camera (name order) when eval_split."""
    if any(c.split == "test" for c in cameras) or not eval_split:
        return cameras
    return [replace(c, split="test" if i % EVAL_EVERY == 0 else "train") for i, c in enumerate(cameras)]


def limit_size(cameras: list[Camera], max_size: int | None) -> list[Camera]:
    """Cameras for images whose longest side is at most `max_size` (the ImageCache resizes to match)."""
    return [c.scaled(*fit_size(c.width, c.height, max_size)) if max_size else c for c in cameras]


def _load_transforms(root: Path, workdir: Path, reporter: Reporter) -> list[Camera]:
    views = read_transforms(root, reporter)
    distorted = [(base, cam) for base, cam in views if has_distortion(cam)]
    done = iter(undistort_views(distorted, workdir / "undistorted", reporter) if distorted else [])
    return [next(done) if has_distortion(cam) else base for base, cam in views]


def load_dataset(path: str | Path, workdir: str | Path, reporter: Reporter | None = None,
                 eval_split: bool = False, max_size: int | None = None,
                 sfm_options: SfmOptions | None = None) -> Dataset:
    """Cameras (undistorted pinhole, OpenCV axes), image paths and sparse points of any supported input.

    Derived files (undistorted images, SfM) go to `workdir` and are reused on the next call (resume).
    Transforms datasets get no points here; see `transforms.triangulate_known_poses`.
    """
    reporter = reporter or NullReporter()
    root, workdir = Path(path).expanduser(), Path(workdir)
    kind = detect_kind(root)
    sparse = None
    if kind == "colmap":
        scene = read_colmap(root, workdir, reporter)
        cameras, sparse = scene.cameras, scene.sparse
    elif kind == "transforms":
        cameras = _load_transforms(root, workdir, reporter)
        root = root.parent if root.is_file() else root
    else:
        sfm_dir = run_sfm(photos_folder(root), workdir / "sfm", reporter, sfm_options)
        scene = read_colmap(sfm_dir, workdir, reporter)
        cameras, sparse = scene.cameras, scene.sparse
    if not cameras:
        raise MiloError(f"No usable cameras in {root}", path=root)
    check_cameras(cameras, root)
    if sparse is not None and len(sparse) == 0:
        sparse = None
    cameras = limit_size(assign_eval_split(cameras, eval_split), max_size)
    if not any(c.split == "train" for c in cameras):
        raise MiloError(f"All {len(cameras)} cameras of {root} are marked as test views", path=root,
                        hint="Mark some frames \"split\": \"train\".")
    return Dataset(root=root, kind=kind, cameras=cameras, sparse=sparse)
