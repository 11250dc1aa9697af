"""Splats follow the mesh, inside Blender (bpy 5.0.1 from PyPI, headless, the built and installed extension):
bind, deform with an armature, a shape key, a modifier and edit mode, export PLY frames, the live display, save and
reload, topology changes, rendering through the real backend.

Every check of a deformed splat is against the deformed mesh as Blender evaluates it, recomputed here from the
stored barycentrics and offsets: the centre must stay at the same barycentric position and normal offset on its
triangle (1e-4 of the mesh size), rotations must stay unit quaternions.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy (Blender as a module) is not installed: pip install -r "
                                        "tests/blender/requirements.txt")
import bmesh  # noqa: E402

import build_addon  # noqa: E402
from milo_backend.gaussians.splat_ply import read_splat_ply, write_splat_ply  # noqa: E402
from milo_blender.core.quat import quat_to_matrix  # noqa: E402
from milo_blender.core.sh_rotation import rotate_sh  # noqa: E402
from test_core_sh_rotation import eval_sh, random_rotations, unit  # noqa: E402

EXT = "bl_ext.user_default.milo_blender"
N_SPLATS = 400


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    if EXT not in bpy.context.preferences.addons:
        zip_path = build_addon.build(tmp_path_factory.mktemp("dist"))
        assert bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                        enable_on_install=True) == {"FINISHED"}
    return sys.modules[EXT]


# ------------------------------------------------------------------------------------------------ scenes
def tall_box(name="Body", cuts=3):
    """A 1 x 1 x 2 box of quads ((cuts + 1)^2 per side), centred at the origin, as a mesh object."""
    me = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.subdivide_edges(bm, edges=bm.edges[:], cuts=cuts, use_grid_fill=True)
    for v in bm.verts:
        v.co.z *= 2.0
    bm.to_mesh(me)
    bm.free()
    obj = bpy.data.objects.new(name, me)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def triangles_of(me):
    me.calc_loop_triangles()
    tri = np.empty(len(me.loop_triangles) * 3, np.int32)
    me.loop_triangles.foreach_get("vertices", tri)
    return tri.reshape(-1, 3)


def positions_of(me):
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    return co.reshape(-1, 3).astype(np.float64)


def splats_on(obj, n, rng, folder, name="splats ü"):
    """n random degree-3 splats near the surface of a mesh object (world space), imported as a Gaussian object."""
    m = np.array(obj.matrix_world)
    v = positions_of(obj.data) @ m[:3, :3].T + m[:3, 3]
    tri = triangles_of(obj.data)
    face = rng.integers(0, len(tri), n)
    c = v[tri[face]]
    normal = unit(np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]))
    means = np.einsum("nk,nkj->nj", rng.dirichlet([1, 1, 1], n), c) + normal * rng.normal(0, 0.03, (n, 1))
    path = write_splat_ply(Path(folder) / f"{name}.ply", means, rng.normal(0, 0.3, (n, 16, 3)), rng.normal(0, 1, n),
                           rng.normal(-3.5, 0.3, (n, 3)), rng.normal(size=(n, 4)))
    assert bpy.ops.milo.import_result(filepath=str(path)) == {"FINISHED"}
    return bpy.data.objects[f"{name} Gaussians"], read_splat_ply(path)


@pytest.fixture()
def bound(ext, tmp_path):
    """A fresh scene: a tall box moved and turned, 400 splats around it, bound to it."""
    bpy.ops.wm.read_homefile(use_empty=True)
    body = tall_box()
    body.location = (0.3, -0.2, 0.1)
    body.rotation_euler = (0.0, 0.0, 0.4)
    bpy.context.view_layer.update()
    gauss, splats = splats_on(body, N_SPLATS, np.random.default_rng(0), tmp_path)
    assert bpy.ops.milo.bind(gaussians=gauss.name, mesh=body.name) == {"FINISHED"}
    return body, gauss, splats


def evaluated_world_vertices(obj):
    """The deformed mesh as Blender evaluates it (edit mode included), world space, and its vertex ids."""
    dg = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(dg)
    me = evaluated.to_mesh()
    try:
        v = positions_of(me)
        ids = None
        if "milo_vertex_id" in me.attributes:
            ids = np.empty(len(me.vertices), np.int32)
            me.attributes["milo_vertex_id"].data.foreach_get("value", ids)
    finally:
        evaluated.to_mesh_clear()
    m = np.array(evaluated.matrix_world)
    return v @ m[:3, :3].T + m[:3, 3], ids


def stored(gauss, name, width=1):
    attr = gauss.data.attributes[name]
    field = "vector" if attr.data_type == "FLOAT_VECTOR" else "value"
    buf = np.empty(len(attr.data) * width, np.int32 if attr.data_type == "INT" else
                   bool if attr.data_type == "BOOLEAN" else np.float32)
    attr.data.foreach_get(field, buf)
    return buf.reshape(-1, width) if width > 1 else buf


def expected_centres(gauss, body):
    """Every splat's centre rebuilt from its stored barycentrics and offset on the deformed triangle (world)."""
    v, ids = evaluated_world_vertices(body)
    bound_ids = np.asarray(gauss.data["milo_bound_vertex_ids"])      # the vertices' ids at bind time
    full = np.full((len(bound_ids), 3), np.nan)
    where = {int(i): k for k, i in enumerate(bound_ids)}
    present = [k for k, i in enumerate(ids) if int(i) in where]
    full[[where[int(ids[k])] for k in present]] = v[present]
    corners = full[np.asarray(gauss.data["milo_triangles"]).reshape(-1, 3)[stored(gauss, "milo_face")]]
    normal = unit(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
    centres = np.einsum("nk,nkj->nj", stored(gauss, "milo_bary", 3), corners)
    return centres + stored(gauss, "milo_offset")[:, None] * normal, np.ptp(v, axis=0).max()


def assert_on_mesh(splats, gauss, body, keep=None):
    expected, size = expected_centres(gauss, body)
    if keep is not None:
        expected = expected[keep]
    assert len(splats["means"]) == len(expected)
    assert np.abs(splats["means"] - expected).max() <= 1e-4 * size
    np.testing.assert_allclose(np.linalg.norm(splats["quats"], axis=1), 1.0, atol=1e-5)
    for name in ("means", "sh", "opacity_logits", "log_scales", "quats"):
        assert np.isfinite(splats[name]).all(), name


def export(tmp_path, name, gauss, **kwargs):
    path = tmp_path / f"{name} ü.ply"
    assert bpy.ops.milo.export_gaussians(gaussians=gauss.name, frames="CURRENT", filepath=str(path),
                                         **kwargs) == {"FINISHED"}
    return read_splat_ply(path)


def live(gauss):
    """What the Gaussian object shows now (the handlers wrote it)."""
    co = np.empty(len(gauss.data.vertices) * 3, np.float32)
    gauss.data.attributes["position"].data.foreach_get("vector", co)
    quats = np.stack([stored(gauss, f"rot_{i}") for i in range(4)], 1)
    return co.reshape(-1, 3), quats, np.stack([stored(gauss, f"scale_{i}") for i in range(3)], 1)


def moved_by_handlers(gauss, splats, tol=1e-5):
    """The live display (handlers) and an export of the same frame agree (object space = world here)."""
    co, quats, scales = live(gauss)
    np.testing.assert_allclose(co, splats["means"], atol=tol)
    np.testing.assert_allclose(np.abs(np.einsum("ij,ij->i", quats, splats["quats"])), 1.0, atol=tol)
    np.testing.assert_allclose(scales, splats["log_scales"], atol=tol)


# ------------------------------------------------------------------------------------------------- tests
def test_binding_is_stored_on_the_gaussians_and_survives_save_and_reload(bound, tmp_path):
    body, gauss, splats = bound
    assert gauss.milo_binding.mesh == body and gauss.milo_binding.status == ""
    names = {a.name for a in gauss.data.attributes}
    assert {"milo_face", "milo_bary", "milo_offset", "milo_local_quat", "milo_rest_log_scale"} <= names
    assert "milo_vertex_id" in body.data.attributes
    # Binding changes nothing: the splats are where they were imported.
    assert_on_mesh(export(tmp_path, "rest", gauss), gauss, body)
    np.testing.assert_allclose(live(gauss)[0], splats["means"], atol=1e-6)

    names = body.name, gauss.name
    blend = tmp_path / "saved scene é.blend"
    assert bpy.ops.wm.save_as_mainfile(filepath=str(blend)) == {"FINISHED"}
    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.ops.wm.open_mainfile(filepath=str(blend)) == {"FINISHED"}
    body, gauss = (bpy.data.objects[name] for name in names)
    assert gauss.milo_binding.mesh == body
    # A shape key added after reloading still drives the splats.
    body.shape_key_add(name="Basis")
    key = body.shape_key_add(name="Lean")
    co = positions_of(body.data)
    co[:, 0] += 0.4 * co[:, 2] ** 2
    key.data.foreach_set("co", co.astype(np.float32).ravel())
    key.value = 1.0
    bpy.context.view_layer.update()
    out = export(tmp_path, "after reload", gauss)
    assert np.abs(out["means"] - splats["means"]).max() > 0.1
    assert_on_mesh(out, gauss, body)
    moved_by_handlers(gauss, out)


def make_armature(body):
    """Two bones along the box (lower half, upper half) deforming it through vertex groups."""
    arm_data = bpy.data.armatures.new("Rig")
    rig = bpy.data.objects.new("Rig", arm_data)
    bpy.context.scene.collection.objects.link(rig)
    rig.matrix_world = body.matrix_world.copy()
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    for name, head, tail in (("lower", -1.0, 0.0), ("upper", 0.0, 1.0)):
        bone = arm_data.edit_bones.new(name)
        bone.head, bone.tail = (0, 0, head), (0, 0, tail)
    arm_data.edit_bones["upper"].parent = arm_data.edit_bones["lower"]
    bpy.ops.object.mode_set(mode="OBJECT")
    z = positions_of(body.data)[:, 2]
    upper = np.clip(z * 2 + 0.5, 0, 1)          # blend over the middle quarter
    for name, weights in (("lower", 1 - upper), ("upper", upper)):
        group = body.vertex_groups.new(name=name)
        for i, w in enumerate(weights):
            if w > 0:
                group.add([i], float(w), "REPLACE")
    mod = body.modifiers.new("Armature", "ARMATURE")
    mod.object = rig
    return rig


def test_an_armature_bends_the_splats_with_the_mesh(bound, tmp_path):
    body, gauss, splats = bound
    rig = make_armature(body)
    rig.pose.bones["upper"].rotation_mode = "XYZ"
    rig.pose.bones["upper"].rotation_euler = (0.8, 0.0, 0.3)
    bpy.context.view_layer.update()          # a depsgraph update: the handler moves the splats
    out = export(tmp_path, "bent", gauss)
    upper = splats["means"][:, 2] > 0.6
    assert np.abs(out["means"][upper] - splats["means"][upper]).max() > 0.3
    assert_on_mesh(out, gauss, body)
    moved_by_handlers(gauss, out)


def test_an_animated_shape_key_exports_one_ply_per_frame(bound, tmp_path):
    body, gauss, _ = bound
    scene = bpy.context.scene
    body.shape_key_add(name="Basis")
    key = body.shape_key_add(name="Squash")
    co = positions_of(body.data)
    co *= np.c_[1 + 0.5 * (co[:, 2] < 0), 1 + 0.5 * (co[:, 2] < 0), 0.6 * np.ones(len(co))]
    key.data.foreach_set("co", co.astype(np.float32).ravel())
    for frame, value in ((1, 0.0), (3, 1.0)):
        key.value = value
        key.keyframe_insert("value", frame=frame)
    scene.frame_start, scene.frame_end = 1, 3
    scene.frame_set(2)
    folder = tmp_path / "frames ü"
    assert bpy.ops.milo.export_gaussians(gaussians=gauss.name, frames="RANGE", directory=str(folder)) == {"FINISHED"}
    assert sorted(p.name for p in folder.iterdir()) == ["frame_0001.ply", "frame_0002.ply", "frame_0003.ply"]
    assert scene.frame_current == 2                     # the scene is back where it was
    means = []
    for frame in (1, 2, 3):
        scene.frame_set(frame)                          # frame_change_post: the live display follows
        out = read_splat_ply(folder / f"frame_{frame:04d}.ply")
        assert_on_mesh(out, gauss, body)
        moved_by_handlers(gauss, out)
        means.append(out["means"])
    assert np.abs(means[2] - means[0]).max() > 0.2 and not np.allclose(means[1], means[0])
    # Stretch with the mesh: splats on the squashed (z * 0.6) and widened part change scale; without it they
    # keep their bound scales.
    assert np.abs(read_splat_ply(folder / "frame_0003.ply")["log_scales"]
                  - read_splat_ply(folder / "frame_0001.ply")["log_scales"]).max() > 0.1
    gauss.milo_binding.scale_with_stretch = False
    np.testing.assert_allclose(live(gauss)[2], stored(gauss, "milo_rest_log_scale", 3), atol=1e-6)


def test_a_modifier_twists_the_splats_and_collapsed_triangles_stay_finite(bound, tmp_path):
    body, gauss, _ = bound
    twist = body.modifiers.new("Twist", "SIMPLE_DEFORM")
    twist.deform_method, twist.angle, twist.deform_axis = "TWIST", 1.2, "Z"
    bpy.context.view_layer.update()
    out = export(tmp_path, "twisted", gauss)
    assert_on_mesh(out, gauss, body)
    moved_by_handlers(gauss, out)
    # Squash the mesh flat, then to a point: no NaN, scales bounded (STRETCH_MIN..STRETCH_MAX).
    body.modifiers.remove(twist)
    for scale in ((1.0, 1.0, 0.0), (0.0, 0.0, 0.0)):
        body.scale = scale
        bpy.context.view_layer.update()
        out = export(tmp_path, f"collapsed {scale}", gauss, space="LOCAL")
        for name in ("means", "sh", "log_scales", "quats"):
            assert np.isfinite(out[name]).all()
        assert (np.abs(out["log_scales"] - stored(gauss, "milo_rest_log_scale", 3)) <= np.log(10.0) + 1e-4).all()
        np.testing.assert_allclose(np.linalg.norm(out["quats"], axis=1), 1.0, atol=1e-5)


def test_edit_mode_moves_delete_faces_and_topology_changes(bound, tmp_path):
    body, gauss, splats = bound
    bpy.context.view_layer.objects.active = body
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(body.data)
    for v in bm.verts:
        if v.co.z > 0.5:
            v.co.x += 0.5 * (v.co.z - 0.5)
    bmesh.update_edit_mesh(body.data)
    bpy.context.view_layer.update()
    out = export(tmp_path, "edited", gauss)
    assert np.abs(out["means"] - splats["means"]).max() > 0.1
    assert_on_mesh(out, gauss, body)
    moved_by_handlers(gauss, out)

    # Delete the top faces (and their vertices): their splats are hidden and left out of exports.
    bm = bmesh.from_edit_mesh(body.data)
    top = [f for f in bm.faces if f.calc_center_median().z > 0.99]
    bmesh.ops.delete(bm, geom=top, context="FACES")
    bmesh.update_edit_mesh(body.data)
    bpy.context.view_layer.update()
    lost = stored(gauss, "milo_lost")
    assert 0 < lost.sum() < N_SPLATS and gauss.milo_binding.n_lost == lost.sum()
    assert "lost their face" in gauss.milo_binding.status
    # The lost splats were bound to top faces: their triangles used vertices that are now gone.
    assert (splats["means"][lost][:, 2] > 0.7).all()
    out = export(tmp_path, "without top", gauss)
    assert_on_mesh(out, gauss, body, keep=~lost)
    shown = sum(1 for i in bpy.context.evaluated_depsgraph_get().object_instances
                if i.is_instance and i.parent and i.parent.original == gauss)
    assert shown == N_SPLATS - lost.sum()
    bpy.ops.object.mode_set(mode="OBJECT")
    assert bpy.ops.milo.remove_lost_splats(gaussians=gauss.name) == {"FINISHED"}
    assert len(gauss.data.vertices) == N_SPLATS - lost.sum() and "milo_lost" not in gauss.data.attributes
    assert gauss.milo_binding.n_lost == 0 and gauss.milo_binding.status == ""
    out = export(tmp_path, "removed", gauss)
    assert_on_mesh(out, gauss, body)

    # Extruding copies vertex ids: the binding can no longer tell the vertices apart -> Rebind.
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(body.data)
    bm.faces.ensure_lookup_table()
    bmesh.ops.extrude_face_region(bm, geom=[bm.faces[0]])
    bmesh.update_edit_mesh(body.data)
    bpy.ops.object.mode_set(mode="OBJECT")
    assert gauss.milo_binding.rebind_needed and "rebind" in gauss.milo_binding.status
    with pytest.raises(RuntimeError, match="rebind"):
        export(tmp_path, "broken", gauss)
    before = live(gauss)
    assert bpy.ops.milo.bind(gaussians=gauss.name) == {"FINISHED"}        # Rebind: the mesh it was bound to
    assert not gauss.milo_binding.rebind_needed
    out = export(tmp_path, "rebound", gauss)
    np.testing.assert_allclose(out["means"], before[0], atol=1e-5)       # rebinding moves nothing
    assert_on_mesh(out, gauss, body)


def sh_colours(splats, dirs):
    return eval_sh(3, splats["sh"].astype(np.float64), dirs)


def test_a_rigid_rotation_of_the_mesh_turns_splats_and_their_colour_exactly(bound, tmp_path):
    body, gauss, _ = bound
    before = export(tmp_path, "before", gauss)
    rotation = random_rotations(np.random.default_rng(7), 1)[0]
    m = np.array(body.matrix_world)
    turned = np.eye(4)
    turned[:3, :3] = rotation
    turned[:3, 3] = [0.5, 1.0, -0.3]
    from mathutils import Matrix
    body.matrix_world = Matrix((turned @ m).tolist())
    bpy.context.view_layer.update()
    after = export(tmp_path, "after", gauss)
    np.testing.assert_allclose(after["means"], before["means"] @ rotation.T + turned[:3, 3], atol=2e-5)
    np.testing.assert_allclose(quat_to_matrix(after["quats"].astype(np.float64)),
                               rotation @ quat_to_matrix(before["quats"].astype(np.float64)), atol=2e-5)
    np.testing.assert_allclose(after["log_scales"], before["log_scales"], atol=2e-5)
    # The view-dependent colour turned with them: seen from R d now as from d before.
    dirs = unit(np.random.default_rng(8).normal(size=(N_SPLATS, 3)))
    np.testing.assert_allclose(sh_colours(after, dirs @ rotation.T), sh_colours(before, dirs), atol=1e-4)
    moved_by_handlers(gauss, after, tol=2e-5)


def test_export_round_trips_through_import_and_world_space(bound, tmp_path):
    body, gauss, splats = bound
    body.shape_key_add(name="Basis")
    key = body.shape_key_add(name="Bend")
    co = positions_of(body.data)
    co[:, 1] += 0.3 * co[:, 2] ** 2
    key.data.foreach_set("co", co.astype(np.float32).ravel())
    key.value = 1.0
    bpy.context.view_layer.update()
    # Turn the imported root: world space differs from the object's own space by that rotation.
    root = gauss.parent
    root.rotation_euler = (0.5, 0.0, 0.2)
    bpy.context.view_layer.update()
    local = export(tmp_path, "local", gauss, space="LOCAL")
    world = export(tmp_path, "world", gauss, space="WORLD")
    assert_on_mesh(world, gauss, body)
    r = np.array(root.matrix_world)[:3, :3]
    np.testing.assert_allclose(world["means"], local["means"] @ r.T, atol=2e-5)
    dirs = unit(np.random.default_rng(9).normal(size=(N_SPLATS, 3)))
    np.testing.assert_allclose(sh_colours(world, dirs @ r.T), sh_colours(local, dirs), atol=1e-4)
    # The SH of the export are the stored (rest-frame) ones turned by each splat's rotation since binding.
    stored_sh = splats["sh"].astype(np.float64)
    turn = quat_to_matrix(local["quats"].astype(np.float64)) @ np.swapaxes(
        quat_to_matrix(unit(splats["quats"].astype(np.float64))), 1, 2)
    np.testing.assert_allclose(local["sh"][:, 1:], rotate_sh(stored_sh[:, 1:], turn), atol=2e-4)
    np.testing.assert_array_equal(local["sh"][:, 0], splats["sh"][:, 0])
    # Reimporting the exported file gives the same splats.
    assert bpy.ops.milo.import_result(filepath=str(tmp_path / "local ü.ply")) == {"FINISHED"}
    again = bpy.data.objects["local ü Gaussians"]
    co, quats, scales = live(again)
    np.testing.assert_array_equal(co, local["means"])
    np.testing.assert_array_equal(quats, local["quats"])
    np.testing.assert_array_equal(scales, local["log_scales"])
    np.testing.assert_array_equal(stored(again, "f_rest_7"), local["sh"][:, 8, 0])
    # ... and exporting the unbound reimport writes the same file content.
    for name, value in export(tmp_path, "again", again, space="LOCAL").items():
        np.testing.assert_array_equal(value, local[name], err_msg=name)


def test_unbind_keeps_the_current_pose_and_colour(bound, tmp_path):
    body, gauss, _ = bound
    body.rotation_euler = (0.7, 0.1, 0.4)
    bpy.context.view_layer.update()
    before = export(tmp_path, "bound", gauss)
    assert bpy.ops.milo.unbind(gaussians=gauss.name) == {"FINISHED"}
    assert gauss.milo_binding.mesh is None and "milo_face" not in gauss.data.attributes
    assert "milo_rest_vertices" not in gauss.data
    after = export(tmp_path, "unbound", gauss)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=2e-5, err_msg=name)
    body.rotation_euler = (0.0, 0.0, 0.0)          # no longer followed
    bpy.context.view_layer.update()
    np.testing.assert_allclose(live(gauss)[0], before["means"], atol=1e-6)


