"""Reading the reconstructed mesh (OUT/mesh.ply: vertices, faces, optional per-vertex colours).

Triangle meshes (what marching tetrahedra produces) take plyfile's fixed-length list path, which reads
millions of faces as one numpy array; other polygon meshes fall back to the generic per-face lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElementParseError, PlyParseError

from milo_backend.errors import MiloError

HINT = "choose a mesh .ply with vertices and faces (as written by MILo as mesh.ply)"


@dataclass
class MeshData:
    vertices: np.ndarray             # (N,3) float32
    face_sizes: np.ndarray           # (F,) int32: corners of each face
    corners: np.ndarray              # (sum face_sizes,) int32: vertex index of each face corner
    colors: np.ndarray | None        # (N,3) float32 in [0,1] (sRGB), or None

    @property
    def loop_starts(self) -> np.ndarray:
        return (np.cumsum(self.face_sizes) - self.face_sizes).astype(np.int32)


def _face_property(ply: PlyData) -> str | None:
    if "face" not in [e.name for e in ply.elements]:
        return None
    names = [p.name for p in ply["face"].properties]
    for name in ("vertex_indices", "vertex_index"):
        if name in names:
            return name
    return None


def read_mesh_ply(path: str | Path) -> MeshData:
    path = Path(path)
    if not path.is_file():
        raise MiloError(f"mesh file not found: {path}", hint=HINT, path=path)
    try:
        try:
            ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3, "vertex_index": 3}})
        except PlyElementParseError:
            ply = PlyData.read(str(path))  # not all faces are triangles
    except (PlyParseError, ValueError, EOFError, OSError, IndexError, KeyError) as exc:
        raise MiloError(f"{path} is not a readable PLY file ({exc})", hint=HINT, path=path) from exc
    if "vertex" not in [e.name for e in ply.elements]:
        raise MiloError(f"{path} has no vertices", hint=HINT, path=path)
    v = ply["vertex"].data
    names = v.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise MiloError(f"{path} has no x/y/z vertex positions", hint=HINT, path=path)
    vertices = np.stack([np.array(v[c], dtype=np.float32) for c in ("x", "y", "z")], axis=1)
    bad = np.flatnonzero(~np.isfinite(vertices).all(axis=1))
    if len(bad):
        raise MiloError(f"{path}: {len(bad)} of its {len(vertices)} vertices have non-finite positions (vertex "
                        f"{bad[0]}: {vertices[bad[0]].tolist()})", hint=HINT, path=path)
    prop = _face_property(ply)
    if prop is None:
        raise MiloError(f"{path} has no faces (it is a point cloud)",
                        hint="Gaussian splat .ply files are imported as splats; " + HINT, path=path)
    faces = ply["face"].data[prop]
    if faces.dtype != object and faces.ndim == 2:
        sizes = np.full(len(faces), faces.shape[1], np.int32)
        corners = faces.astype(np.int32).reshape(-1)  # a copy: the file is memory-mapped
    else:
        sizes = np.fromiter((len(f) for f in faces), dtype=np.int32, count=len(faces))
        corners = np.concatenate([np.asarray(f, dtype=np.int32) for f in faces]) if len(faces) else \
            np.zeros(0, np.int32)
    if len(corners) and (corners.min() < 0 or corners.max() >= len(vertices)):
        raise MiloError(f"{path} has faces that reference missing vertices", hint=HINT, path=path)
    if len(sizes) and sizes.min() < 3:
        raise MiloError(f"{path} has faces with fewer than 3 corners", hint=HINT, path=path)
    colors = None
    for channels in (("red", "green", "blue"), ("r", "g", "b")):
        if set(channels) <= set(names):
            cols = np.stack([np.asarray(v[c]) for c in channels], axis=1)
            colors = cols.astype(np.float32) / 255.0 if cols.dtype.kind in "ui" else cols.astype(np.float32)
            break
    return MeshData(vertices=vertices, face_sizes=sizes, corners=corners, colors=colors)
