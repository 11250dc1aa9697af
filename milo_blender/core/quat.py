"""Quaternions (w, x, y, z) and rotation matrices on arrays of them (numpy only)."""
from __future__ import annotations

import numpy as np


def quat_multiply(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Hamilton product of wxyz quaternions whose components lie along `axis` ((..., 4) by default; axis=0
    takes (4, N) component rows, which numpy processes several times faster than strided columns)."""
    aw, ax, ay, az = np.moveaxis(a, axis, 0)
    bw, bx, by, bz = np.moveaxis(b, axis, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=axis)


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    return q * np.array([1, -1, -1, -1], dtype=q.dtype)


def quat_to_matrix(q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unit wxyz quaternions with components along `axis` -> rotation matrices: (..., 4) -> (..., 3, 3), or with
    axis=0 (4, N) -> (3, 3, N)."""
    w, x, y, z = np.moveaxis(q, axis, 0)
    entries = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
               2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
               2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    if axis == 0:
        return np.stack(entries).reshape((3, 3) + w.shape)
    return np.stack(entries, axis=-1).reshape(w.shape + (3, 3))


def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit wxyz quaternions (..., 4), stable for every rotation angle."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four candidates proportional to q, each exact but well conditioned only when its pivot (4w^2, 4x^2, ...)
    # is the largest: pick that one per matrix (Shepperd's method).
    pivots = [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22]
    a, b, c = m21 - m12, m02 - m20, m10 - m01
    d, e, f = m10 + m01, m02 + m20, m21 + m12
    pick = np.argmax(np.stack(pivots), axis=0)
    w = np.choose(pick, [pivots[0], a, b, c])
    x = np.choose(pick, [a, pivots[1], d, e])
    y = np.choose(pick, [b, d, pivots[2], f])
    z = np.choose(pick, [c, e, f, pivots[3]])
    return np.stack([w, x, y, z], axis=-1) / np.sqrt(w * w + x * x + y * y + z * z)[..., None]
