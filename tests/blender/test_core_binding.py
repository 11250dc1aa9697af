"""Splats follow the mesh: nearest-triangle binding, deformation, topology checks, storage (numpy only)."""
import numpy as np
import pytest

from tools.bench_binding import bumpy, cube_mesh, twist_and_bend
from milo_blender.core.binding import STRETCH_MAX, STRETCH_MIN, Binding, bind, deform
from milo_blender.core.quat import quat_to_matrix
from milo_blender.core.topology_tracking import check_topology, drop_lost_splats, topology_matches
from milo_blender.core.triangle_search import nearest_triangles
from milo_blender.core.sh_rotation import rotate_sh


# ----------------------------------------------------------------------------------------------- helpers
def closest_points(p, a, b, c):
    """Ericson's closest point on triangles (a, b, c) (M, 3) to p (3,) - an independent reference."""
    ab, ac, ap = b - a, c - a, p - a
    dot = lambda x, y: np.einsum("ij,ij->i", x, y)
    d1, d2 = dot(ab, ap), dot(ac, ap)
    bp, cp = p - b, p - c
    d3, d4, d5, d6 = dot(ab, bp), dot(ac, bp), dot(ab, cp), dot(ac, cp)
    vc, vb, va = d1 * d4 - d3 * d2, d5 * d2 - d1 * d6, d3 * d6 - d5 * d4
    with np.errstate(divide="ignore", invalid="ignore"):
        on_ab = a + (d1 / (d1 - d3))[:, None] * ab
        on_ac = a + (d2 / (d2 - d6))[:, None] * ac
        on_bc = b + ((d4 - d3) / ((d4 - d3) + (d5 - d6)))[:, None] * (c - b)
        inside = a + (vb / (va + vb + vc))[:, None] * ab + (vc / (va + vb + vc))[:, None] * ac
    conditions = [(d1 <= 0) & (d2 <= 0), (d3 >= 0) & (d4 <= d3), (vc <= 0) & (d1 >= 0) & (d3 <= 0),
                  (d6 >= 0) & (d5 <= d6), (vb <= 0) & (d2 >= 0) & (d6 <= 0),
                  (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)]
    choices = [a, b, on_ab, c, on_ac, on_bc]
    out = inside.copy()
    for condition, choice in reversed(list(zip(conditions, choices))):
        out[condition] = choice[condition]
    return out