def test_binding_refuses_what_it_cannot_bind(ext, tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    body = tall_box()
    gauss, _ = splats_on(body, 20, np.random.default_rng(1), tmp_path)
    empty = bpy.data.objects.new("Just an empty", None)
    bpy.context.scene.collection.objects.link(empty)
    with pytest.raises(RuntimeError, match="'Just an empty' is not a mesh"):
        bpy.ops.milo.bind(gaussians=gauss.name, mesh=empty.name)
    hollow = bpy.data.objects.new("Hollow", bpy.data.meshes.new("Hollow"))
    bpy.context.scene.collection.objects.link(hollow)
    with pytest.raises(RuntimeError, match="'Hollow' has no faces"):
        bpy.ops.milo.bind(gaussians=gauss.name, mesh=hollow.name)
    with pytest.raises(RuntimeError, match="'Body' is not a Gaussian splat object"):
        bpy.ops.milo.bind(gaussians=body.name, mesh=hollow.name)
    with pytest.raises(RuntimeError, match="no object named 'Nope'"):
        bpy.ops.milo.bind(gaussians=gauss.name, mesh="Nope")
    assert gauss.milo_binding.mesh is None and "milo_face" not in gauss.data.attributes
    # A mesh that loses its object: the panel says so, the export explains.
    assert bpy.ops.milo.bind(gaussians=gauss.name, mesh=body.name) == {"FINISHED"}
    bpy.data.objects.remove(body)
    bpy.context.view_layer.update()
    with pytest.raises(RuntimeError, match="no longer exists"):
        export(tmp_path, "orphan", gauss)


def test_import_of_a_run_binds_and_shows_ellipsoids(ext, tmp_path):
    """A run folder (mesh.ply + gaussians.ply) is bound on import; the display instances one oriented, scaled
    ellipsoid per splat, a density control thins them out, the points mode is the cheap alternative."""
    from plyfile import PlyData, PlyElement
    bpy.ops.wm.read_homefile(use_empty=True)
    body = tall_box("scratch")
    run = tmp_path / "run ü"
    run.mkdir()
    v = positions_of(body.data)
    tri = triangles_of(body.data)
    vertex = np.array([tuple(p) for p in v], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    face = np.empty(len(tri), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = tri
    PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(face, "face")]).write(str(run / "mesh.ply"))
    gauss_tmp, splats = splats_on(body, 300, np.random.default_rng(3), run, name="gaussians")
    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.ops.milo.import_result(directory=str(run)) == {"FINISHED"}
    gauss, mesh = bpy.data.objects["run ü Gaussians"], bpy.data.objects["run ü mesh"]
    assert gauss.milo_binding.mesh == mesh and gauss.milo_binding.status == ""

    display = sys.modules[EXT + ".splat_display"]
    dg = bpy.context.evaluated_depsgraph_get()
    instances = {tuple(np.round(np.array(i.matrix_world)[:3, 3], 5)): np.array(i.matrix_world)
                 for i in dg.object_instances if i.is_instance and i.parent and i.parent.original == gauss}
    assert len(instances) == 300
    size = display.DEFAULT_SIZE                          # the Size input's default (sigmas)
    quats = unit(splats["quats"].astype(np.float64))
    for k in range(0, 300, 37):
        m = instances[tuple(np.round(splats["means"][k], 5))]
        expected = quat_to_matrix(quats[k]) @ np.diag(size * np.exp(splats["log_scales"][k]))
        np.testing.assert_allclose(m[:3, :3], expected, atol=1e-5)
    display.set_display(gauss, density=0.5)
    dg = bpy.context.evaluated_depsgraph_get()
    half = sum(1 for i in dg.object_instances if i.is_instance and i.parent and i.parent.original == gauss)
    assert 100 < half < 200
    display.set_display(gauss, ellipsoids=False, density=1.0)
    dg = bpy.context.evaluated_depsgraph_get()
    points = gauss.evaluated_get(dg).data
    assert isinstance(points, bpy.types.PointCloud) or len(points.vertices) == 0


def test_render_splats_through_the_real_backend(bound, monkeypatch, tmp_path):
    """Per-frame splats and the scene camera go to the backend's `render` (this venv's milo_backend, CPU); the
    image sequence comes back. The cameras sent project like Blender's own camera."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    from milo_backend.evaluate import read_cameras
    from PIL import Image

    body, gauss, _ = bound
    monkeypatch.setenv("MILO_BACKEND_PYTHON", sys.executable)
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Shot", bpy.data.cameras.new("Shot"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location = (0.5, -5.0, 1.0)
    cam.rotation_euler = (1.45, 0.0, 0.1)
    cam.data.lens, cam.data.shift_x = 40.0, 0.05
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 48, 36, 100
    body.rotation_euler = (0.0, 0.0, 0.4)
    body.keyframe_insert("rotation_euler", frame=1)
    body.rotation_euler = (0.0, 0.0, 1.4)
    body.keyframe_insert("rotation_euler", frame=2)
    scene.frame_start, scene.frame_end = 1, 2
    scene.milo.device = "cpu"
    out = tmp_path / "render ü"
    assert bpy.ops.milo.render_splats(gaussians=gauss.name, directory=str(out)) == {"FINISHED"}
    images = [np.asarray(Image.open(out / f"frame_{f:04d}.png")) for f in (1, 2)]
    assert all(img.shape[:2] == (36, 48) for img in images)
    assert all(img.max() > 0 for img in images) and np.abs(images[0].astype(int) - images[1]).max() > 0
    # What was sent for frame 2: the splats as exported, and a camera projecting like Blender's.
    scene.frame_set(2)
    splats = read_splat_ply(out / "splats" / "frame_0002.ply")
    assert_on_mesh(splats, gauss, body)
    sent = read_cameras(out / "splats" / "frame_0002.json")[0]
    assert sent.name == "frame_0002" and (sent.width, sent.height) == (48, 36)
    uv, depth = sent.project(splats["means"].astype(np.float64))
    for p, px in zip(splats["means"][::40], uv[::40]):
        ndc = world_to_camera_view(scene, cam, Vector(p.tolist()))
        np.testing.assert_allclose([ndc.x * 48, (1 - ndc.y) * 36], px, atol=1e-3)
    assert (depth > 0).all()


def test_render_splats_without_a_backend_or_camera_says_how_to_fix_it(bound, monkeypatch, tmp_path):
    _, gauss, _ = bound
    monkeypatch.setenv("MILO_BACKEND_PYTHON", str(tmp_path / "no env" / "python"))
    with pytest.raises(RuntimeError, match="backend Python not found"):
        bpy.ops.milo.render_splats(gaussians=gauss.name, directory=str(tmp_path / "out"))
    monkeypatch.setenv("MILO_BACKEND_PYTHON", sys.executable)
    with pytest.raises(RuntimeError, match="no camera"):
        bpy.ops.milo.render_splats(gaussians=gauss.name, directory=str(tmp_path / "out"), frames="CURRENT")
    assert not (tmp_path / "out").exists()


def test_benchmark_measures_the_live_path_at_a_small_size():
    """The BENCHMARKS.md script, tiny, in its own process (it registers the add-on from the source tree)."""
    import subprocess
    result = subprocess.run([sys.executable, "-m", "tools.bench_blender", "--splats", "3000",
                             "--subdivisions", "8", "--frames", "2", "--no-write"], capture_output=True, text=True,
                            cwd=Path(build_addon.__file__).parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "3000" in line]
    names = [row.split("|")[1].strip() for row in rows]
    assert names[:5] == ["bind (milo.bind: read mesh, nearest triangle, store)",
                         "frame_set: shape key + live handler + display", "live handler (frame_change_post)",
                         "display re-evaluation (ellipsoids)", "display re-evaluation (points)"]
    assert len(rows) == 10 and all(float(row.split("|")[4]) > 0 for row in rows)


def test_bound_splats_move_with_the_mesh_in_an_animation_render(bound, tmp_path):
    """F12 animation render (Cycles, the Gaussian material): the mesh slides 1 unit along x between two frames
    and the rendered splats follow it, frame by frame (the follow handler runs for every rendered frame)."""
    from PIL import Image

    body, gauss, _ = bound
    scene = bpy.context.scene
    body.hide_render = True                                    # hidden: the splats alone in the pictures
    for frame, x in ((1, -0.5), (2, 0.5)):
        body.location.x = x
        body.keyframe_insert("location", index=0, frame=frame)
    cam = bpy.data.objects.new("Shot", bpy.data.cameras.new("Shot"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location, cam.rotation_euler = (0.0, -6.0, 0.1), (1.5708, 0.0, 0.0)
    scene.world = bpy.data.worlds.new("black")
    scene.world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
    scene.render.engine = "CYCLES"
    assert bpy.ops.milo.prepare_splat_render() == {"FINISHED"}
    scene.cycles.samples, scene.cycles.use_denoising = 8, False
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 48, 48, 100
    scene.frame_start, scene.frame_end = 1, 2
    scene.render.filepath = str(tmp_path / "frame_")
    bpy.ops.render.render(animation=True)
    centres = []
    for frame in (1, 2):
        img = np.asarray(Image.open(tmp_path / f"frame_{frame:04d}.png").convert("L")).astype(np.float64)
        assert img.sum() > 0
        centres.append((img.sum(0) * np.arange(img.shape[1])).sum() / img.sum())
    # 1 unit at 6 units from a 50 mm lens on a 36 mm sensor is 11 px of a 48 px picture (11.6 measured with
    # the mesh visible); hidden from the render, the mesh is still evaluated for the splats to follow it
    assert 9.0 < centres[1] - centres[0] < 14.0, centres
