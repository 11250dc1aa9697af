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

The nearest triangle comes from `triangle_search`; the quaternion maths from `quat`; what happens when the
mesh is edited after binding, from `topology_tracking`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .quat import quat_conjugate, quat_from_matrix, quat_multiply, quat_to_matrix
from .triangle_search import nearest_triangles, row_dot, triangle_frames

STRETCH_MIN = 0.1
STRETCH_MAX = 10.0


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
    face = nearest_triangles(v, tri64, mu)[0] if len(mu) else np.zeros(0, dtype=np.int64)
    corners = v[tri64[face]]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    frames = triangle_frames(e1, e2)
    w = mu - corners[:, 0]
    # Barycentrics of the projection onto the plane (2x2 normal equations), offset along the unit normal.
    a, b, c = row_dot(e1, e1), row_dot(e1, e2), row_dot(e2, e2)
    r1, r2 = row_dot(w, e1), row_dot(w, e2)
    det = a * c - b * b
    b1 = (c * r1 - b * r2) / det
    b2 = (a * r2 - b * r1) / det
    frame = np.stack([frames.t1, frames.t2, frames.normal], axis=-1)
    local_quat = quat_multiply(quat_conjugate(quat_from_matrix(frame)), q / q_norm[:, None])
    return Binding(face=face.astype(np.int32), bary=np.stack([1 - b1 - b2, b1, b2], axis=-1).astype(np.float32),
                   offset=row_dot(w, frames.normal).astype(np.float32), local_quat=local_quat.astype(np.float32),
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
    f = triangle_frames(e1, e2)
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
    f = triangle_frames(e1, e2)
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
