"""Gaussians as per-point attributes named like the 3DGS PLY properties (f_dc_0.., f_rest_.., opacity,
scale_0.., rot_0..), which is what other splat add-ons and Blender's own PLY importer use.
"""
from __future__ import annotations

import numpy as np

from milo_backend.gaussians.splat_ply import splat_table
from milo_backend.sh_constants import SH_C0

POSITION_AND_NORMAL = ("x", "y", "z", "nx", "ny", "nz")  # stored as the point positions, not attributes


def splat_attributes(splats: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """read_splat_ply's dict -> positions (N,3) and {property name: (N,) float32} in file order."""
    names, table = splat_table(splats["means"], splats["sh"], splats["opacity_logits"], splats["log_scales"],
                               splats["quats"])
    attrs = {name: np.ascontiguousarray(table[:, i]) for i, name in enumerate(names)
             if name not in POSITION_AND_NORMAL}
    return np.ascontiguousarray(table[:, :3]), attrs


def base_colors(splats: dict[str, np.ndarray]) -> np.ndarray:
    """(N,4) RGBA in [0,1]: the view-independent colour and opacity, for display."""
    rgb = np.clip(0.5 + SH_C0 * splats["sh"][:, 0, :], 0.0, 1.0)
    alpha = 1.0 / (1.0 + np.exp(-splats["opacity_logits"].astype(np.float64)))
    return np.concatenate([rgb, alpha[:, None]], axis=1).astype(np.float32)

