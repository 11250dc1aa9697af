"""Triangle mesh files: the output `mesh.ply` (binary, uchar vertex colours) and ground-truth meshes
(PLY or Wavefront OBJ) for evaluation.

`mesh.ply` layout (read by the Blender extension's `core/mesh_ply.py`): element `vertex` with float32
x, y, z and uchar red, green, blue; element `face` with a uchar-counted int32 list `vertex_indices`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement, PlyElementParseError

from milo_backend.atomic import atomic_path
from milo_backend.errors import MiloError

_HINT = "pass a triangle mesh as .ply or .obj (vertices and faces)"


def write_mesh_ply(path: str | Path, verts: np.ndarray, faces: np.ndarray,
                   colors: np.ndarray | None = None) -> Path:
    """Write a binary little-endian PLY (atomically). `colors` (V,3) uint8 or None."""
    verts = np.asarray(verts, dtype=np.float32).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int32).reshape(-1, 3)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    v = np.empty(len(verts), dtype=fields)
    v["x"], v["y"], v["z"] = verts.T
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        v["red"], v["green"], v["blue"] = colors.T
    f = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = faces
    ply = PlyData([PlyElement.describe(v, "vertex"),
                   PlyElement.describe(f, "face", len_types={"vertex_indices": "u1"})], text=False)
    with atomic_path(path) as tmp:
        ply.write(str(tmp))
    return Path(path)


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(verts (V,3) float64, faces (F,3) int64) of a .ply or .obj file; polygons become triangle fans."""
    path = Path(path)
    if not path.is_file():
        raise MiloError(f"mesh file not found: {path}", hint=_HINT, path=path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".ply":
            verts, polys = _read_ply(path)
        elif suffix == ".obj":
            verts, polys = _read_obj(path)
        else:
            raise MiloError(f"{path} is neither a .ply nor an .obj file", hint=_HINT, path=path)
    except MiloError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file for the user
        raise MiloError(f"{path} is not a readable mesh ({type(exc).__name__}: {exc})", hint=_HINT,
                        path=path) from exc
    faces = _triangulate(polys)
    if len(verts) and len(faces) and (faces.min() < 0 or faces.max() >= len(verts)):
        raise MiloError(f"{path} has faces that refer to missing vertices", hint=_HINT, path=path)
    return verts, faces


def read_vertex_colors(path: str | Path) -> np.ndarray | None:
    """(V,3) uint8 vertex colours of a PLY mesh (`mesh.ply`), None when it has none."""
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file for the user
        raise MiloError(f"{path} is not a readable PLY mesh ({type(exc).__name__}: {exc})", hint=_HINT,
                        path=Path(path)) from exc
    if not {"red", "green", "blue"} <= set(vertex.data.dtype.names):
        return None
    return np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)


def _read_ply(path: Path) -> tuple[np.ndarray, list | np.ndarray]:
    try:  # all triangles: one (F,3) array instead of a Python list per face
        ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3, "vertex_index": 3}})
    except PlyElementParseError:
        ply = PlyData.read(str(path))
    names = [e.name for e in ply.elements]
    if "vertex" not in names:
        raise MiloError(f"{path} has no vertices", hint=_HINT, path=path)
    v = ply["vertex"].data
    verts = np.stack([np.asarray(v[c], dtype=np.float64) for c in ("x", "y", "z")], axis=1)
    polys: list = []
    if "face" in names:
        props = [p.name for p in ply["face"].properties]
        key = "vertex_indices" if "vertex_indices" in props else "vertex_index"
        data = ply["face"].data[key]
        if data.dtype != object:
            return verts, np.array(data, dtype=np.int64).reshape(-1, 3)
        polys = [np.asarray(p, dtype=np.int64) for p in data]
    return verts, polys


def _read_obj(path: Path) -> tuple[np.ndarray, list]:
    verts, polys = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                verts.append([float(x) for x in parts[1:4]])
            elif parts[0] == "f":
                idx = [int(p.split("/")[0]) for p in parts[1:]]
                # 1-based; negative indices count back from the vertices read so far
                polys.append(np.array([i - 1 if i > 0 else len(verts) + i for i in idx], dtype=np.int64))
    return np.asarray(verts, dtype=np.float64).reshape(-1, 3), polys


def _triangulate(polys: list | np.ndarray) -> np.ndarray:
    if isinstance(polys, np.ndarray):
        return polys
    tris = [np.stack([np.full(len(p) - 2, p[0]), p[1:-1], p[2:]], axis=1) for p in polys if len(p) >= 3]
    return np.concatenate(tris).astype(np.int64) if tris else np.zeros((0, 3), dtype=np.int64)
