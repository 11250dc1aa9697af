"""Blender cameras as the backend's cameras (OpenCV pinhole: x right, y down, z forward, pixels), the inverse of
`camera_convert` (numpy only).

Blender's own projection (BKE_camera_params_compute_viewplane): the sensor side that `sensor_fit` picks (AUTO:
the wider side of the image in pixel-aspect units) spans `viewfac` pixel units, viewfac = width for a horizontal
fit, height * ycor for a vertical one, with ycor = pixel_aspect_y / pixel_aspect_x; lens shift moves the frame by
shift * viewfac. Hence fx = lens * viewfac / sensor, fy = fx / ycor, cx = w/2 - shift_x viewfac,
cy = h/2 + shift_y viewfac / ycor (image y runs down).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from milo_backend.atomic import write_json
from milo_backend.data.camera import Camera

from .camera_convert import CV_TO_BLENDER_CAM


def opencv_camera(name: str, matrix_world: np.ndarray, lens: float, sensor_width: float, sensor_height: float,
                  sensor_fit: str, shift_x: float, shift_y: float, resolution: tuple[int, int],
                  pixel_aspect: tuple[float, float] = (1.0, 1.0)) -> Camera:
    """The backend camera seeing what a Blender perspective camera with these settings renders."""
    width, height = int(resolution[0]), int(resolution[1])
    if width < 1 or height < 1:
        raise ValueError(f"render resolution {width} x {height} is empty")
    aspect_x, aspect_y = float(pixel_aspect[0]), float(pixel_aspect[1])
    ycor = aspect_y / aspect_x
    if sensor_fit == "AUTO":
        horizontal = aspect_x * width >= aspect_y * height
        sensor = sensor_width
    elif sensor_fit in ("HORIZONTAL", "VERTICAL"):
        horizontal = sensor_fit == "HORIZONTAL"
        sensor = sensor_width if horizontal else sensor_height
    else:
        raise ValueError(f"unknown sensor fit {sensor_fit!r}")
    viewfac = width if horizontal else ycor * height
    fx = lens * viewfac / sensor
    return Camera(name=name, width=width, height=height, fx=float(fx), fy=float(fx / ycor),
                  cx=float(width / 2 - shift_x * viewfac), cy=float(height / 2 + shift_y * viewfac / ycor),
                  world_to_cam=world_to_cam(matrix_world))


def world_to_cam(matrix_world: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera matrix of a Blender camera object (its scale does not change what it sees)."""
    m = np.array(matrix_world, dtype=np.float64)
    m[:3, :3] /= np.linalg.norm(m[:3, :3], axis=0)
    return CV_TO_BLENDER_CAM @ np.linalg.inv(m)


def write_cameras_json(path: str | Path, cameras: list[Camera]) -> Path:
    """The backend's cameras.json ({"cameras": [...]}) written atomically."""
    write_json(Path(path), {"cameras": [cam.to_json() for cam in cameras]})
    return Path(path)
