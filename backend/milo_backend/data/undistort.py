"""The one undistortion path: any COLMAP camera model -> an undistorted pinhole camera + resampled images.

Every input with lens distortion (a COLMAP model with OPENCV/RADIAL/fisheye cameras, a transforms.json with
k1..p2, our own SfM) comes through `undistort_views`, so there is exactly one place where pixels move.

Output intrinsics: COLMAP's own undistorter rule (`pycolmap.undistort_camera` with `blank_pixels=0`): the
focal length is kept and the image is cropped to the largest rectangle whose every pixel maps inside the
distorted photo. So no black (invalid) border reaches training, where it would be fitted as black geometry,
and the detail of the photo centre keeps its sampling. The price is a few pixels of field of view at the
edges (fox: 1080x1920 -> 1067x1897).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import torch
import torch.nn.functional as F

from milo_backend.atomic import write_json
from milo_backend.data.camera import Camera
from milo_backend.data.images import load_image, save_image
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter, Reporter

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
# Models that are a pinhole when their extra (distortion) parameters are all zero. Fisheye models are not:
# with k = 0 they are still an equidistant projection.
PERSPECTIVE_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "SIMPLE_DIVISION", "DIVISION")
MANIFEST = "undistort.json"


def colmap_camera(model: str, width: int, height: int, params: Sequence[float], camera_id: int = 1) -> pycolmap.Camera:
    """A `pycolmap.Camera` of any COLMAP model name, e.g. ("OPENCV", 1080, 1920, [fx, fy, cx, cy, k1, k2, p1, p2])."""
    if model not in pycolmap.CameraModelId.__members__:
        raise MiloError(f"Unknown camera model {model!r}",
                        hint="Use a COLMAP model name: " + ", ".join(pycolmap.CameraModelId.__members__))
    cam = pycolmap.Camera.create_from_model_name(camera_id, model, 1.0, int(width), int(height))
    if len(params) != len(cam.params):
        raise MiloError(f"Camera model {model} takes {len(cam.params)} parameters ({cam.params_info}), "
                        f"got {len(params)}")
    cam.params = [float(p) for p in params]
    return cam


def has_distortion(cam: pycolmap.Camera) -> bool:
    if cam.model_name in PINHOLE_MODELS:
        return False
    if cam.model_name in PERSPECTIVE_MODELS:
        return bool(np.any(np.asarray(cam.params)[list(cam.extra_params_idxs())] != 0.0))
    return True


def pinhole_for(cam: pycolmap.Camera) -> pycolmap.Camera:
    """The undistorted PINHOLE camera for `cam` (identical intrinsics when `cam` has no distortion)."""
    if not has_distortion(cam):
        return colmap_camera("PINHOLE", cam.width, cam.height,
                             [cam.focal_length_x, cam.focal_length_y, cam.principal_point_x,
                              cam.principal_point_y], cam.camera_id)
    options = pycolmap.UndistortCameraOptions()
    options.blank_pixels = 0.0  # crop: no invalid border (see module docstring)
    pinhole = pycolmap.undistort_camera(options, cam)
    pinhole.camera_id = cam.camera_id
    return pinhole


def camera_from_pinhole(pinhole: pycolmap.Camera, base: Camera) -> Camera:
    """`base` (name, pose, image, split) with the intrinsics of a PINHOLE/SIMPLE_PINHOLE pycolmap camera."""
    if pinhole.model_name not in PINHOLE_MODELS:
        raise ValueError(f"not a pinhole camera: {pinhole.model_name}")
    return replace(base, width=int(pinhole.width), height=int(pinhole.height),
                   fx=float(pinhole.focal_length_x), fy=float(pinhole.focal_length_y),
                   cx=float(pinhole.principal_point_x), cy=float(pinhole.principal_point_y))


def undistortion_grid(distorted: pycolmap.Camera, pinhole: pycolmap.Camera) -> torch.Tensor:
    """For every pixel centre of the pinhole image, where it lies in the distorted image, as a
    `grid_sample` grid (1,H,W,2) in [-1,1] (align_corners=False: -1 is the left edge of pixel 0)."""
    W, H = pinhole.width, pinhole.height
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)  # pixel centres at +0.5, as COLMAP
    rays = pinhole.cam_from_img(np.stack([u.ravel(), v.ravel()], axis=1))
    src = distorted.img_from_cam(np.concatenate([rays, np.ones((len(rays), 1))], axis=1), check_cheirality=False)
    grid = np.stack([2.0 * src[:, 0] / distorted.width - 1.0, 2.0 * src[:, 1] / distorted.height - 1.0], axis=1)
    return torch.from_numpy(grid.reshape(1, H, W, 2).astype(np.float32))


def remap(image: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """Bilinear resampling of an HxWxC float image at `grid` (edge pixels repeat outside the image)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def output_names(names: Sequence[str]) -> list[str]:
    """Flat, unique PNG file names for the undistorted images ("images/0001.jpg" -> "0001.png")."""
    stems = [Path(n).stem for n in names]
    if len(set(stems)) == len(stems):
        return [s + ".png" for s in stems]
    return [n.replace("/", "__").replace("\\", "__") + ".png" for n in names]  # stems collide: keep all


