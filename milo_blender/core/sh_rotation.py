"""Rotating the view-dependent colour of 3D Gaussians (real spherical harmonics, degrees 1..3), numpy only.

A splat's colour seen from direction d is c(d) = C0 * sh0 + sum_j shN[j] * Y_j(d) with the basis Y_j of 3DGS's
`eval_sh` (coefficient order and signs below; `shN` is everything after the DC, gsplat's (N, 15, 3) layout).
When the splat turns by a rotation R, its colour must turn with it: new coefficients shN' such that
c'(R d) = c(d) for every d. Each degree l is rotation invariant, so shN'_l = M_l(R) shN_l with a
(2l+1)x(2l+1) matrix (the real Wigner D-matrix in this basis).

M_l is obtained without a recursion: c'(u) = c(R^T u) at 2l+1 fixed directions u_k gives
B_l shN'_l = Y_l(R^T u_k) shN_l with B_l = Y_l(u_k), so M_l = B_l^-1 Y_l(R^T u_k). This is exact, not a fit
(both sides are degree-l polynomials on the sphere); the directions are picked once (greedy maximum volume among
64 Fibonacci directions) so that B_l is well conditioned (condition number < 3).

Speed: everything runs on component-major arrays (one contiguous row of N values per matrix entry), where numpy
is several times faster than on N small matrices.
"""
from __future__ import annotations

import numpy as np

from milo_backend.sh_constants import SH_C0, SH_C1, SH_C2, SH_C3

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
    """Real SH basis of one degree (1, 2 or 3) at unit directions (..., 3) -> (..., 2l+1), 3DGS order and signs."""
    d = np.asarray(directions)
    return np.stack(_basis_terms(degree, d[..., 0], d[..., 1], d[..., 2]), axis=-1)


def _fibonacci_directions(count: int) -> np.ndarray:
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _sample_directions(degree: int, candidates: int = 64) -> np.ndarray:
    """2l+1 directions whose basis matrix B_l is well conditioned: greedy Gram-Schmidt with pivoting."""
    directions = _fibonacci_directions(candidates)
    rows = sh_basis(directions, degree)
    chosen = []
    for _ in range(2 * degree + 1):
        best = int(np.argmax(np.einsum("ij,ij->i", rows, rows)))
        chosen.append(best)
        unit = rows[best] / np.linalg.norm(rows[best])
        rows = rows - np.outer(rows @ unit, unit)
    return directions[chosen]


_SAMPLES = {degree: _sample_directions(degree) for degree in range(1, MAX_DEGREE + 1)}
_INVERSE = {degree: np.linalg.inv(sh_basis(_SAMPLES[degree], degree)) for degree in _SAMPLES}


def degree_of(n_coeffs: int) -> int:
    """SH degree from the number of coefficients after the DC (0, 3, 8 or 15)."""
    for degree in range(MAX_DEGREE + 1):
        if n_coeffs == (degree + 1) ** 2 - 1:
            return degree
    raise ValueError(f"{n_coeffs} SH coefficients after the DC term: expected 0, 3, 8 or 15 (degree 0..3)")


def _rotation_rows(rotations: np.ndarray, dtype) -> np.ndarray:
    """(N, 3, 3) or (3, 3) rotations -> (9, N) rows, entry (a, b) in row 3a + b."""
    r = np.asarray(rotations, dtype=dtype)
    if r.shape[-2:] != (3, 3) or r.ndim not in (2, 3):
        raise ValueError(f"rotations must have shape (N, 3, 3) or (3, 3), got {r.shape}")
    return np.ascontiguousarray(r.reshape(-1, 9).T)


def _transposed_blocks(rows: np.ndarray, degree: int) -> list[np.ndarray]:
    """For l = 1..degree, T_l (2l+1, 2l+1, N) with T_l[j, i, n] = M_l[i, j] of rotation n."""
    blocks = []
    for l in range(1, degree + 1):
        u = _SAMPLES[l].astype(rows.dtype)[:, :, None]
        # Component c of R^T u_k is sum_a R[a, c] u_k[a], as (K, N) arrays.
        x, y, z = (u[:, 0] * rows[c] + u[:, 1] * rows[3 + c] + u[:, 2] * rows[6 + c] for c in range(3))
        inverse = _INVERSE[l].astype(rows.dtype)
        block = np.empty((2 * l + 1, 2 * l + 1, rows.shape[1]), dtype=rows.dtype)
        for j, term in enumerate(_basis_terms(l, x, y, z)):   # term[k] = Y_lj(R^T u_k)
            # einsum, not BLAS: these products are tiny per splat, and BLAS threads stall on a busy machine.
            np.einsum("ik,kn->in", inverse, term, out=block[j])
        blocks.append(block)
    return blocks


