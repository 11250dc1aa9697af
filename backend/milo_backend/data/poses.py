"""How close are two sets of camera poses, up to the similarity (scale, rotation, translation) that SfM
cannot observe? Used by the SfM benchmark and tests."""
from __future__ import annotations

from pathlib import PurePath

import numpy as np

from milo_backend.data.camera import Camera
from milo_backend.errors import MiloError


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity with dst ~ s R src + t (Umeyama 1991). src, dst: (N,3), N >= 3."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # a reflection is not a pose change
        D[2, 2] = -1.0
    R = U @ D @ Vt
    var_s = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(S) @ D) / var_s) if var_s > 0 else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Angle of Ra Rb^T; atan2 of sin and cos keeps small angles exact (arccos alone loses ~1e-6 deg)."""
    rel = Ra @ Rb.T
    sin = np.linalg.norm(rel - rel.T) / (2.0 * np.sqrt(2.0))
    cos = (np.trace(rel) - 1.0) / 2.0
    return float(np.degrees(np.arctan2(sin, cos)))


def pose_key(name: str) -> str:
    """Match key of an image name: file stem without folders or extension ("images/0001.jpg" -> "0001")."""
    return PurePath(name.replace("\\", "/")).stem


def compare_poses(cameras: list[Camera], reference_cameras: list[Camera]) -> dict:
    """Align `cameras` to `reference_cameras` (matched by image name) with a similarity on the camera
    centres, then measure rotation errors (degrees) and centre errors relative to the reference scene size
    (the largest distance between two reference centres)."""
    ref = {pose_key(c.name): c for c in reference_cameras}
    pairs = [(c, ref[pose_key(c.name)]) for c in cameras if pose_key(c.name) in ref]
    if len(pairs) < 3:
        raise MiloError(f"Only {len(pairs)} cameras have a reference with the same image name (need 3)",
                        hint="Compare cameras of the same photos.")
    src = np.stack([c.center for c, _ in pairs])
    dst = np.stack([r.center for _, r in pairs])
    s, R, t = umeyama(src, dst)
    aligned = src @ (s * R).T + t
    # world x' = s R x + t  =>  the camera rotation (world->cam) becomes R_c R^T in the aligned world
    rot_err = np.array([rotation_angle_deg(c.world_to_cam[:3, :3] @ R.T, r.world_to_cam[:3, :3]) for c, r in pairs])
    scene = float(np.max(np.linalg.norm(dst[:, None] - dst[None], axis=-1)))
    center_err = np.linalg.norm(aligned - dst, axis=1) / (scene if scene > 0 else 1.0)
    return {"matched": len(pairs), "scale": s,
            "rotation_median_deg": float(np.median(rot_err)), "rotation_max_deg": float(rot_err.max()),
            "center_median_rel": float(np.median(center_err)), "center_max_rel": float(center_err.max())}
