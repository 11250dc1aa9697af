"""The bpy-free parts of "splats follow the mesh": tracking edited topology, assembling a frame's splats, world
transforms of splats, and Blender cameras as backend cameras (numpy only)."""
from pathlib import Path

import numpy as np
import pytest

from milo_backend.gaussians.splat_ply import read_splat_ply, write_splat_ply
from tools.bench_binding import cube_mesh, twist_and_bend
from milo_blender.core.binding import bind, deform
from milo_blender.core.quat import quat_to_matrix
from milo_blender.core.camera_convert import blender_camera_matrix, blender_camera_params
from milo_blender.core.camera_export import opencv_camera, world_to_cam, write_cameras_json
from milo_blender.core.sh_rotation import rotate_sh
from milo_blender.core.splat_attributes import splat_attributes
from milo_blender.core.splat_frames import (Pose, SplatColors, bound_pose, frame_file_name, rotated_f_rest,
                                            sh_rotation_since_rest, similarity_parts, splat_arrays, transform_pose)
from milo_blender.core.topology_tracking import (binding_vertices, ids_to_write, match_vertices, rest_ids,
                                                 track_topology)
from test_core_sh_rotation import eval_sh, random_rotations, unit


@pytest.fixture(scope="module")
def cube():
    """A cube of 3 x 3 quads per side (56 vertices, 108 triangles) and 600 splats bound to it."""
    vertices, triangles = cube_mesh(3)
    rng = np.random.default_rng(0)
    face = rng.integers(0, len(triangles), 600)
    r = rng.dirichlet([1, 1, 1], 600)
    means = np.einsum("nk,nkj->nj", r, vertices[triangles[face]]) + rng.normal(0, 0.02, (600, 3))
    binding = bind(vertices, triangles, means, rng.normal(size=(600, 4)), rng.normal(-3, 0.3, (600, 3)))
    return vertices, triangles, binding


def renumbered(vertices, triangles, deleted_vertices):
    """What Blender does when vertices are deleted: faces using them go, the rest are renumbered in order."""
    keep = np.setdiff1d(np.arange(len(vertices)), deleted_vertices)
    new_index = np.full(len(vertices), -1)
    new_index[keep] = np.arange(len(keep))
    faces = triangles[(new_index[triangles] >= 0).all(1)]
    return keep, new_index[faces]


# ---------------------------------------------------------------------------------------- topology tracking
def test_deleted_vertices_lose_exactly_their_splats_and_the_rest_still_deform(cube):
    vertices, triangles, binding = cube
    ids = np.arange(len(vertices)) * 3 + 7            # any unique ids work, not only 0..n-1
    deleted = np.array([5, 40, 41, 77])
    keep, faces = renumbered(vertices, triangles, deleted)
    state = track_topology(binding, ids, len(keep), faces.ravel(), np.full(len(faces), 3), current_ids=ids[keep])
    expected_lost = np.isin(binding.triangles[binding.face], deleted).any(1)
    assert expected_lost.any() and not expected_lost.all()
    np.testing.assert_array_equal(state.lost, expected_lost)
    assert not state.rebind_needed and f"{expected_lost.sum()} of 600" in state.message
    # The surviving splats deform exactly as if nothing had been deleted.
    moved = twist_and_bend(vertices).astype(np.float32)
    full = binding_vertices(binding, moved[keep], state.vertex_index)
    ok = ~state.lost
    for a, b in zip(deform(binding, full, True), deform(binding, moved, True)):
        np.testing.assert_array_equal(a[ok], b[ok])


def test_deleted_faces_keeping_their_vertices_lose_their_splats(cube):
    vertices, triangles, binding = cube
    gone = np.unique(binding.face)[:5]
    faces = np.delete(triangles, gone, axis=0)
    state = track_topology(binding, np.arange(len(vertices)), len(vertices), faces.ravel(), np.full(len(faces), 3),
                           current_ids=np.arange(len(vertices)))
    np.testing.assert_array_equal(state.lost, np.isin(binding.face, gone))
    # Without ids (the attribute was removed) the vertex count still matches: same answer.
    state = track_topology(binding, np.arange(len(vertices)), len(vertices), faces.ravel(), np.full(len(faces), 3))
    np.testing.assert_array_equal(state.lost, np.isin(binding.face, gone))