# Splats processed at once: long enough to amortise Python overhead, short enough for the temporaries to stay in
# cache (several times faster than whole 500k-long arrays).
_CHUNK = 16384


def _float_dtype(array) -> type:
    return np.float32 if np.asarray(array).dtype == np.float32 else np.float64


def sh_rotation_matrices(rotations: np.ndarray, degree: int = MAX_DEGREE) -> list[np.ndarray]:
    """Per-degree coefficient rotation matrices [(N,3,3), (N,5,5), (N,7,7)][:degree] with shN'_l = M_l @ shN_l.

    `rotations` (N, 3, 3) or (3, 3) are proper rotations (orthonormal, det +1); float32 input stays float32.
    """
    rows = _rotation_rows(rotations, _float_dtype(rotations))
    return [block.transpose(2, 1, 0) for block in _transposed_blocks(rows, degree)]


def _rotate_chunk(coeffs: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out (K, C, n) = coeffs (K, C, n) rotated by rows (9, n) or (9, 1)."""
    for l, block in enumerate(_transposed_blocks(rows, degree_of(coeffs.shape[0])), start=1):
        lo, hi = l * l - 1, (l + 1) ** 2 - 1
        rotated = out[lo:hi]
        rotated[...] = 0
        for j in range(2 * l + 1):
            rotated += block[j][:, None, :] * coeffs[lo + j][None]    # c'_i += M_ij c_j, for every splat


def _checked_rows(rotations: np.ndarray, n_splats: int, dtype) -> np.ndarray:
    rows = _rotation_rows(rotations, dtype)
    if rows.shape[1] not in (1, n_splats):
        raise ValueError(f"{rows.shape[1]} rotations for {n_splats} splats")
    return rows


def _chunk_rows(rows: np.ndarray, part: slice) -> np.ndarray:
    return rows if rows.shape[1] == 1 else rows[:, part]


def rotate_sh_components(coeffs: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """`rotate_sh` on component-major coefficients (K, C, N): one row of N values per coefficient and channel, as
    Blender stores the f_rest_* attributes (f_rest is channel-major: reshape (C, K, N) and swap the first axes).
    No transposes: the fastest form for many splats."""
    c = np.asarray(coeffs)
    if c.ndim != 3:
        raise ValueError(f"SH coefficients must have shape (K, C, N), got {c.shape}")
    degree_of(c.shape[0])
    dtype = _float_dtype(c)
    rows = _checked_rows(rotations, c.shape[2], dtype)
    out = np.empty(c.shape, dtype=dtype)
    for part in (slice(start, start + _CHUNK) for start in range(0, c.shape[2], _CHUNK)):
        _rotate_chunk(c[:, :, part], _chunk_rows(rows, part), out[:, :, part])
    return out


def rotate_sh(sh_rest: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Rotate SH coefficients after the DC: (N, K, C) with K in {0, 3, 8, 15} -> same shape and dtype.

    Evaluating the result at R d equals evaluating the input at d. `rotations` is (N, 3, 3) (one per splat,
    e.g. `deform`'s frame rotation) or (3, 3) for all. The DC term never changes under rotation.
    """
    sh = np.asarray(sh_rest)
    if sh.ndim != 3:
        raise ValueError(f"SH coefficients must have shape (N, K, C), got {sh.shape}")
    degree_of(sh.shape[1])
    dtype = _float_dtype(sh)
    rows = _checked_rows(rotations, sh.shape[0], dtype)
    out = np.empty(sh.shape, dtype=dtype)
    for part in (slice(start, start + _CHUNK) for start in range(0, sh.shape[0], _CHUNK)):
        # Transposing chunk by chunk stays in cache (3x faster than transposing the whole array at once).
        chunk = np.ascontiguousarray(sh[part].transpose(1, 2, 0), dtype=dtype)
        rotated = np.empty_like(chunk)
        _rotate_chunk(chunk, _chunk_rows(rows, part), rotated)
        out[part] = rotated.transpose(2, 0, 1)
    return out
