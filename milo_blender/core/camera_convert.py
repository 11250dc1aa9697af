"""Reconstruction cameras (cameras.json: OpenCV pinhole, x right y down z forward) as Blender cameras
(looking down -Z with +Y up; focal length in mm over a sensor; principal point as lens shift in units of
the larger image side).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milo_backend.data.camera import Camera
from milo_backend.errors import MiloError

# OpenCV camera axes -> Blender camera axes (y and z flip)
CV_TO_BLENDER_CAM = np.diag([1.0, -1.0, -1.0, 1.0])
SENSOR_MM = 36.0


def load_cameras_json(path: str | Path) -> tuple[list[Camera], float | None]:
    """The cameras and scene extent a run wrote; MiloError naming the file when it is unusable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cameras = [Camera.from_json(c) for c in data["cameras"]]
    except FileNotFoundError as exc:
        raise MiloError(f"cameras file not found: {path}", hint="re-run the reconstruction, or import without "
                        "cameras", path=path) from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise MiloError(f"{path} is not a MILo cameras.json ({type(exc).__name__}: {exc})",
                        hint="re-run the reconstruction to rewrite it, or import without cameras", path=path) from exc
    for cam in cameras:
        if cam.world_to_cam.shape != (4, 4) or not np.isfinite(cam.world_to_cam).all():
            raise MiloError(f"{path}: camera {cam.name!r} has an invalid world_to_cam matrix",
                            hint="re-run the reconstruction", path=path)
    extent = data.get("extent")
    return cameras, float(extent) if isinstance(extent, (int, float)) else None


@dataclass(frozen=True)
class BlenderCameraParams:
    lens: float
    sensor_fit: str          # 'HORIZONTAL' or 'VERTICAL'
    sensor_width: float
    sensor_height: float
    shift_x: float
    shift_y: float
    resolution: tuple[int, int]
    pixel_aspect: tuple[float, float]


def blender_camera_params(cam: Camera) -> BlenderCameraParams:
    # non-square pixels (fx != fy): Blender pixel aspect x:y = fy:fx, both >= 1
    ratio = cam.fy / cam.fx
    aspect = (ratio, 1.0) if ratio >= 1 else (1.0, 1.0 / ratio)
    w_eff, h_eff = cam.width * aspect[0], cam.height * aspect[1]
    horizontal = w_eff >= h_eff
    lens = cam.fx * SENSOR_MM / cam.width if horizontal else cam.fy * SENSOR_MM / cam.height
    side = max(w_eff, h_eff)
    return BlenderCameraParams(
        lens=float(lens), sensor_fit="HORIZONTAL" if horizontal else "VERTICAL",
        sensor_width=SENSOR_MM, sensor_height=SENSOR_MM,
        # image y runs down in OpenCV: a principal point below the centre shifts the frame up
        shift_x=float((cam.width / 2 - cam.cx) * aspect[0] / side),
        shift_y=float((cam.cy - cam.height / 2) * aspect[1] / side),
        resolution=(int(cam.width), int(cam.height)), pixel_aspect=(float(aspect[0]), float(aspect[1])))


def blender_camera_matrix(world_to_cam: np.ndarray) -> np.ndarray:
    """matrix_world of a Blender camera at the pose of an OpenCV world-to-camera matrix."""
    return np.linalg.inv(np.asarray(world_to_cam, dtype=np.float64)) @ CV_TO_BLENDER_CAM
