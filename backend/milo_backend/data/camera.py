"""The one camera type used everywhere: an undistorted pinhole camera in OpenCV convention.

Conventions (shared by the renderers, the mesh code and cameras.json):
- `world_to_cam` is a 4x4 matrix mapping world points to camera coordinates with x right, y down,
  z forward (OpenCV / COLMAP). NeRF/OpenGL poses are converted on load.
- Intrinsics are in pixels of an image `width` x `height`; the centre of pixel (i, j) is at
  (i + 0.5, j + 0.5), as in COLMAP and gsplat.
- Distortion never reaches this type: distorted inputs are undistorted once when the dataset loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from milo_backend.errors import MiloError


@dataclass
class Camera:
    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_cam: np.ndarray = field(default_factory=lambda: np.eye(4))
    image_path: Path | None = None
    split: str = "train"  # "train" or "test"

    # -- derived -----------------------------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def cam_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_cam)

    @property
    def center(self) -> np.ndarray:
        R, t = self.world_to_cam[:3, :3], self.world_to_cam[:3, 3]
        return -R.T @ t

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera for an image resized to width x height."""
        sx, sy = width / self.width, height / self.height
        return replace(self, width=int(width), height=int(height), fx=self.fx * sx, fy=self.fy * sy,
                       cx=self.cx * sx, cy=self.cy * sy)

    def downscaled(self, factor: float) -> "Camera":
        return self.scaled(max(1, round(self.width / factor)), max(1, round(self.height / factor)))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N,3) -> pixel coordinates (N,2) and camera depth z (N,)."""
        pc = points @ self.world_to_cam[:3, :3].T + self.world_to_cam[:3, 3]
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * pc[:, 0] / z + self.cx, self.fy * pc[:, 1] / z + self.cy], axis=1)
        return uv, z

    # -- (de)serialisation: cameras.json -----------------------------------------------------
    def to_json(self) -> dict:
        return {"name": self.name, "width": self.width, "height": self.height, "fx": self.fx,
                "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "world_to_cam": np.asarray(self.world_to_cam, dtype=float).tolist(),
                "image_path": str(self.image_path) if self.image_path else None, "split": self.split}

    @classmethod
    def from_json(cls, d: dict) -> "Camera":
        return cls(name=d["name"], width=int(d["width"]), height=int(d["height"]), fx=float(d["fx"]),
                   fy=float(d["fy"]), cx=float(d["cx"]), cy=float(d["cy"]),
                   world_to_cam=np.asarray(d["world_to_cam"], dtype=np.float64),
                   image_path=Path(d["image_path"]) if d.get("image_path") else None,
                   split=d.get("split", "train"))


def check_cameras(cameras: list[Camera], source) -> None:
    """Raise a MiloError naming `source` (the file they came from), the camera and the field, for
    cameras that cannot be right: non-positive sizes or focal lengths, a principal point outside the image,
    non-finite numbers, or a pose whose rotation is not a rotation (a truncated or edited model file)."""
    for c in cameras:
        where = f"{source}: camera of {c.name!r}"
        hint = "the camera model is damaged: re-run structure from motion (or re-export the poses)"
        if not (c.width > 0 and c.height > 0):
            raise MiloError(f"{where} has image size {c.width}x{c.height}", hint=hint, path=source)
        if not (np.isfinite([c.fx, c.fy]).all() and c.fx > 0 and c.fy > 0):
            raise MiloError(f"{where} has focal length fx={c.fx}, fy={c.fy} (must be positive)", hint=hint,
                            path=source)
        if not (np.isfinite([c.cx, c.cy]).all() and 0 <= c.cx <= c.width and 0 <= c.cy <= c.height):
            raise MiloError(f"{where} has its principal point ({c.cx}, {c.cy}) outside the "
                            f"{c.width}x{c.height} image", hint=hint, path=source)
        m = np.asarray(c.world_to_cam, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise MiloError(f"{where} has a pose with missing or non-finite values", hint=hint, path=source)
        r = m[:3, :3]
        if not (np.allclose(r @ r.T, np.eye(3), atol=1e-4) and np.linalg.det(r) > 0):
            raise MiloError(f"{where} has a pose whose rotation is not a rotation (det {np.linalg.det(r):.3g})",
                            hint=hint, path=source)


def camera_extent(cameras: list[Camera]) -> float:
    """R_cam of the method: 1.1 x the largest distance of a camera centre from their mean."""
    centers = np.stack([c.center for c in cameras])
    return 1.1 * float(np.linalg.norm(centers - centers.mean(0), axis=1).max()) or 1.0


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """world_to_cam (OpenCV axes) of a camera at `eye` looking at `target`."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-8:  # looking along `up`
        x = np.cross(z, np.array([1.0, 0.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = -R @ eye
    return m
