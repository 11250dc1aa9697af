"""The splats of one frame, assembled from a pose (centres, rotations, scales and the rotation their colour turned
by) and the colour data the Gaussian object keeps (numpy only).

A bound Gaussian object stores its view-dependent colour (f_rest_*) in the rest frame of the binding: the live
display only moves centres, rotations and scales (SH rotation of 500k splats costs more than the whole per-frame
budget), and exports rotate the SH with each splat's frame rotation. `sh_rotation_since_rest` recovers that
rotation from any stored pose, which is how a rebind or unbind bakes the current colour into the splats.

Poses are in the Gaussian object's space; `transform_pose` moves them to world space (similarity transforms
only: a Gaussian under a non-uniform scale or a mirror is no longer described by a rotation of its SH).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .binding import Binding, deform
from .quat import quat_from_matrix, quat_multiply, quat_to_matrix
from .sh_rotation import rotate_sh_components


@dataclass(frozen=True, eq=False)
class Pose:
    """means (N,3), unit wxyz quats (N,4), log_scales (N,3), float32; sh_rotation: (N,3,3) per splat, (3,3) for
    all, or None (colour unchanged) - the rotation to apply to the stored SH coefficients."""
    means: np.ndarray
    quats: np.ndarray
    log_scales: np.ndarray
    sh_rotation: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> "Pose":
        rotation = self.sh_rotation
        if rotation is not None and rotation.ndim == 3:
            rotation = rotation[keep]
        return Pose(self.means[keep], self.quats[keep], self.log_scales[keep], rotation)


@dataclass(frozen=True, eq=False)
class SplatColors:
    """What a pose does not change: f_dc (3, N) and f_rest (3 (K-1), N) as rows of the attribute names (f_rest
    channel-major: row c (K-1) + j is coefficient j+1 of channel c), opacity logits (N,)."""
    f_dc: np.ndarray
    f_rest: np.ndarray
    opacity: np.ndarray

    @property
    def n_rest_coeffs(self) -> int:
        return self.f_rest.shape[0] // 3

    def subset(self, keep: np.ndarray) -> "SplatColors":
        return SplatColors(self.f_dc[:, keep], self.f_rest[:, keep], self.opacity[keep])


def bound_pose(binding: Binding, vertices: np.ndarray, scale_with_stretch: bool) -> Pose:
    """The splats on the (deformed) bound vertices (V, 3), in the binding's space."""
    means, quats, log_scales, frame_rotation = deform(binding, vertices, scale_with_stretch)
    return Pose(means, quats, log_scales, frame_rotation)


def rest_quats(binding: Binding) -> np.ndarray:
    """The splats' rotations at bind time (unit wxyz, (N, 4))."""
    return deform(binding, binding.rest_vertices)[1]


def sh_rotation_since_rest(binding: Binding, quats: np.ndarray) -> np.ndarray:
    """(N,3,3): the rotation each splat turned by between bind time and a pose with these rotations. Exact for
    poses made by `deform` (R' = G R, so G = R' R^T), and defined for any stored rotations."""
    q = np.asarray(quats, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rest = rest_quats(binding).astype(np.float64)
    turn = quat_multiply(q, rest * np.array([1.0, -1.0, -1.0, -1.0]))
    return quat_to_matrix(turn).astype(np.float32)


def similarity_parts(matrix: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """4x4 matrix = translation * uniform scale * rotation -> (rotation (3,3), scale, translation (3,)); ValueError
    for a non-uniform scale, a shear or a mirror."""
    m = np.asarray(matrix, dtype=np.float64)
    linear = m[:3, :3]
    det = float(np.linalg.det(linear))
    if not det > 0:
        raise ValueError("the transform mirrors or flattens the splats (negative or zero scale)")
    scale = det ** (1.0 / 3.0)
    rotation = linear / scale
    if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-5):
        raise ValueError("the transform has a non-uniform scale or a shear")
    return rotation, scale, m[:3, 3]


def transform_pose(pose: Pose, matrix: np.ndarray) -> Pose:
    """The pose seen through a similarity transform (e.g. the object's matrix_world): centres moved, rotations
    and SH turned with it, log scales shifted by log(scale)."""
    rotation, scale, translation = similarity_parts(matrix)
    if np.allclose(matrix, np.eye(4), rtol=0, atol=1e-12):
        return pose
    means = (pose.means.astype(np.float64) @ (scale * rotation).T + translation).astype(np.float32)
    turn = quat_from_matrix(rotation)
    quats = quat_multiply(np.broadcast_to(turn, pose.quats.shape), pose.quats.astype(np.float64))
    if pose.sh_rotation is None:
        sh_rotation = rotation
    else:
        sh_rotation = np.einsum("ij,...jk->...ik", rotation, pose.sh_rotation.astype(np.float64))
    return Pose(means, quats.astype(np.float32), (pose.log_scales + np.float32(np.log(scale))).astype(np.float32),
                sh_rotation.astype(np.float32))


def f_rest_components(f_rest: np.ndarray) -> np.ndarray:
    """(3 (K-1), N) channel-major attribute rows -> (K-1, 3, N) coefficient-major rows (`rotate_sh_components`)."""
    rows = np.asarray(f_rest)
    return rows.reshape(3, rows.shape[0] // 3, rows.shape[1]).swapaxes(0, 1)


def rotated_f_rest(f_rest: np.ndarray, sh_rotation: np.ndarray | None) -> np.ndarray:
    """The f_rest attribute rows after turning each splat's colour by sh_rotation ((N,3,3) or (3,3))."""
    if sh_rotation is None or f_rest.shape[0] == 0:
        return np.array(f_rest, dtype=np.float32)
    rotated = rotate_sh_components(np.ascontiguousarray(f_rest_components(f_rest), dtype=np.float32), sh_rotation)
    return np.ascontiguousarray(rotated.swapaxes(0, 1)).reshape(f_rest.shape)


def splat_arrays(pose: Pose, colors: SplatColors, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The splats as `write_splat_ply` / `read_splat_ply` arrays (means, sh (N,K,3), opacity_logits, log_scales,
    quats), keeping only `keep` (bool mask or indices) when given."""
    if keep is not None:
        pose, colors = pose.subset(keep), colors.subset(keep)
    n = len(pose.means)
    k = colors.n_rest_coeffs + 1
    sh = np.empty((n, k, 3), np.float32)
    sh[:, 0, :] = colors.f_dc.T
    if k > 1:
        rest = rotated_f_rest(colors.f_rest, pose.sh_rotation)
        sh[:, 1:, :] = rest.reshape(3, k - 1, n).transpose(2, 1, 0)
    return {"means": np.asarray(pose.means, np.float32), "sh": sh,
            "opacity_logits": np.asarray(colors.opacity, np.float32),
            "log_scales": np.asarray(pose.log_scales, np.float32), "quats": np.asarray(pose.quats, np.float32)}


def frame_file_name(frame: int) -> str:
    """The file of one frame of an exported sequence: frame_0001.ply."""
    return f"frame_{frame:04d}.ply"