def test_new_vertices_and_faces_lose_nothing(cube):
    vertices, triangles, binding = cube
    n = len(vertices)
    # Two new vertices (ids the binding never saw) and two new faces using them and old vertices.
    new_faces = np.array([[0, n, n + 1], [1, n + 1, n]])
    faces = np.concatenate([triangles, new_faces])
    ids = np.concatenate([np.arange(n), [1000, 1001]])
    state = track_topology(binding, np.arange(n), n + 2, faces.ravel(), np.full(len(faces), 3), current_ids=ids)
    assert not state.rebind_needed and state.n_lost == 0 and state.message == ""
    assert state.vertex_index.tolist()[-2:] == [-1, -1]


def test_ambiguous_or_untrackable_changes_need_a_rebind(cube):
    vertices, triangles, binding = cube
    n = len(vertices)
    # Extrude copies a vertex's id onto the new vertex: two vertices claim one bound vertex.
    faces = np.concatenate([triangles, [[0, 1, n]]])
    state = track_topology(binding, np.arange(n), n + 1, faces.ravel(), np.full(len(faces), 3),
                           current_ids=np.concatenate([np.arange(n), [1]]))
    assert state.rebind_needed and state.lost.all() and "rebind" in state.message
    # No ids on the mesh (or none at bind time: a subdivision modifier) and another vertex count.
    keep, faces = renumbered(vertices, triangles, [3])
    for bound_ids, current in ((np.arange(n), None), (np.zeros(0, np.int32), keep)):
        state = track_topology(binding, bound_ids, len(keep), faces.ravel(), np.full(len(faces), 3), current)
        assert state.rebind_needed and f"{len(keep)} vertices instead of {n}" in state.message


def test_vertex_ids_written_and_kept():
    assert ids_to_write(None, 4).tolist() == [0, 1, 2, 3]
    assert ids_to_write(np.array([9, 3, 5]), 3) is None                # usable ids of another binding stay
    # Copies made by an extrude get fresh ids; the first holder of an id keeps it (other bindings rely on it).
    assert ids_to_write(np.array([4, 7, 4, -1, 7]), 5).tolist() == [4, 7, 8, 9, 10]
    assert ids_to_write(np.array([0, 1]), 3).tolist() == [0, 1, 2]       # count mismatch: start again
    assert rest_ids(np.array([4, 2, 9]), 3).tolist() == [4, 2, 9]
    assert rest_ids(np.array([0, 1, 1, 2]), 4).size == 0               # interpolated by a subdivision modifier
    assert rest_ids(None, 3).size == 0
    assert match_vertices(np.array([10, 20, 30]), np.array([30, 10, 99])).tolist() == [2, 0, -1]
    assert match_vertices(np.array([10, 20]), np.array([10, 10])) is None


# ------------------------------------------------------------------------------------------ frame assembly
def random_splats(rng, n, k=16):
    return {"means": rng.normal(size=(n, 3)).astype(np.float32), "sh": rng.normal(size=(n, k, 3)).astype(np.float32),
            "opacity_logits": rng.normal(size=n).astype(np.float32),
            "log_scales": rng.normal(-2, 0.3, (n, 3)).astype(np.float32),
            "quats": unit(rng.normal(size=(n, 4))).astype(np.float32)}


def colors_of(splats):
    """The colour rows a Gaussian object holds, as the importer stores them (attribute names of the PLY)."""
    _, attrs = splat_attributes(splats)
    k = splats["sh"].shape[1]
    return SplatColors(f_dc=np.stack([attrs[f"f_dc_{c}"] for c in range(3)]),
                       f_rest=np.stack([attrs[f"f_rest_{i}"] for i in range(3 * (k - 1))]) if k > 1
                       else np.zeros((0, len(splats["means"])), np.float32),
                       opacity=attrs["opacity"])


