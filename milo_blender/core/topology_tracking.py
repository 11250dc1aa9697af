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

from .binding import Binding

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


@dataclass(frozen=True, eq=False)
class TopologyReport:
    """lost (N,) bool: splats whose triangle no longer lies in a face of the mesh. rebind_needed: the vertex
    ids changed, so the binding cannot be evaluated at all (bind again); otherwise lost splats can be removed
    with `drop_lost_splats`. message: for the user ('' when nothing changed)."""
    lost: np.ndarray
    rebind_needed: bool
    message: str
    n_vertices: int
    n_faces: int

    @property
    def n_lost(self) -> int:
        return int(self.lost.sum())


def topology_matches(binding: Binding, n_vertices: int, n_faces: int) -> bool:
    """Cheap per-frame check: the mesh still has the vertex and face counts it had at bind time."""
    return n_vertices == len(binding.rest_vertices) and n_faces == binding.n_source_faces


def check_topology(binding: Binding, n_vertices: int, face_vertices: np.ndarray,
                   face_sizes: np.ndarray | None = None) -> TopologyReport:
    """Which splats lost their triangle. The mesh's faces are either triangles (F, 3), or polygons as a flat
    vertex list with `face_sizes` (Blender's loops' vertex_index and polygons' loop_total): a bound triangle
    survives while its three vertices still belong to one face, so re-triangulating a quad loses nothing."""
    corners = np.asarray(face_vertices, dtype=np.int64)
    if face_sizes is None:
        if corners.ndim != 2:
            raise ValueError(f"faces must be triangles (F, 3) or a flat list with face_sizes, got {corners.shape}")
        sizes = np.full(len(corners), corners.shape[1], dtype=np.int64)
    else:
        sizes = np.asarray(face_sizes, dtype=np.int64)
    corners = corners.ravel()
    if sizes.sum() != corners.size:
        raise ValueError(f"face sizes add up to {sizes.sum()} corners, but {corners.size} vertex indices were given")
    n_rest = len(binding.rest_vertices)
    n_faces = len(sizes)
    if n_vertices != n_rest:
        return TopologyReport(lost=np.ones(binding.n_splats, dtype=bool), rebind_needed=True,
                              message=f"the mesh now has {n_vertices} vertices instead of {n_rest}: "
                                      f"bind the splats again", n_vertices=n_vertices, n_faces=n_faces)
    if corners.size and (corners.min() < 0 or corners.max() >= n_vertices):
        raise ValueError(f"face vertex indices outside 0..{n_vertices - 1}")
    if corners.size == 0:
        return TopologyReport(lost=np.ones(binding.n_splats, dtype=bool), rebind_needed=False,
                              message=f"the mesh has no faces left: all {binding.n_splats} splats lost their face",
                              n_vertices=n_vertices, n_faces=n_faces)
    face_of_corner = np.repeat(np.arange(n_faces), sizes)
    keys = np.sort(face_of_corner * n_vertices + corners)            # (face, vertex) incidences
    by_vertex = np.argsort(corners, kind="stable")
    first = np.searchsorted(corners[by_vertex], np.arange(n_vertices + 1))
    used = np.flatnonzero(np.bincount(binding.face, minlength=len(binding.triangles)))
    tri = binding.triangles[used].astype(np.int64)
    # Candidate faces of a bound triangle: the faces around its first vertex; it survives if one of them also
    # holds the other two vertices.
    counts = first[tri[:, 0] + 1] - first[tri[:, 0]]
    owner = np.repeat(np.arange(len(used)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    candidate = face_of_corner[by_vertex[np.repeat(first[tri[:, 0]], counts) + offsets]]

    def incident(vertex):
        k = candidate * n_vertices + vertex[owner]
        i = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
        return keys[i] == k

    survives = np.zeros(len(used), dtype=bool)
    survives[owner[incident(tri[:, 1]) & incident(tri[:, 2])]] = True
    alive = np.zeros(len(binding.triangles), dtype=bool)
    alive[used[survives]] = True
    lost = ~alive[binding.face]
    n_lost = int(lost.sum())
    message = f"{n_lost} splats lost their face: remove them or bind again" if n_lost else ""
    return TopologyReport(lost=lost, rebind_needed=False, message=message, n_vertices=n_vertices, n_faces=n_faces)


def drop_lost_splats(binding: Binding, report: TopologyReport) -> tuple[Binding, np.ndarray]:
    """The binding without the splats `report` marks lost, valid for the current face count, and the indices
    (into the old splats) of those kept."""
    if report.rebind_needed:
        raise ValueError(report.message)
    if len(report.lost) != binding.n_splats:
        raise ValueError(f"report is for {len(report.lost)} splats, the binding has {binding.n_splats}")
    kept = np.flatnonzero(~report.lost)
    return replace(binding, face=binding.face[kept], bary=binding.bary[kept], offset=binding.offset[kept],
                   local_quat=binding.local_quat[kept], log_scales=binding.log_scales[kept],
                   n_source_faces=report.n_faces), kept
