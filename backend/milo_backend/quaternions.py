"""Quaternion maths shared by the renderer and the mesh code (wxyz, any non-zero norm)."""
from __future__ import annotations

import torch


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (...,3,3) of quaternions (...,4) wxyz (normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*quats.shape[:-1], 3, 3)
