"""Binding 3D Gaussians to a triangle mesh so that they follow its deformation (numpy only, no scipy/bpy).

`bind` attaches every Gaussian to its nearest triangle (exact point-triangle distance):
  - barycentric coordinates b of its centre's projection onto the triangle's plane and the signed offset d
    along the unit normal n, so that mu = b0 v0 + b1 v1 + b2 v2 + d n holds exactly (b may lie outside
    [0, 1] when the nearest point is on an edge or a corner);
  - its rotation relative to the triangle's frame F = [t1, t2, n] (t1 along the first edge).
`deform` rebuilds the Gaussians from deformed vertices: mu' = sum b_i v_i' + d n', R' = G R with G the rotation
part (polar decomposition) of the triangle's deformation, and optionally scales stretched with the triangle.

Why the polar rotation and not F' F^-1: F follows the first edge, so a shear would turn the splats by an amount
that depends on vertex order. G = F' Rz(theta) F^T, where theta is the rotation angle of the in-plane 2x2 map
M = P' P^-1 (P, P' the triangle's edges in its own frame), is the rotation nearest to the triangle's affine
map (normal mapped to normal); it is independent of vertex order and equals F' F^T for rigid motion.

Stretch (optional): each Gaussian axis a (a unit vector in the rest face frame) is scaled by |A a|, where A
stretches the tangent plane like the triangle (A = M on the plane, 1 along the normal, matching the unscaled
normal offset d), clamped to [STRETCH_MIN, STRETCH_MAX]. For a rigid or identity deformation it is exactly 1.

Nearest-triangle search (no scipy in Blender): a bounding-volume hierarchy over the triangles. Their centroids
are ordered by a k-d tree (median splits along the longest extent), so that runs of LEAF_SIZE triangles form
compact leaves, grouped FANOUT at a time into nodes with bounding boxes. Each point first measures the leaf of
its k-d cell (usually already the answer), then all points descend level by level together: a node is skipped
only when its box, which contains all its triangles, is farther than a triangle already measured, so the result
is exact (to float64 rounding). Failure modes are cost, never correctness: a point nearly equidistant to many
triangles (the centre of a sphere, a point far outside a smooth convex mesh) measures them all; a floater at the
centre of a 100k-triangle sphere costs ~25 ms. Zero-area triangles are never chosen (they have no normal).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

STRETCH_MIN = 0.1
STRETCH_MAX = 10.0
# A triangle whose doubled area is below this fraction of its squared edge lengths has no usable normal.
DEGENERATE_SINE = 1e-6
LEAF_SIZE = 8
FANOUT = 8
# Candidate pairs evaluated at once: small enough for the temporaries to stay in cache (4x faster than 256k).
_PAIR_BUDGET = 1 << 14


# ----------------------------------------------------------------------------------------------- quaternions
def quat_multiply(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Hamilton product of wxyz quaternions whose components lie along `axis` ((..., 4) by default; axis=0
    takes (4, N) component rows, which numpy processes several times faster than strided columns)."""
    aw, ax, ay, az = np.moveaxis(a, axis, 0)
    bw, bx, by, bz = np.moveaxis(b, axis, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=axis)


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    return q * np.array([1, -1, -1, -1], dtype=q.dtype)


