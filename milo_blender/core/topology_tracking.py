"""Which splats still have their triangle after the bound mesh was edited (numpy only).

A binding refers to the mesh's vertices by index, and Blender renumbers vertices when some are deleted. So at
bind time every vertex gets an integer attribute (VERTEX_ID_ATTRIBUTE) that Blender carries through edits,
modifiers that keep vertices, and edit mode; the binding keeps the ids its vertices had (`rest_ids`). After an
edit, the ids say which current vertex is which bound one:
  - vertices whose id is gone were deleted: splats on triangles using them lost their face;
  - vertices with an id the binding never saw are new: they carry no splats;
  - two vertices with the same bound id (extrude, subdivide copy the id) make the mapping ambiguous: rebind.
A bound triangle survives while its three vertices still lie in one face (`check_topology`), so deleting faces
without their vertices also loses their splats, and re-triangulating a quad loses none.

Only called when the vertex or face count differs from bind time (`topology_matches`): the per-frame path
never reads the ids.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .binding import Binding, check_topology

VERTEX_ID_ATTRIBUTE = "milo_vertex_id"


def ids_to_write(existing: np.ndarray | None, n_vertices: int) -> np.ndarray | None:
    """Vertex ids to store on a mesh before binding it, or None when its ids are usable as they are (unique,
    non-negative). Usable ids are kept (another binding may rely on them); duplicates (the copies an extrude or
    a subdivision made) and negative ids get fresh ids, keeping the first vertex holding each id."""
    if existing is None or len(existing) != n_vertices:
        return np.arange(n_vertices, dtype=np.int32)
    ids = np.asarray(existing, dtype=np.int64)
    if _unique_non_negative(ids):
        return None
    first = np.zeros(len(ids), dtype=bool)
    first[np.unique(ids, return_index=True)[1]] = True
    bad = ~first | (ids < 0)
    ids = ids.copy()
    ids[bad] = max(int(ids.max()), -1) + 1 + np.arange(int(bad.sum()))
    return ids.astype(np.int32)


def rest_ids(evaluated_ids: np.ndarray | None, n_vertices: int) -> np.ndarray:
    """The ids of the bound (evaluated) vertices, or an empty array when they cannot track the vertices: a
    modifier that creates vertices (subdivision) interpolates the ids into duplicates."""
    if evaluated_ids is None or len(evaluated_ids) != n_vertices or not _unique_non_negative(evaluated_ids):
        return np.zeros(0, dtype=np.int32)
    return np.asarray(evaluated_ids, dtype=np.int32)


def _unique_non_negative(ids: np.ndarray) -> bool:
    ids = np.asarray(ids)
    return bool(ids.size == 0 or (ids.min() >= 0 and len(np.unique(ids)) == len(ids)))


@dataclass(frozen=True, eq=False)
class TopologyState:
    """vertex_index (V_now,): the bound vertex of each current vertex (-1: new), None for the unchanged mesh;
    lost (N,) bool: splats without their face; rebind_needed: the binding cannot be evaluated; message: for the
    user ('' when nothing is lost)."""
    vertex_index: np.ndarray | None
    lost: np.ndarray
    rebind_needed: bool
    message: str

    @property
    def n_lost(self) -> int:
        return int(self.lost.sum())


def unchanged(binding: Binding) -> TopologyState:
    return TopologyState(vertex_index=None, lost=np.zeros(binding.n_splats, dtype=bool), rebind_needed=False,
                         message="")


def _broken(binding: Binding, message: str) -> TopologyState:
    return TopologyState(vertex_index=None, lost=np.ones(binding.n_splats, dtype=bool), rebind_needed=True,
                         message=message)


def match_vertices(bound_ids: np.ndarray, current_ids: np.ndarray) -> np.ndarray | None:
    """Bound vertex index of each current vertex (-1 for ids the binding never saw), or None when two current
    vertices claim the same bound vertex."""
    bound_ids = np.asarray(bound_ids, dtype=np.int64)
    current = np.asarray(current_ids, dtype=np.int64)
    order = np.argsort(bound_ids, kind="stable")
    pos = np.minimum(np.searchsorted(bound_ids[order], current), max(len(order) - 1, 0))
    index = np.full(len(current), -1, dtype=np.int64)
    if len(order):
        found = bound_ids[order][pos] == current
        index[found] = order[pos[found]]
    claimed = index[index >= 0]
    if len(np.unique(claimed)) != len(claimed):
        return None
    return index


def track_topology(binding: Binding, bound_ids: np.ndarray, n_vertices: int, face_corners: np.ndarray,
                   face_sizes: np.ndarray, current_ids: np.ndarray | None = None) -> TopologyState:
    """The state of a binding on a mesh whose vertex or face count changed since bind time. face_corners: the
    faces' vertex indices, concatenated (Blender's loops), face_sizes: corners per face (polygons' loop_total);
    current_ids: the VERTEX_ID_ATTRIBUTE values of the current vertices (None when the mesh lost them)."""
    n_rest = len(binding.rest_vertices)
    if current_ids is not None and len(current_ids) != n_vertices:
        raise ValueError(f"{len(current_ids)} vertex ids for {n_vertices} vertices")
    if len(bound_ids) == n_rest and current_ids is not None:
        index = match_vertices(bound_ids, current_ids)
        if index is None:
            return _broken(binding, "vertices were duplicated (extrude, subdivide) since binding: rebind the splats")
    elif n_vertices == n_rest:
        index = np.arange(n_vertices)      # faces changed, vertices did not: their indices still hold
    else:
        return _broken(binding, f"the mesh now has {n_vertices} vertices instead of {n_rest} and cannot be "
                                f"matched to the bound ones: rebind the splats")
    # Faces in bound-vertex indices; new vertices become one extra vertex that no bound triangle uses.
    corners = np.asarray(face_corners, dtype=np.int64)
    mapped = np.where(index[corners] >= 0, index[corners], n_rest) if corners.size else corners
    extended = replace(binding, rest_vertices=np.concatenate([binding.rest_vertices,
                                                              np.zeros((1, 3), np.float32)]))
    report = check_topology(extended, n_rest + 1, mapped, face_sizes)
    lost = report.lost
    message = (f"{int(lost.sum())} of {binding.n_splats} splats lost their face: remove them or rebind"
               if lost.any() else "")
    return TopologyState(vertex_index=index, lost=lost, rebind_needed=False, message=message)


def binding_vertices(binding: Binding, positions: np.ndarray, vertex_index: np.ndarray | None) -> np.ndarray:
    """The bound vertices (V_rest, 3) float32 from the current ones: deleted vertices keep their rest position
    (only lost splats use them)."""
    positions = np.asarray(positions, dtype=np.float32)
    if vertex_index is None:
        return positions
    full = binding.rest_vertices.copy()
    kept = vertex_index >= 0
    full[vertex_index[kept]] = positions[kept]
    return full
