"""Which way is up: the backend's world is the SfM world, whose axes are arbitrary. People hold cameras
upright, so the average camera "up" (minus the y axis of OpenCV cameras) is the scene's up; the imported
collection is rotated so that it becomes Blender's +Z. When the photos were not taken upright the guess
can be upside down, hence a flip.
"""
from __future__ import annotations

import numpy as np

Z = np.array([0.0, 0.0, 1.0])
# 180 degrees about X: turns the scene upside down and keeps it right-handed
FLIP = np.diag([1.0, -1.0, -1.0])


def estimate_up(world_to_cams: np.ndarray) -> np.ndarray:
    """Unit up vector in world coordinates from (N,4,4) OpenCV world-to-camera matrices.

    Row 1 of the rotation is the camera's y axis (pointing down in the image) in world coordinates.
    Falls back to +Z when the cameras disagree completely (e.g. a turntable shot in all orientations).
    """
    rows = np.asarray(world_to_cams, dtype=np.float64)[:, 1, :3]
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    up = -rows.mean(axis=0)
    norm = np.linalg.norm(up)
    return up / norm if norm > 1e-3 else Z.copy()


def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """The smallest rotation (3x3) taking the unit vector `up` to +Z."""
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    axis = np.cross(up, Z)
    s, c = np.linalg.norm(axis), float(up @ Z)
    if s < 1e-9:
        return np.eye(3) if c > 0 else FLIP.copy()
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * (kx @ kx)


def up_rotation(world_to_cams: np.ndarray | None, flip: bool = False) -> np.ndarray:
    """4x4 matrix that turns the reconstruction so its up is +Z (identity without cameras), optionally flipped."""
    rot = rotation_to_z(estimate_up(world_to_cams)) if world_to_cams is not None and len(world_to_cams) else np.eye(3)
    if flip:
        rot = FLIP @ rot
    m = np.eye(4)
    m[:3, :3] = rot
    return m
