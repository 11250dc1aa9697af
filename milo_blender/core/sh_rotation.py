"""Rotating the view-dependent colour of 3D Gaussians (real spherical harmonics, degrees 1..3), numpy only.

A splat's colour seen from direction d is c(d) = C0 * sh0 + sum_j shN[j] * Y_j(d) with the basis Y_j of 3DGS's
`eval_sh` (coefficient order and signs below; `shN` is everything after the DC, gsplat's (N, 15, 3) layout).
When the splat turns by a rotation R, its colour must turn with it: new coefficients shN' such that
c'(R d) = c(d) for every d. Each degree l is rotation invariant, so shN'_l = M_l(R) shN_l with a
(2l+1)x(2l+1) matrix (the real Wigner D-matrix in this basis).

M_l is obtained without a recursion: c'(u) = c(R^T u) sampled at 12 fixed directions u_k gives
B_l shN'_l = Y_l(R^T u_k) shN_l with B_l = Y_l(u_k) (Fibonacci directions: condition number <= 3.3 for
l = 1..3), so M_l = pinv(B_l) Y_l(R^T u_k). This is exact, not a fit (both sides are degree-l polynomials on the
sphere), and vectorises over N different rotations as a few array operations and one matrix product.
"""
from __future__ import annotations

import numpy as np

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

MAX_DEGREE = 3


def _basis_terms(degree: int, x, y, z) -> list:
    """The 2l+1 basis functions of one degree as separate arrays (shared by evaluation and rotation)."""
    if degree == 1:
        return [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    xx, yy, zz = x * x, y * y, z * z
    if degree == 2:
        return [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy),
                SH_C2[3] * x * z, SH_C2[4] * (xx - yy)]
    if degree == 3:
        t = 4 * zz - xx - yy
        return [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * t,
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * t,
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    raise ValueError(f"SH degree must be 1, 2 or 3, got {degree}")


def sh_basis(directions: np.ndarray, degree: int) -> np.ndarray:
    """Real SH basis of one degree (1, 2 or 3) at unit directions (..., 3) -> (..., 2*degree+1), 3DGS order and signs."""
    d = np.asarray(directions)
    return np.stack(_basis_terms(degree, d[..., 0], d[..., 1], d[..., 2]), axis=-1)


def _fibonacci_directions(count: int) -> np.ndarray:
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


# One sample set for all degrees: 12 points keep every B_l well conditioned (fewer make l = 3 ill conditioned).
_SAMPLES = _fibonacci_directions(12)
_PINV = {degree: np.linalg.pinv(sh_basis(_SAMPLES, degree)) for degree in range(1, MAX_DEGREE + 1)}


def degree_of(n_coeffs: int) -> int:
    """SH degree from the number of coefficients after the DC (0, 3, 8 or 15)."""
    for degree in range(MAX_DEGREE + 1):
        if n_coeffs == (degree + 1) ** 2 - 1:
            return degree
    raise ValueError(f"{n_coeffs} SH coefficients after the DC term: expected 0, 3, 8 or 15 (degree 0..3)")


def _as_rotations(rotations: np.ndarray, dtype) -> np.ndarray:
    r = np.asarray(rotations, dtype=dtype)
    if r.shape[-2:] != (3, 3) or r.ndim not in (2, 3):
        raise ValueError(f"rotations must have shape (N, 3, 3) or (3, 3), got {r.shape}")
    return r.reshape(-1, 3, 3)


def _transposed_blocks(rotations: np.ndarray, degree: int) -> list[np.ndarray]:
    """M_l^T for l = 1..degree, each (N, 2l+1, 2l+1), for rotations (N, 3, 3) of one float dtype."""
    samples = _SAMPLES.T.astype(rotations.dtype)
    # Component i of R^T u_k is sum_j R[j, i] u_k[j]: three (N, 3) @ (3, K) products.
    x, y, z = (rotations[:, :, i] @ samples for i in range(3))
    blocks = []
    for l in range(1, degree + 1):
        pinv_t = _PINV[l].T.astype(rotations.dtype)
        block_t = np.empty((rotations.shape[0], 2 * l + 1, 2 * l + 1), dtype=rotations.dtype)
        # Row j of M_l^T is Y_lj(R^T u_k) @ pinv(B_l)^T: one BLAS product per basis function, written in place.
        for j, term in enumerate(_basis_terms(l, x, y, z)):
            np.matmul(term, pinv_t, out=block_t[:, j, :])
        blocks.append(block_t)
    return blocks


def _float_dtype(array) -> type:
    return np.float32 if np.asarray(array).dtype == np.float32 else np.float64


def sh_rotation_matrices(rotations: np.ndarray, degree: int = MAX_DEGREE) -> list[np.ndarray]:
    """Per-degree coefficient rotation matrices [(N,3,3), (N,5,5), (N,7,7)][:degree] with shN'_l = M_l @ shN_l.

    `rotations` (N, 3, 3) or (3, 3) are proper rotations (orthonormal, det +1); float32 input stays float32.
    """
    r = _as_rotations(rotations, _float_dtype(rotations))
    return [block.transpose(0, 2, 1) for block in _transposed_blocks(r, degree)]


def rotate_sh(sh_rest: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Rotate SH coefficients after the DC: (N, K, C) with K in {0, 3, 8, 15} -> same shape and dtype.

    Evaluating the result at R d equals evaluating the input at d. `rotations` is (N, 3, 3) (one per splat,
    e.g. `deform`'s frame rotation) or (3, 3) for all. The DC term never changes under rotation.
    """
    sh = np.asarray(sh_rest)
    if sh.ndim != 3:
        raise ValueError(f"SH coefficients must have shape (N, K, C), got {sh.shape}")
    degree = degree_of(sh.shape[1])
    dtype = _float_dtype(sh)
    r = _as_rotations(rotations, dtype)
    if r.shape[0] not in (1, sh.shape[0]):
        raise ValueError(f"{r.shape[0]} rotations for {sh.shape[0]} splats")
    out = np.empty(sh.shape, dtype=dtype)
    for l, block_t in enumerate(_transposed_blocks(r, degree), start=1):
        lo, hi = l * l - 1, (l + 1) ** 2 - 1
        out[:, lo:hi] = np.matmul(block_t.transpose(0, 2, 1), sh[:, lo:hi].astype(dtype, copy=False))
    return out