def quat_to_matrix(q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unit wxyz quaternions with components along `axis` -> rotation matrices: (..., 4) -> (..., 3, 3), or with
    axis=0 (4, N) -> (3, 3, N)."""
    w, x, y, z = np.moveaxis(q, axis, 0)
    entries = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
               2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
               2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    if axis == 0:
        return np.stack(entries).reshape((3, 3) + w.shape)
    return np.stack(entries, axis=-1).reshape(w.shape + (3, 3))


def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit wxyz quaternions (..., 4), stable for every rotation angle."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four candidates proportional to q, each exact but well conditioned only when its pivot (4w^2, 4x^2, ...)
    # is the largest: pick that one per matrix (Shepperd's method).
    pivots = [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22]
    a, b, c = m21 - m12, m02 - m20, m10 - m01
    d, e, f = m10 + m01, m02 + m20, m21 + m12
    pick = np.argmax(np.stack(pivots), axis=0)
    w = np.choose(pick, [pivots[0], a, b, c])
    x = np.choose(pick, [a, pivots[1], d, e])
    y = np.choose(pick, [b, d, pivots[2], f])
    z = np.choose(pick, [c, e, f, pivots[3]])
    return np.stack([w, x, y, z], axis=-1) / np.sqrt(w * w + x * x + y * y + z * z)[..., None]


# ------------------------------------------------------------------------------------------ triangle frames
@dataclass(frozen=True)
class _Frames:
    """Per-triangle orthonormal frame [t1, t2, n] and the edges in that frame: e1 = (p00, 0), e2 = (p01, p11)."""
    t1: np.ndarray
    t2: np.ndarray
    normal: np.ndarray
    p00: np.ndarray
    p01: np.ndarray
    p11: np.ndarray
    degenerate: np.ndarray


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
                     a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], axis=-1)


def _triangle_frames(e1: np.ndarray, e2: np.ndarray) -> _Frames:
    """Frames of triangles with edges e1 = v1 - v0, e2 = v2 - v0 (F, 3); degenerate ones get finite garbage."""
    cross = _cross(e1, e2)
    area2 = np.sqrt(_dot(cross, cross))
    len1 = np.sqrt(_dot(e1, e1))
    degenerate = area2 <= DEGENERATE_SINE * (len1 * len1 + _dot(e2, e2))
    one = np.ones((), dtype=e1.dtype)
    safe_area2 = np.where(degenerate, one, area2)
    safe_len1 = np.where(len1 > 0, len1, one)
    normal = cross / safe_area2[:, None]
    t1 = e1 / safe_len1[:, None]
    t2 = _cross(normal, t1)
    return _Frames(t1=t1, t2=t2, normal=normal, p00=len1, p01=_dot(e2, t1), p11=area2 / safe_len1,
                   degenerate=degenerate)


# ------------------------------------------------------------------------------------------ nearest search
def _kd_order(centroids: np.ndarray, leaf_size: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Order of the points such that every aligned block of leaf_size * 2^k consecutive points is one node of a
    k-d tree (each node split along its longest extent; its first half, a power of two of leaves, goes left),
    and the split planes (axis, value) of every node, from the root level down, for locating new points."""
    n = len(centroids)
    order = np.arange(n)
    splits = []
    for k in range(int(np.ceil(np.log2(max(1, -(-n // leaf_size))))), 0, -1):
        size = leaf_size << k
        c = centroids[order]
        starts = np.arange(0, n, size)
        extent = np.maximum.reduceat(c, starts, axis=0) - np.minimum.reduceat(c, starts, axis=0)
        axis = extent.argmax(1)
        node = np.arange(n) // size
        along = c[np.arange(n), axis[node]]
        sorted_index = np.lexsort((along, node))
        order = order[sorted_index]
        along = along[sorted_index]
        # Split value halfway between the two halves; a node without a right half sends everything left.
        half = starts + size // 2
        has_right = half < n
        value = np.full(len(starts), np.inf)
        value[has_right] = 0.5 * (along[half[has_right] - 1] + along[half[has_right]])
        splits.append((axis, value))
    return order, splits


# The search works on columns (one contiguous array per coordinate): numpy is several times faster on those
# than on the strided fields of (M, k) rows.
def _box_sqdist(p: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Squared distances from points (3, M) to axis-aligned boxes (6, M) = [lo; hi] (0 inside)."""
    total = np.zeros(p.shape[1])
    for axis in range(3):
        gap = np.maximum(np.maximum(boxes[axis] - p[axis], p[axis] - boxes[axis + 3]), 0.0)
        total += gap * gap
    return total


def _triangle_sqdist(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Exact squared distances from points (3, M) to triangles given as columns (17, M) of `_TriangleSearch`."""
    wx, wy, wz = p[0] - t[0], p[1] - t[1], p[2] - t[2]            # w = p - v0
    ww = wx * wx + wy * wy + wz * wz
    we1 = wx * t[3] + wy * t[4] + wz * t[5]
    we2 = wx * t[6] + wy * t[7] + wz * t[8]
    wn = wx * t[9] + wy * t[10] + wz * t[11]
    a, b, c, det, e3e3 = t[12], t[13], t[14], t[15], t[16]        # e1.e1, e1.e2, e2.e2, ac - b^2, |e2 - e1|^2
    # Projection inside the triangle: barycentrics (times det) all non-negative -> distance to the plane.
    u = c * we1 - b * we2
    v = a * we2 - b * we1
    outside = ((u < 0) | (v < 0) | (u + v > det)).astype(p.dtype)
    # Otherwise the nearest point lies on an edge: distance to each segment from scalar products only.
    s = np.clip(we1 / a, 0, 1)
    edge = ww - 2 * s * we1 + s * s * a
    s = np.clip(we2 / c, 0, 1)
    np.minimum(edge, ww - 2 * s * we2 + s * s * c, out=edge)
    w3e3 = we2 - we1 - b + a          # (w - e1) . (e2 - e1)
    s = np.clip(w3e3 / e3e3, 0, 1)
    np.minimum(edge, ww - 2 * we1 + a - 2 * s * w3e3 + s * s * e3e3, out=edge)
    plane = wn * wn
    # Arithmetic select: np.where is slow on unpredictable masks. edge >= plane always (up to rounding).
    return plane + np.maximum(edge - plane, 0.0) * outside


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _first_of_runs(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def _run_argmin(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the smallest value within each run of equal (sorted) keys."""
    starts = _first_of_runs(keys)
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(keys)]))
    hits = np.flatnonzero(values == np.minimum.reduceat(values, starts)[run])
    return hits[_first_of_runs(run[hits])]


class _TriangleSearch:
    """Bounding-volume hierarchy over the non-degenerate triangles (see the module docstring)."""

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        v = vertices[triangles]                                    # (F, 3, 3) float64
        e1, e2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
        frames = _triangle_frames(e1, e2)
        ids = np.flatnonzero(~frames.degenerate)
        if ids.size == 0:
            raise ValueError("the mesh has no triangle with a non-zero area: nothing to bind the splats to")
        self.lo, self.hi = vertices.min(0), vertices.max(0)
        order, self.splits = _kd_order(v[ids].mean(1), LEAF_SIZE)
        self.face_ids = ids[order]
        s = self.face_ids
        a, b, c = _dot(e1[s], e1[s]), _dot(e1[s], e2[s]), _dot(e2[s], e2[s])
        e3 = e2[s] - e1[s]
        self.columns = np.ascontiguousarray(np.concatenate(
            [v[s, 0], e1[s], e2[s], frames.normal[s], np.stack([a, b, c, a * c - b * b, _dot(e3, e3)], axis=-1)],
            axis=1).T)
        tri_boxes = np.concatenate([v[s].min(1), v[s].max(1)], axis=1)
        self.triangle_boxes = np.ascontiguousarray(tri_boxes.T)
        # levels[0]: leaves (LEAF_SIZE consecutive triangles), levels[k]: FANOUT consecutive nodes of level k-1.
        levels = [self._merge(tri_boxes, LEAF_SIZE)]
        while len(levels[-1]) > FANOUT:
            levels.append(self._merge(levels[-1], FANOUT))
        self.levels = [np.ascontiguousarray(boxes.T) for boxes in levels]  # (6, n) each
        diagonal2 = float(np.sum((self.hi - self.lo) ** 2))
        # Rounding slack for the pruning test, far below any distance that matters.
        self.slack = 1e-12 * max(diagonal2, 1e-30)

    @staticmethod
    def _merge(boxes: np.ndarray, group: int) -> np.ndarray:
        starts = np.arange(0, len(boxes), group)
        return np.concatenate([np.minimum.reduceat(boxes[:, :3], starts, axis=0),
                               np.maximum.reduceat(boxes[:, 3:], starts, axis=0)], axis=1)

    def nearest(self, points: np.ndarray, chunk: int = _PAIR_BUDGET // LEAF_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Nearest triangle index and squared distance for every point (N, 3) float64."""
        face = np.empty(len(points), dtype=np.int64)
        sqdist = np.empty(len(points), dtype=np.float64)
        top = len(self.levels) - 1
        n_top = self.levels[top].shape[1]
        cells = self._locate(np.ascontiguousarray(points.T))
        # Points taken in the order of their cells: neighbours in a chunk read the same triangles (cache hits).
        by_cell = np.argsort(cells, kind="stable")
        for part in _chunks(len(points), chunk):
            index = by_cell[part]
            p = np.ascontiguousarray(points[index].T)
            n = p.shape[1]
            best_pos = np.zeros(n, dtype=np.int64)
            best_d2 = np.full(n, np.inf)
            self._visit_leaves(p, best_pos, best_d2, np.arange(n), cells[index])
            self._descend(p, best_pos, best_d2, top, np.repeat(np.arange(n), n_top), np.tile(np.arange(n_top), n))
            face[index] = self.face_ids[best_pos]
            sqdist[index] = best_d2
        return face, sqdist

    def _locate(self, p: np.ndarray) -> np.ndarray:
        """The leaf whose k-d cell holds each point: its triangles give a first bound, usually the exact
        answer, so that the exact descent prunes almost everything else."""
        node = np.zeros(p.shape[1], dtype=np.int64)
        for axis, value in self.splits:
            node = 2 * node + (p[axis[node], np.arange(len(node))] > value[node])
        return node

    def _descend(self, p, best_pos, best_d2, level, q, node):
        """Prune (point q, node) pairs by box distance, then recurse into children (q stays sorted)."""
        lower = _box_sqdist(p[:, q], self.levels[level][:, node])
        keep = lower <= best_d2[q] + self.slack
        q, node, lower = q[keep], node[keep], lower[keep]
        if level == 0:
            # Nearest box first: it usually holds the answer, and the tighter bound then prunes most others.
            first = _run_argmin(q, lower) if q.size else q
            self._visit_leaves(p, best_pos, best_d2, q[first], node[first])
            rest = np.ones(len(q), dtype=bool)
            rest[first] = False
            rest &= lower <= best_d2[q] + self.slack
            q, node = q[rest], node[rest]
            for part in _chunks(len(q), _PAIR_BUDGET // LEAF_SIZE):
                self._visit_leaves(p, best_pos, best_d2, q[part], node[part])
            return
        n_children = self.levels[level - 1].shape[1]
        child = np.minimum(node[:, None] * FANOUT + np.arange(FANOUT), n_children - 1).ravel()
        q = np.repeat(q, FANOUT)
        for part in _chunks(len(q), _PAIR_BUDGET):
            self._descend(p, best_pos, best_d2, level - 1, q[part], child[part])

    def _visit_leaves(self, p, best_pos, best_d2, q, leaf):
        """Measure the triangles of each (point q, leaf) pair and keep the nearest per point (q sorted)."""
        # A short last leaf repeats its last triangle: harmless for a minimum.
        pos = np.minimum(leaf[:, None] * LEAF_SIZE + np.arange(LEAF_SIZE), self.columns.shape[1] - 1).ravel()
        q = np.repeat(q, LEAF_SIZE)
        # Leaf boxes overlap; each triangle's own box prunes most candidates at a quarter of the exact test's cost.
        near = _box_sqdist(p[:, q], self.triangle_boxes[:, pos]) <= best_d2[q] + self.slack
        q, pos = q[near], pos[near]
        if q.size == 0:
            return
        d2 = _triangle_sqdist(p[:, q], self.columns[:, pos])
        first = _run_argmin(q, d2)
        owner = q[first]
        better = d2[first] < best_d2[owner]
        best_d2[owner[better]] = d2[first][better]
        best_pos[owner[better]] = pos[first][better]


def nearest_triangles(vertices: np.ndarray, triangles: np.ndarray, points: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest non-degenerate triangle of each point (N,) and the exact distance to it (N,)."""
    v = np.asarray(vertices, dtype=np.float64)
    face, sqdist = _TriangleSearch(v, np.asarray(triangles, dtype=np.int64)).nearest(
        np.asarray(points, dtype=np.float64))
    return face, np.sqrt(sqdist)


# --------------------------------------------------------------------------------------------------- binding
# Storable arrays: name -> (domain, components, dtype). Domains: one item per splat, per rest vertex, per bound
# triangle, or a single value. Flat arrays of these dtypes fit Blender attributes (FLOAT, INT) and ID properties.
ARRAY_LAYOUT = {
    "face": ("splat", 1, np.int32),
    "bary": ("splat", 3, np.float32),
    "offset": ("splat", 1, np.float32),
    "local_quat": ("splat", 4, np.float32),
    "log_scales": ("splat", 3, np.float32),
    "rest_vertices": ("vertex", 3, np.float32),
    "triangles": ("triangle", 3, np.int32),
    "n_source_faces": ("global", 1, np.int32),
}


@dataclass(frozen=True, eq=False)
class Binding:
    """Gaussians attached to the triangles of a rest mesh. Treat the arrays as read-only (derived data is cached).

    face (N,) int32 index into `triangles`; bary (N, 3) float32 (b0 + b1 + b2 = 1); offset (N,) float32 signed
    distance along the unit normal; local_quat (N, 4) float32 wxyz rotation in the triangle's frame; log_scales
    (N, 3) float32 at rest; rest_vertices (V, 3) float32; triangles (F, 3) int32 (the triangulation cached at bind
    time); n_source_faces: face count of the mesh the triangles came from (for cheap topology checks).
    """
    face: np.ndarray
    bary: np.ndarray
    offset: np.ndarray
    local_quat: np.ndarray
    log_scales: np.ndarray
    rest_vertices: np.ndarray
    triangles: np.ndarray
    n_source_faces: int
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def n_splats(self) -> int:
        return len(self.face)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat float32/int32 arrays (see ARRAY_LAYOUT) to store with the .blend file."""
        out = {}
        for name, (_, _, dtype) in ARRAY_LAYOUT.items():
            value = np.asarray(getattr(self, name), dtype=dtype)
            out[name] = np.ascontiguousarray(value).ravel()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Binding":
        """Rebuild a binding from `to_arrays` output; ValueError names what is missing or inconsistent."""
        missing = [name for name in ARRAY_LAYOUT if name not in arrays]
        if missing:
            raise ValueError(f"stored binding lacks {', '.join(missing)}: bind the splats again")
        sizes = {"global": 1}
        values = {}
        for name, (domain, width, dtype) in ARRAY_LAYOUT.items():
            flat = np.asarray(arrays[name]).ravel()
            if flat.size % width or (domain in sizes and flat.size // width != sizes[domain]):
                raise ValueError(f"stored binding array '{name}' has {flat.size} values, inconsistent with the "
                                 f"other arrays: bind the splats again")
            sizes.setdefault(domain, flat.size // width)
            values[name] = flat.astype(dtype).reshape(-1, width) if width > 1 else flat.astype(dtype)
        binding = cls(**{**values, "n_source_faces": int(values["n_source_faces"][0])})
        _check_indices(binding)
        return binding


def _check_indices(binding: Binding) -> None:
    if binding.face.size and (binding.face.min() < 0 or binding.face.max() >= len(binding.triangles)):
        raise ValueError("binding refers to triangles that do not exist: bind the splats again")
    if binding.triangles.size and (binding.triangles.min() < 0
                                   or binding.triangles.max() >= len(binding.rest_vertices)):
        raise ValueError("binding triangles refer to vertices that do not exist: bind the splats again")


def _as_points(name: str, array, width: int) -> np.ndarray:
    a = np.asarray(array, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def bind(vertices: np.ndarray, triangles: np.ndarray, means: np.ndarray, quats: np.ndarray,
         log_scales: np.ndarray, n_source_faces: int | None = None) -> Binding:
    """Attach Gaussians (means (N,3), wxyz quats (N,4), not necessarily unit, log scales (N,3)) to the nearest
    triangles of a mesh (vertices (V,3), triangles (F,3)). `n_source_faces` is the mesh's face (polygon) count when
    the triangles come from triangulating it; it defaults to F."""
    # Everything is derived from the float32 vertices that the binding stores, so that deforming with the
    # unchanged mesh reproduces the Gaussians to float32 precision.
    rest = _as_points("vertices", vertices, 3).astype(np.float32)
    tri = np.asarray(triangles)
    if tri.ndim != 2 or tri.shape[1] != 3 or not np.issubdtype(tri.dtype, np.integer):
        raise ValueError(f"triangles must be an integer array of shape (F, 3), got {tri.shape} {tri.dtype}")
    if tri.size and (tri.min() < 0 or tri.max() >= len(rest)):
        raise ValueError(f"triangles refer to vertex indices outside 0..{len(rest) - 1}")
    mu = _as_points("means", means, 3)
    q = _as_points("quats", quats, 4)
    scales = _as_points("log_scales", log_scales, 3)
    if not (len(mu) == len(q) == len(scales)):
        raise ValueError(f"means, quats and log_scales have different lengths: {len(mu)}, {len(q)}, {len(scales)}")
    q_norm = np.linalg.norm(q, axis=1)
    if (q_norm == 0).any():
        raise ValueError(f"{int((q_norm == 0).sum())} quaternions are zero: they encode no rotation")
    v = rest.astype(np.float64)
    tri64 = tri.astype(np.int64)
    face = _TriangleSearch(v, tri64).nearest(mu)[0] if len(mu) else np.zeros(0, dtype=np.int64)
    corners = v[tri64[face]]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    frames = _triangle_frames(e1, e2)
    w = mu - corners[:, 0]
    # Barycentrics of the projection onto the plane (2x2 normal equations), offset along the unit normal.
    a, b, c = _dot(e1, e1), _dot(e1, e2), _dot(e2, e2)
    r1, r2 = _dot(w, e1), _dot(w, e2)
    det = a * c - b * b
    b1 = (c * r1 - b * r2) / det
    b2 = (a * r2 - b * r1) / det
    frame = np.stack([frames.t1, frames.t2, frames.normal], axis=-1)
    local_quat = quat_multiply(quat_conjugate(quat_from_matrix(frame)), q / q_norm[:, None])
    return Binding(face=face.astype(np.int32), bary=np.stack([1 - b1 - b2, b1, b2], axis=-1).astype(np.float32),
                   offset=_dot(w, frames.normal).astype(np.float32), local_quat=local_quat.astype(np.float32),
                   log_scales=scales.astype(np.float32), rest_vertices=rest, triangles=tri.astype(np.int32),
                   n_source_faces=len(tri) if n_source_faces is None else int(n_source_faces))


# ---------------------------------------------------------------------------------------------------- deform
def _cached(binding: Binding, key: str, compute):
    if key not in binding._cache:
        binding._cache[key] = compute(binding)
    return binding._cache[key]


def _rest_faces(binding: Binding) -> dict[str, np.ndarray]:
    """Rest frames and inverse edge matrices of the bound triangles (float32)."""
    v = binding.rest_vertices.astype(np.float64)
    tri = binding.triangles
    e1, e2 = v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]]
    f = _triangle_frames(e1, e2)
    # Degenerate rest triangles carry no splats (bind never picks them): identity keeps their data finite.
    identity = f.degenerate
    p00, p11 = np.where(identity, 1.0, f.p00), np.where(identity, 1.0, f.p11)
    p01 = np.where(identity, 0.0, f.p01)
    frame = np.stack([f.t1, f.t2, f.normal], axis=-1)
    frame[identity] = np.eye(3)
    # P^-1 of the upper-triangular P = [[p00, p01], [0, p11]].
    inverse = np.stack([1 / p00, -p01 / (p00 * p11), 1 / p11], axis=-1)
    return {"frame": frame.astype(np.float32), "inverse": inverse.astype(np.float32),
            "quat_inverse": np.ascontiguousarray(quat_conjugate(quat_from_matrix(frame)).T, dtype=np.float32),
            "corners": np.ascontiguousarray(tri.T)}


def _splat_terms(binding: Binding) -> dict[str, np.ndarray]:
    """Per-splat constants in the layouts deform reads fastest."""
    weights = np.concatenate([np.ones((binding.n_splats, 1)), binding.bary[:, 1:], binding.offset[:, None]], axis=1)
    return {"weights": weights.astype(np.float32),                       # mu' = [1 b1 b2 d] . [v0 e1 e2 n]
            "local_quat": np.ascontiguousarray(binding.local_quat.T)}    # (4, N)


def _stretch_terms(binding: Binding) -> np.ndarray:
    """(3 axes, 3, N): (ax^2, 2 ax ay, ay^2) of each Gaussian axis in its rest face frame."""
    axes = quat_to_matrix(binding.local_quat.astype(np.float64))         # columns are the axes
    ax, ay = axes[:, 0, :].T, axes[:, 1, :].T                           # (3 axes, N)
    return np.ascontiguousarray(np.stack([ax * ax, 2 * ax * ay, ay * ay], axis=1), dtype=np.float32)


def deform(binding: Binding, vertices_deformed: np.ndarray, scale_with_stretch: bool = False
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussians of a deformed mesh: (means (N,3), unit wxyz quats (N,4), log_scales (N,3), frame_rotation
    (N,3,3)), all float32. frame_rotation G is the rotation applied to each splat (R' = G R); rotate its SH
    coefficients with it. A triangle collapsed to zero area keeps its rest frame and normal (no NaN)."""
    verts = np.asarray(vertices_deformed, dtype=np.float32)
    if verts.shape != binding.rest_vertices.shape:
        raise ValueError(f"deformed mesh has {len(verts)} vertices, the binding expects "
                         f"{len(binding.rest_vertices)}: the topology changed, bind the splats again")
    rest = _cached(binding, "rest", _rest_faces)
    splat = _cached(binding, "splat", _splat_terms)
    # Per triangle (F << N): deformed frame, its rotation from rest, in-plane strain.
    corner = rest["corners"]
    v0 = np.take(verts, corner[0], axis=0)
    e1, e2 = np.take(verts, corner[1], axis=0) - v0, np.take(verts, corner[2], axis=0) - v0
    f = _triangle_frames(e1, e2)
    # In-plane map M = P' P^-1 (upper triangular) and its polar rotation angle theta.
    inv = rest["inverse"]
    m00 = f.p00 * inv[:, 0]
    m01 = f.p00 * inv[:, 1] + f.p01 * inv[:, 2]
    m11 = f.p11 * inv[:, 2]
    trace = m00 + m11
    h = np.sqrt(trace * trace + m01 * m01)
    bad = f.degenerate | ~(h > 0)
    h = np.where(bad, np.float32(1), h)
    cos, sin = (trace / h)[:, None], (-m01 / h)[:, None]
    frame = np.stack([cos * f.t1 + sin * f.t2, cos * f.t2 - sin * f.t1, f.normal], axis=-1)
    if bad.any():
        frame[bad] = rest["frame"][bad]
    geometry = np.concatenate([v0, e1, e2, frame[:, :, 2]], axis=1)                  # (F, 12)
    face_quat = quat_from_matrix(frame).T                                            # (4, F)
    # G = F~' F^T, from quaternions: cheaper than a product of 3x3 matrices per triangle.
    face_rotation = quat_to_matrix(quat_multiply(face_quat, rest["quat_inverse"], axis=0), axis=0).reshape(9, -1).T
    face_quat = np.ascontiguousarray(face_quat)
    # Per splat: contiguous gathers (np.take) and arithmetic on contiguous rows.
    face = binding.face
    means = np.einsum("nk,nkj->nj", splat["weights"], np.take(geometry, face, axis=0).reshape(-1, 4, 3))
    quats = quat_multiply(np.take(face_quat, face, axis=1), splat["local_quat"], axis=0)
    quats /= np.sqrt(np.einsum("kn,kn->n", quats, quats))
    frame_rotation = np.take(face_rotation, face, axis=0).reshape(-1, 3, 3)
    if scale_with_stretch:
        # M^T M - I as (c00 - 1, c01, c11 - 1): the stretch of a unit axis a is sqrt(1 + a^T (M^T M - I) a).
        strain = np.stack([m00 * m00 - 1, m00 * m01, m01 * m01 + m11 * m11 - 1])
        strain[:, bad] = 0
        terms = _cached(binding, "stretch", _stretch_terms)
        stretch2 = 1 + np.einsum("kcn,cn->kn", terms, np.take(strain, face, axis=1))
        log_scales = binding.log_scales + 0.5 * np.log(np.clip(stretch2, STRETCH_MIN ** 2, STRETCH_MAX ** 2)).T
    else:
        log_scales = binding.log_scales.copy()
    return means, np.ascontiguousarray(quats.T), log_scales, frame_rotation


# -------------------------------------------------------------------------------------------------- topology
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
