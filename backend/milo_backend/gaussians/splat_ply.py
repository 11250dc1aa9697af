"""The standard 3D Gaussian Splatting PLY format, torch-free (the Blender extension imports this too).

One `vertex` element, binary little endian, float32 properties:
  x y z  nx ny nz (zeros)  f_dc_0..2  f_rest_0..3(K-1)-1  opacity  scale_0..2  rot_0..3
- f_dc / f_rest are SH coefficients; f_rest is channel-major: f_rest[c*(K-1) + j] is coefficient j+1
  of colour channel c (as the reference 3DGS code writes it).
- opacity is a logit, scales are log standard deviations, rot is an unnormalised wxyz quaternion.

In memory the SH is (N, K, 3) with the DC coefficient first, K = 1, 4, 9 or 16 (degree 0..3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib import recfunctions
from plyfile import PlyData, PlyElement, PlyParseError

from milo_backend.atomic import atomic_path
from milo_backend.errors import MiloError

SH_COEFFS_BY_DEGREE = {0: 1, 1: 4, 2: 9, 3: 16}
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def property_names(num_sh: int) -> list[str]:
    """PLY property names, in file order, for `num_sh` SH coefficients per channel."""
    rest = [f"f_rest_{i}" for i in range(3 * (num_sh - 1))]
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + rest
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def splat_table(means: np.ndarray, sh: np.ndarray, opacity_logits: np.ndarray, log_scales: np.ndarray,
                quats: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The 3DGS PLY properties as one (N, P) float32 table and their names, in file order.

    Shapes: (N,3) (N,K,3) (N,) (N,3) (N,4). The Blender extension stores these columns as attributes.
    """
    means = np.asarray(means, dtype=np.float32).reshape(-1, 3)
    n = means.shape[0]
    sh = np.asarray(sh, dtype=np.float32)
    if sh.ndim != 3 or sh.shape[0] != n or sh.shape[2] != 3 or sh.shape[1] not in SH_COEFFS_BY_DEGREE.values():
        raise ValueError(f"sh must be (N, K in 1/4/9/16, 3) with N={n}, got {sh.shape}")
    opacity_logits = np.asarray(opacity_logits, dtype=np.float32).reshape(n, 1)
    log_scales = np.asarray(log_scales, dtype=np.float32).reshape(n, 3)
    quats = np.asarray(quats, dtype=np.float32).reshape(n, 4)
    k = sh.shape[1]
    # channel-major rest: (N, K-1, 3) -> (N, 3, K-1) -> (N, 3(K-1))
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))
    table = np.concatenate([means, np.zeros((n, 3), np.float32), sh[:, 0, :], rest, opacity_logits,
                            log_scales, quats], axis=1)
    return property_names(k), table


def write_splat_ply(path: str | Path, means: np.ndarray, sh: np.ndarray, opacity_logits: np.ndarray,
                    log_scales: np.ndarray, quats: np.ndarray) -> Path:
    """Write Gaussians as a standard 3DGS PLY (atomically). Shapes: (N,3) (N,K,3) (N,) (N,3) (N,4)."""
    names, table = splat_table(means, sh, opacity_logits, log_scales, quats)
    n = table.shape[0]
    dtype = np.dtype([(name, "<f4") for name in names])
    # one contiguous float32 table reinterpreted as records: no per-field copies for millions of splats
    records = np.ascontiguousarray(table, dtype="<f4").view(dtype).reshape(n)
    element = PlyElement.describe(records, "vertex")
    with atomic_path(path) as tmp:
        PlyData([element], text=False, byte_order="<").write(str(tmp))
    return Path(path)


def read_splat_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a 3DGS PLY of any SH degree 0..3 (missing f_rest = degree 0).

    Returns float32 arrays: means (N,3), sh (N,K,3) DC first, opacity_logits (N,), log_scales (N,3),
    quats (N,4) wxyz. Raises MiloError when the file is missing, unreadable or not a 3DGS PLY.
    """
    path = Path(path)
    if not path.is_file():
        raise MiloError(f"Gaussian PLY file not found: {path}", "check the path, or re-run training to "
                        "produce gaussians.ply", path)
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, EOFError, OSError, IndexError, KeyError) as exc:
        raise MiloError(f"{path} is not a readable PLY file ({exc})",
                        "choose a Gaussian splatting .ply (as written by 3DGS/MILo training)", path) from exc
    if "vertex" not in [e.name for e in ply.elements]:
        raise MiloError(f"{path} has no 'vertex' element, so it is not a Gaussian splatting PLY",
                        "choose a Gaussian splatting .ply (as written by 3DGS/MILo training)", path)
    vertex = ply["vertex"]
    names = {p.name for p in vertex.properties}
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        kind = "a mesh or point cloud" if {"x", "y", "z"} <= names else "not a Gaussian splatting file"
        raise MiloError(f"{path} lacks the 3DGS properties {', '.join(missing)}: it is {kind}",
                        "choose a Gaussian splatting .ply (x y z f_dc_* opacity scale_* rot_*); "
                        "meshes are imported as meshes, not splats", path)
    n_rest = sum(1 for name in names if name.startswith("f_rest_"))
    degrees = {3 * (k - 1): k for k in SH_COEFFS_BY_DEGREE.values()}
    if n_rest not in degrees or any(f"f_rest_{i}" not in names for i in range(n_rest)):
        raise MiloError(f"{path} has {n_rest} f_rest_* properties; a 3DGS PLY has 0, 9, 24 or 45 "
                        "(SH degree 0-3) numbered from f_rest_0",
                        "re-export the splats with a standard 3DGS exporter", path)
    k = degrees[n_rest]
    # one (N, P) float32 table: a free view of the memory-mapped records when every property is
    # float32 (3DGS files), a single conversion otherwise; columns are then picked by position
    table = recfunctions.structured_to_unstructured(vertex.data, dtype=np.float32)
    position = {name: i for i, name in enumerate(vertex.data.dtype.names)}

    def columns(*cols: str) -> np.ndarray:
        """A copy (so nothing keeps the file mapped); a slice when the columns are consecutive."""
        idx = [position[c] for c in cols]
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return np.array(table[:, idx[0]:idx[0] + len(idx)])
        return table[:, idx]

    n = len(table)
    sh = np.empty((n, k, 3), np.float32)
    sh[:, 0, :] = columns("f_dc_0", "f_dc_1", "f_dc_2")
    if k > 1:
        rest = columns(*[f"f_rest_{i}" for i in range(n_rest)])
        sh[:, 1:, :] = rest.reshape(n, 3, k - 1).transpose(0, 2, 1)
    out = {"means": columns("x", "y", "z"), "sh": sh, "opacity_logits": columns("opacity")[:, 0],
           "log_scales": columns("scale_0", "scale_1", "scale_2"),
           "quats": columns("rot_0", "rot_1", "rot_2", "rot_3")}
    del table, vertex, ply
    if not all(np.isfinite(v).all() for v in out.values()):
        raise MiloError(f"{path} contains NaN or infinite Gaussian parameters",
                        "the file is corrupt or came from a diverged training run; re-export it", path)
    return out