@pytest.mark.parametrize("k", [1, 4, 16])
def test_unchanged_pose_gives_back_the_imported_splats_and_round_trips_a_ply(tmp_path, k):
    splats = random_splats(np.random.default_rng(k), 50, k)
    pose = Pose(splats["means"], splats["quats"], splats["log_scales"])
    keep = np.arange(50) % 3 != 0
    out = splat_arrays(pose, colors_of(splats), keep)
    for name, value in splats.items():
        np.testing.assert_array_equal(out[name], value[keep], err_msg=name)
    path = write_splat_ply(tmp_path / "frame ü.ply", **out)
    back = read_splat_ply(path)
    for name, value in out.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_f_rest_rows_rotate_like_the_gsplat_layout():
    rng = np.random.default_rng(1)
    splats = random_splats(rng, 40)
    rotations = random_rotations(rng, 40).astype(np.float32)
    out = splat_arrays(Pose(splats["means"], splats["quats"], splats["log_scales"], rotations), colors_of(splats))
    np.testing.assert_allclose(out["sh"][:, 1:], rotate_sh(splats["sh"][:, 1:], rotations), atol=1e-5)
    np.testing.assert_array_equal(out["sh"][:, 0], splats["sh"][:, 0])
    rows = colors_of(splats).f_rest
    assert rotated_f_rest(rows, None) is not rows and np.array_equal(rotated_f_rest(rows, None), rows)


def test_colour_rotation_since_rest_is_recovered_from_the_stored_rotations(cube):
    vertices, _, binding = cube
    pose = bound_pose(binding, twist_and_bend(vertices * [1.3, 1.0, 0.8]).astype(np.float32), True)
    np.testing.assert_allclose(sh_rotation_since_rest(binding, pose.quats), pose.sh_rotation, atol=2e-5)
    # Raw (unnormalised) stored rotations say the same.
    np.testing.assert_allclose(sh_rotation_since_rest(binding, 3 * pose.quats), pose.sh_rotation, atol=2e-5)


def test_world_transform_turns_centres_rotations_scales_and_colour_together():
    rng = np.random.default_rng(2)
    splats = random_splats(rng, 200)
    rotation = random_rotations(rng, 1)[0]
    matrix = np.eye(4)
    matrix[:3, :3] = 2.5 * rotation
    matrix[:3, 3] = [1.0, -2.0, 0.5]
    turns = random_rotations(rng, 200).astype(np.float32)       # a bound pose's own per-splat rotation
    for sh_rotation in (None, turns):
        pose = Pose(splats["means"], splats["quats"], splats["log_scales"], sh_rotation)
        out = splat_arrays(transform_pose(pose, matrix), colors_of(splats))
        np.testing.assert_allclose(out["means"], 2.5 * splats["means"] @ rotation.T + matrix[:3, 3], atol=1e-5)
        np.testing.assert_allclose(out["log_scales"], splats["log_scales"] + np.log(2.5), atol=1e-6)
        np.testing.assert_allclose(quat_to_matrix(out["quats"].astype(np.float64)),
                                   rotation @ quat_to_matrix(splats["quats"].astype(np.float64)), atol=1e-5)
        # Colour seen from R d after the transform = colour seen from d before it (with the pose's own turn).
        dirs = unit(rng.normal(size=(200, 3)))
        before = splats["sh"].astype(np.float64)
        if sh_rotation is not None:
            before = np.concatenate([before[:, :1], rotate_sh(before[:, 1:], sh_rotation.astype(np.float64))], 1)
        np.testing.assert_allclose(eval_sh(3, out["sh"].astype(np.float64), dirs @ rotation.T),
                                   eval_sh(3, before, dirs), atol=1e-4)


def test_transforms_that_a_splat_cannot_follow_are_refused():
    pose = Pose(np.zeros((1, 3), np.float32), np.array([[1, 0, 0, 0]], np.float32), np.zeros((1, 3), np.float32))
    assert transform_pose(pose, np.eye(4)) is pose
    for linear, match in ((np.diag([1.0, 2.0, 1.0]), "non-uniform"), (np.diag([1.0, 1.0, -1.0]), "mirror"),
                          (np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]), "shear")):
        matrix = np.eye(4)
        matrix[:3, :3] = linear
        with pytest.raises(ValueError, match=match):
            similarity_parts(matrix)


