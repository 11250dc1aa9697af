"""Real spherical harmonics up to degree 3, exactly as 3DGS (and gsplat) evaluate view-dependent colour.

Coefficient order per colour channel is the standard one (index l*l + l + m), i.e. the order of the
3DGS PLY `f_dc` + `f_rest` layout and of gsplat's `spherical_harmonics`; both renderers call `eval_sh`.
"""
from __future__ import annotations

import torch

from milo_backend.sh_constants import SH_C0, SH_C1, SH_C2, SH_C3


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """SH basis values (N, (degree+1)^2) at the unit directions `dirs` (N,3)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    cols = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        cols += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        cols += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2.0 * zz - xx - yy), SH_C2[3] * xz,
                 SH_C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [SH_C3[0] * y * (3.0 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4.0 * zz - xx - yy),
                 SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy), SH_C3[4] * x * (4.0 * zz - xx - yy),
                 SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3.0 * yy)]
    return torch.stack(cols, dim=-1)


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """RGB (N,3) of SH coefficients `sh` (N,K,3) seen along `dirs` (N,3, camera -> Gaussian, any length).

    Uses the first (degree+1)^2 coefficients; adds 0.5 and clamps at 0 as 3DGS does (no upper clamp).
    """
    n_coeffs = (degree + 1) ** 2
    if sh.shape[-2] < n_coeffs:
        raise ValueError(f"SH degree {degree} needs {n_coeffs} coefficients, got {sh.shape[-2]}")
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    basis = sh_basis(dirs, degree)  # (N, n_coeffs)
    rgb = torch.einsum("nk,nkc->nc", basis, sh[:, :n_coeffs, :])
    return torch.clamp_min(rgb + 0.5, 0.0)