def _source_signature(path: Path, cam: pycolmap.Camera) -> dict:
    st = path.stat()
    return {"source": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "camera": [cam.model_name, cam.width, cam.height, [float(p) for p in cam.params]]}


def undistort_image(source: Path, distorted: pycolmap.Camera, grid: torch.Tensor | None, out_path: Path) -> None:
    """Load `source`, resample it through `grid` (None: copy as is) and save it as PNG (alpha kept)."""
    rgb, alpha = load_image(source)
    if rgb.shape[:2] != (distorted.height, distorted.width):
        raise MiloError(f"Image {source} is {rgb.shape[1]}x{rgb.shape[0]} but its camera is "
                        f"{distorted.width}x{distorted.height}",
                        hint="The photo does not belong to this camera model (resized or replaced?).", path=source)
    if grid is not None:
        stacked = remap(rgb if alpha is None else np.concatenate([rgb, alpha[..., None]], 2), grid)
        rgb, alpha = stacked[..., :3], (stacked[..., 3] if alpha is not None else None)
    save_image(out_path, rgb, alpha)


def undistort_views(views: Sequence[tuple[Camera, pycolmap.Camera]], out_dir: str | Path,
                    reporter: Reporter | None = None, stage: str = "undistort") -> list[Camera]:
    """Undistort each (camera, distorted intrinsics) pair's image into `out_dir` as PNG.

    The camera's pose, name and split are kept; its intrinsics become the pinhole of `pinhole_for` and its
    image_path the undistorted PNG. Results are cached: an image whose source file and intrinsics are
    unchanged since the last run (recorded in `out_dir/undistort.json`) is not redone.
    """
    reporter = reporter or NullReporter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    except (OSError, ValueError):
        manifest = {}  # unreadable cache: redo everything
    names = output_names([base.name for base, _ in views])
    grids: dict[str, tuple[pycolmap.Camera, torch.Tensor | None]] = {}
    result, todo = [], []
    for (base, distorted), out_name in zip(views, names):
        if base.image_path is None:
            raise MiloError(f"Camera {base.name} has no image to undistort")
        sig = _source_signature(Path(base.image_path), distorted)
        key = hashlib.sha1(json.dumps(sig["camera"]).encode()).hexdigest()
        if key not in grids:  # one grid per distinct camera (usually one for the whole dataset)
            pinhole = pinhole_for(distorted)
            grids[key] = (pinhole, undistortion_grid(distorted, pinhole) if has_distortion(distorted) else None)
        pinhole, grid = grids[key]
        out_path = out_dir / out_name
        if manifest.get(out_name) != sig or not out_path.exists():
            todo.append((Path(base.image_path), distorted, grid, out_path, out_name, sig))
        result.append(replace(camera_from_pinhole(pinhole, base), image_path=out_path))

    reporter.stage(stage, f"Undistorting {len(todo)} images" + (f" ({len(views) - len(todo)} cached)"
                                                                  if len(todo) < len(views) else ""))
    # two images in flight: decoding, resampling and PNG encoding all release the GIL
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [(pool.submit(undistort_image, *job[:4]), job) for job in todo]
        for i, (future, (_, _, _, _, out_name, sig)) in enumerate(jobs):
            future.result()
            manifest[out_name] = sig
            write_json(manifest_path, manifest)  # after every image, so an interrupted run resumes
            reporter.progress(stage, i + 1, len(todo))
    return result