def brute_force_distances(vertices, triangles, points):
    """(P, F) exact distances from every point to every triangle."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return np.stack([np.linalg.norm(closest_points(p, a, b, c) - p, axis=1) for p in points])


def random_rotations(rng, n):
    q = rng.normal(size=(n, 4))
    return quat_to_matrix(q / np.linalg.norm(q, axis=1, keepdims=True))


def sign_aligned(q, reference):
    return q * np.sign(np.sum(q * reference, axis=1, keepdims=True))


def splats_near(vertices, triangles, n, rng, spread=0.05):
    face = rng.integers(0, len(triangles), n)
    r = rng.dirichlet([1, 1, 1], n)
    means = np.einsum("nk,nkj->nj", r, vertices[triangles[face]]) + rng.normal(0, spread, (n, 3))
    quats = rng.normal(size=(n, 4)) * 3           # not unit: 3DGS stores raw quaternions
    log_scales = rng.normal(-3, 0.5, (n, 3))
    return means, quats, log_scales


@pytest.fixture(scope="module")
def sphere():
    v, f = cube_mesh(6, spherical=True)
    return bumpy(v), f


@pytest.fixture(scope="module")
def bound(sphere):
    v, f = sphere
    rng = np.random.default_rng(1)
    means, quats, log_scales = splats_near(v, f, 2000, rng)
    return v, f, means, quats, log_scales, bind(v, f, means, quats, log_scales)


# ----------------------------------------------------------------------------------------- nearest triangle
def test_nearest_triangle_matches_brute_force(sphere):
    v, f = sphere
    rng = np.random.default_rng(0)
    near = splats_near(v, f, 300, rng)[0]
    far = rng.uniform(-3, 3, (60, 3))                    # outside, inside, around: the search must stay exact
    points = np.concatenate([near, far, [[0, 0, 0]]])
    face, distance = nearest_triangles(v, f, points)
    reference = brute_force_distances(v, f, points)
    np.testing.assert_allclose(distance, reference.min(1), rtol=1e-9, atol=1e-12)
    # The chosen triangle is a nearest one (ties between neighbours sharing an edge are equally right).
    np.testing.assert_allclose(reference[np.arange(len(points)), face], reference.min(1), rtol=1e-9, atol=1e-12)


def test_points_nearest_to_edges_and_corners_of_a_cube():
    v, f = cube_mesh(2)
    rng = np.random.default_rng(2)
    # Outside the cube beyond corners and edges the nearest surface point is a corner or on an edge, and the
    # distance is the distance to the box [-1, 1]^3: a reference that does not involve triangles at all.
    corner = np.sign(rng.normal(size=(40, 3))) * rng.uniform(1.05, 2.0, (40, 3))
    edge = corner.copy()
    edge[:, 0] = rng.uniform(-0.9, 0.9, 40)
    points = np.concatenate([corner, edge])
    face, distance = nearest_triangles(v, f, points)
    expected = np.linalg.norm(np.maximum(np.abs(points) - 1, 0), axis=1)
    np.testing.assert_allclose(distance, expected, rtol=1e-9)
    np.testing.assert_allclose(brute_force_distances(v, f, points)[np.arange(len(points)), face], expected,
                               rtol=1e-9)


def test_binding_reconstructs_means_from_barycentrics_and_offset(bound):
    v, f, means, _, _, binding = bound
    corners = binding.rest_vertices.astype(np.float64)[binding.triangles[binding.face]]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    rebuilt = np.einsum("nk,nkj->nj", binding.bary, corners) + binding.offset[:, None] * normal
    np.testing.assert_allclose(rebuilt, means, atol=1e-6)
    np.testing.assert_allclose(binding.bary.sum(1), 1, atol=1e-6)
    # The offset is the distance to the plane, never more than the distance to the triangle.
    assert (np.abs(binding.offset) <= nearest_triangles(v, f, means)[1] + 1e-6).all()


# ------------------------------------------------------------------------------------------------- deform
@pytest.mark.parametrize("stretch", [False, True])
def test_identity_deformation_reproduces_the_gaussians(bound, stretch):
    v, _, means, quats, log_scales, binding = bound
    out_means, out_quats, out_scales, frame_rotation = deform(binding, v.astype(np.float32), stretch)
    unit = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    np.testing.assert_allclose(out_means, means, atol=1e-6)
    np.testing.assert_allclose(sign_aligned(out_quats, unit), unit, atol=1e-6)
    np.testing.assert_allclose(out_scales, log_scales, atol=1e-6)
    np.testing.assert_allclose(frame_rotation, np.broadcast_to(np.eye(3), frame_rotation.shape), atol=1e-6)
    assert all(a.dtype == np.float32 for a in (out_means, out_quats, out_scales, frame_rotation))


@pytest.mark.parametrize("stretch", [False, True])
def test_rigid_motion_moves_the_gaussians_rigidly(bound, stretch):
    v, _, means, quats, log_scales, binding = bound
    rotation = random_rotations(np.random.default_rng(3), 1)[0]
    shift = np.array([0.5, -2.0, 1.0])
    out_means, out_quats, out_scales, frame_rotation = deform(binding, v @ rotation.T + shift, stretch)
    np.testing.assert_allclose(out_means, means @ rotation.T + shift, atol=2e-5)
    rest_matrices = quat_to_matrix(quats / np.linalg.norm(quats, axis=1, keepdims=True))
    np.testing.assert_allclose(quat_to_matrix(out_quats.astype(np.float64)), rotation @ rest_matrices, atol=2e-5)
    np.testing.assert_allclose(out_scales, log_scales, atol=2e-5)
    # Every splat turns exactly with the mesh, so its view-dependent colour turns with the same rotation.
    np.testing.assert_allclose(frame_rotation, np.broadcast_to(rotation, frame_rotation.shape), atol=2e-5)
    sh = np.random.default_rng(4).normal(size=(len(means), 15, 3))
    np.testing.assert_allclose(rotate_sh(sh, frame_rotation.astype(np.float64)), rotate_sh(sh, rotation), atol=1e-4)


def test_nonrigid_deformation_keeps_barycentric_position_and_normal_offset(bound):
    _, _, _, _, _, binding = bound
    deformed = twist_and_bend(binding.rest_vertices.astype(np.float64) * [1.5, 1.0, 0.7])
    out_means, out_quats, _, frame_rotation = deform(binding, deformed)
    # Re-express each deformed mean in its deformed triangle: same barycentrics, same offset along the normal.
    corners = deformed[binding.triangles[binding.face]]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    normal = np.cross(e1, e2)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    w = out_means - corners[:, 0]
    offset = np.einsum("ij,ij->i", w, normal)
    in_plane = w - offset[:, None] * normal
    gram = np.stack([np.stack([np.einsum("ij,ij->i", e1, e1), np.einsum("ij,ij->i", e1, e2)], -1),
                     np.stack([np.einsum("ij,ij->i", e1, e2), np.einsum("ij,ij->i", e2, e2)], -1)], -2)
    rhs = np.stack([np.einsum("ij,ij->i", in_plane, e1), np.einsum("ij,ij->i", in_plane, e2)], -1)
    b12 = np.linalg.solve(gram, rhs[..., None])[..., 0]
    scale = np.abs(binding.bary[:, 1:]).max() + 1
    np.testing.assert_allclose(b12, binding.bary[:, 1:], atol=1e-4 * scale)
    np.testing.assert_allclose(offset, binding.offset, atol=1e-4 * np.abs(binding.offset).max())
    # The frame rotation carries the rest normal onto the deformed one and is a proper rotation.
    rest = binding.rest_vertices.astype(np.float64)[binding.triangles[binding.face]]
    rest_normal = np.cross(rest[:, 1] - rest[:, 0], rest[:, 2] - rest[:, 0])
    rest_normal /= np.linalg.norm(rest_normal, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", frame_rotation, rest_normal), normal, atol=1e-4)
    np.testing.assert_allclose(np.linalg.det(frame_rotation), 1, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out_quats, axis=1), 1, atol=1e-6)


def plane_grid(n=4):
    """Flat n x n quad grid in z = 0 as triangles and as quads."""
    u = np.linspace(0, 1, n + 1)
    x, y = np.meshgrid(u, u, indexing="ij")
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], -1)
    g = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    quads = np.stack([g[:-1, :-1], g[1:, :-1], g[1:, 1:], g[:-1, 1:]], -1).reshape(-1, 4)
    return vertices, quads


def test_stretch_follows_the_triangle_per_axis_and_rotation_is_the_polar_part():
    vertices, quads = plane_grid()
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    means = np.array([[0.3, 0.4, 0.01], [0.6, 0.2, -0.02]])
    c = np.cos(np.pi / 8)
    # Axes: first along x, second along y; then a splat turned 45 degrees about z.
    quats = np.array([[1, 0, 0, 0], [c, 0, 0, np.sin(np.pi / 8)]], dtype=float)
    log_scales = np.full((2, 3), -3.0)
    binding = bind(vertices, triangles, means, quats, log_scales)
    stretched = vertices * [2.0, 1.0, 1.0]
    out_means, out_quats, out_scales, frame_rotation = deform(binding, stretched, scale_with_stretch=True)
    # A symmetric stretch turns nothing; axes scale by |A a|: x -> 2, y -> 1, normal -> 1, diagonal -> sqrt(2.5).
    np.testing.assert_allclose(frame_rotation, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-6)
    np.testing.assert_allclose(sign_aligned(out_quats, quats), quats, atol=1e-6)
    expected = -3 + np.log([[2.0, 1.0, 1.0], [np.sqrt(2.5), np.sqrt(2.5), 1.0]])
    np.testing.assert_allclose(out_scales, expected, atol=1e-5)
    np.testing.assert_allclose(out_means, means * [2, 1, 1], atol=1e-6)
    assert np.array_equal(deform(binding, stretched)[2], binding.log_scales)   # stretch off: scales untouched


def test_frame_rotation_does_not_depend_on_vertex_order():
    vertices, quads = plane_grid()
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    sheared = vertices.copy()
    sheared[:, 0] += 0.8 * vertices[:, 1]
    rng = np.random.default_rng(5)
    means = np.c_[rng.uniform(0.1, 0.9, (50, 2)), rng.normal(0, 0.01, 50)]
    quats, log_scales = rng.normal(size=(50, 4)), rng.normal(-3, 0.3, (50, 3))
    rotations = []
    for roll in range(3):
        binding = bind(vertices, np.roll(triangles, roll, axis=1), means, quats, log_scales)
        rotations.append(deform(binding, sheared)[3])
    assert np.abs(rotations[0] - np.eye(3)).max() > 0.1    # a shear does turn the splats
    np.testing.assert_allclose(rotations[1], rotations[0], atol=1e-5)
    np.testing.assert_allclose(rotations[2], rotations[0], atol=1e-5)


def test_degenerate_and_extreme_triangles_give_finite_bounded_gaussians(bound):
    v, f, means, quats, log_scales, binding = bound
    deformed = v.astype(np.float32).copy()
    used = []                                   # three bound triangles sharing no vertex
    for face in np.unique(binding.face):
        if not any(np.isin(f[face], f[other]).any() for other in used):
            used.append(face)
    point, line, huge = f[used[0]], f[used[1]], f[used[2]]
    deformed[point] = deformed[point[0]]                                  # collapsed to a point
    deformed[line[2]] = 0.5 * (deformed[line[0]] + deformed[line[1]])     # collapsed to a segment
    deformed[huge] = deformed[huge].mean(0) + 1000 * (deformed[huge] - deformed[huge].mean(0))
    for stretch in (False, True):
        out_means, out_quats, out_scales, frame_rotation = deform(binding, deformed, stretch)
        for array in (out_means, out_quats, out_scales, frame_rotation):
            assert np.isfinite(array).all()
        np.testing.assert_allclose(np.linalg.norm(out_quats, axis=1), 1, atol=1e-6)
        change = out_scales - log_scales
        assert (change >= np.log(STRETCH_MIN) - 1e-5).all() and (change <= np.log(STRETCH_MAX) + 1e-5).all()
    # Collapsed triangles keep their rest frame: their splats do not turn.
    collapsed = np.isin(binding.face, used[:2])
    np.testing.assert_allclose(frame_rotation[collapsed], np.broadcast_to(np.eye(3), (collapsed.sum(), 3, 3)),
                               atol=1e-6)
    assert np.isclose(change[binding.face == used[2]].max(), np.log(STRETCH_MAX), atol=1e-5)


def test_deform_rejects_a_mesh_with_another_vertex_count(bound):
    v, _, _, _, _, binding = bound
    with pytest.raises(ValueError, match="vertices"):
        deform(binding, v[:-1])


# ----------------------------------------------------------------------------------------------- topology
def test_deleted_faces_are_detected_and_their_splats_can_be_dropped(bound):
    v, f, means, quats, log_scales, binding = bound
    assert topology_matches(binding, len(v), len(f))
    report = check_topology(binding, len(v), f)
    assert report.n_lost == 0 and not report.rebind_needed and report.message == ""
    deleted = np.unique(binding.face)[::7]
    remaining = np.delete(f, deleted, axis=0)[::-1]          # other indices and order: matched by vertices
    assert not topology_matches(binding, len(v), len(remaining))
    report = check_topology(binding, len(v), remaining)
    np.testing.assert_array_equal(report.lost, np.isin(binding.face, deleted))
    assert not report.rebind_needed and str(report.n_lost) in report.message
    kept_binding, kept = drop_lost_splats(binding, report)
    np.testing.assert_array_equal(kept, np.flatnonzero(~np.isin(binding.face, deleted)))
    assert topology_matches(kept_binding, len(v), len(remaining))
    deformed = twist_and_bend(v).astype(np.float32)
    full, part = deform(binding, deformed, True), deform(kept_binding, deformed, True)
    for a, b in zip(full, part):
        np.testing.assert_array_equal(a[kept], b)
    assert check_topology(binding, len(v), np.zeros((0, 3), dtype=int)).lost.all()


def test_vertex_count_change_needs_a_rebind(bound):
    v, f, _, _, _, binding = bound
    report = check_topology(binding, len(v) - 3, f[f.max(1) < len(v) - 3])
    assert report.rebind_needed and report.lost.all() and "bind" in report.message
    with pytest.raises(ValueError):
        drop_lost_splats(binding, report)


def test_retriangulated_quads_lose_nothing_when_checked_against_polygons():
    vertices, quads = plane_grid()
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    means = np.c_[np.random.default_rng(6).uniform(0, 1, (100, 2)), np.zeros(100)]
    binding = bind(vertices, triangles, means, np.tile([1.0, 0, 0, 0], (100, 1)), np.zeros((100, 3)),
                   n_source_faces=len(quads))
    assert topology_matches(binding, len(vertices), len(quads))
    # Blender may split a quad along the other diagonal after an edit: the quad, hence the triangle, still exists.
    report = check_topology(binding, len(vertices), quads.ravel(), np.full(len(quads), 4))
    assert report.n_lost == 0
    other_diagonal = np.concatenate([quads[:, [0, 1, 3]], quads[:, [1, 2, 3]]])
    assert check_topology(binding, len(vertices), other_diagonal).n_lost > 0
    report = check_topology(binding, len(vertices), quads[1:].ravel(), np.full(len(quads) - 1, 4))
    np.testing.assert_array_equal(report.lost, np.isin(binding.face, [0, len(quads)]))


# ------------------------------------------------------------------------------------------------ storage
def test_binding_round_trips_through_flat_arrays(bound):
    v, _, _, _, _, binding = bound
    arrays = binding.to_arrays()
    assert all(a.ndim == 1 and a.dtype in (np.float32, np.int32) for a in arrays.values())
    restored = Binding.from_arrays({name: a.copy() for name, a in arrays.items()})
    deformed = twist_and_bend(v).astype(np.float32)
    for a, b in zip(deform(binding, deformed, True), deform(restored, deformed, True)):
        np.testing.assert_array_equal(a, b)
    assert restored.n_source_faces == binding.n_source_faces
    with pytest.raises(ValueError, match="bary"):
        Binding.from_arrays({**arrays, "bary": arrays["bary"][:-3]})
    with pytest.raises(ValueError, match="lacks"):
        Binding.from_arrays({k: a for k, a in arrays.items() if k != "triangles"})
    with pytest.raises(ValueError, match="triangles"):
        Binding.from_arrays({**arrays, "face": np.full_like(arrays["face"], len(arrays["triangles"]))})


# ---------------------------------------------------------------------------------------------- bad input
def test_bind_rejects_unusable_input(sphere):
    v, f = sphere
    means, quats, scales = np.zeros((2, 3)), np.tile([1.0, 0, 0, 0], (2, 1)), np.zeros((2, 3))
    with pytest.raises(ValueError, match="zero"):
        bind(v, f, means, np.zeros((2, 4)), scales)
    with pytest.raises(ValueError, match="NaN"):
        bind(v, f, np.full((2, 3), np.nan), quats, scales)
    with pytest.raises(ValueError, match="shape"):
        bind(v, f, means[:, :2], quats, scales)
    with pytest.raises(ValueError, match="lengths"):
        bind(v, f, means[:1], quats, scales)
    with pytest.raises(ValueError, match="vertex indices"):
        bind(v, f + len(v), means, quats, scales)
    with pytest.raises(ValueError, match="area"):
        bind(np.zeros((3, 3)), np.array([[0, 1, 2]]), means, quats, scales)


def test_degenerate_rest_triangles_are_never_chosen():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.2, 0.0], [0.2, 0.2, 0.0]], dtype=float)
    triangles = np.array([[0, 1, 2], [3, 4, 3]])       # the second has zero area but lies nearer the point
    binding = bind(vertices, triangles, [[0.2, 0.2, 0.1]], [[1.0, 0, 0, 0]], [[0.0, 0, 0]])
    assert binding.face.tolist() == [0]
    assert np.isfinite(deform(binding, vertices)[0]).all()


def test_benchmark_measures_every_operation_at_a_small_size():
    from tools.bench_binding import run
    rows = run(n_splats=300, subdivisions=3, repeats=1)
    names = ["bind ", "deform, ", "deform, ", "rotate_sh ", "rotate_sh_components ", "check_topology "]
    assert len(rows) == len(names) and all(r["operation"].startswith(n) for r, n in zip(rows, names))
    assert all(r["triangles"] == 6 * 3 * 3 * 2 and r["ms"] > 0 and r["cpu ms"] >= 0 for r in rows)