def test_frame_file_names():
    assert [frame_file_name(f) for f in (1, 12, 250, 10000)] == ["frame_0001.ply", "frame_0012.ply",
                                                                 "frame_0250.ply", "frame_10000.ply"]


# ------------------------------------------------------------------------------------------------- cameras
@pytest.mark.parametrize("w,h,fx,fy,cx,cy", [(640, 480, 500, 500, 300, 260), (480, 640, 520, 520, 250, 300),
                                             (800, 600, 600, 660, 410, 290), (600, 800, 700, 630, 310, 390)])
def test_blender_camera_settings_give_back_the_opencv_camera(w, h, fx, fy, cx, cy):
    """Inverse of the importer's conversion, for landscape, portrait, off-centre and non-square pixels."""
    from milo_backend.data.camera import Camera, look_at
    cam = Camera("shot", w, h, fx, fy, cx, cy, world_to_cam=look_at([2.0, -3.0, 1.0], [0.1, 0.2, 0.3]))
    p = blender_camera_params(cam)
    matrix = blender_camera_matrix(cam.world_to_cam)
    for fit in (p.sensor_fit, "AUTO"):     # the importer sets the fit AUTO would choose
        back = opencv_camera("shot", matrix, p.lens, p.sensor_width, p.sensor_height, fit, p.shift_x, p.shift_y,
                             p.resolution, p.pixel_aspect)
        np.testing.assert_allclose([back.fx, back.fy, back.cx, back.cy], [fx, fy, cx, cy], rtol=1e-9)
        np.testing.assert_allclose(back.world_to_cam, cam.world_to_cam, atol=1e-12)
        assert (back.width, back.height) == (w, h)


def test_camera_scale_does_not_change_the_view(tmp_path):
    from milo_backend.data.camera import look_at
    from milo_backend.evaluate import read_cameras
    matrix = blender_camera_matrix(look_at([1.0, 2.0, 3.0], [0, 0, 0]))
    scaled = matrix @ np.diag([2.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(world_to_cam(scaled), world_to_cam(matrix), atol=1e-12)
    cam = opencv_camera("frame_0003", scaled, 50.0, 36.0, 24.0, "AUTO", 0.0, 0.0, (64, 48))
    path = write_cameras_json(tmp_path / "cams ü" / "cameras.json", [cam])
    back = read_cameras(path)[0]          # what the backend's render command reads
    assert back.name == "frame_0003" and (back.width, back.height) == (64, 48)
    np.testing.assert_allclose(back.fx, 50.0 * 64 / 36.0)
    np.testing.assert_allclose(back.world_to_cam, world_to_cam(matrix), atol=1e-12)
    with pytest.raises(ValueError, match="sensor fit"):
        opencv_camera("x", matrix, 50.0, 36.0, 24.0, "DIAGONAL", 0.0, 0.0, (64, 48))


# ---------------------------------------------------------------------------------------------- render job
def test_render_steps_are_argument_lists_one_per_frame(tmp_path):
    from milo_blender.core.render_job import frame_inputs, render_steps
    out = tmp_path / "my renders ü"
    frames = [frame_inputs(out, "frame_0001"), frame_inputs(out, "frame_0002")]
    assert frames[0].splats == out / "splats" / "frame_0001.ply"
    assert frames[0].cameras == out / "splats" / "frame_0001.json"
    steps = render_steps(Path("/envs/my env/bin/python"), frames, out, "cpu")
    assert [s.label for s in steps] == ["Rendering frame_0001", "Rendering frame_0002"]
    assert steps[1].argv == ["/envs/my env/bin/python", "-m", "milo_backend", "render", str(frames[1].splats),
                             "--cameras", str(frames[1].cameras), "--out", str(out), "--device", "cpu", "--json"]
    assert all(s.json for s in steps)
    with pytest.raises(ValueError, match="device"):
        render_steps("python", frames, out, "tpu")
    with pytest.raises(ValueError, match="no frames"):
        render_steps("python", [], out)
