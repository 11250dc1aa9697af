"""Splats bound to a mesh, in Blender (the Gaussian object itself is `gaussian_object`): where the binding
is stored, how the deformed mesh is read, and the per-frame splats (live display and export). The maths lives in `core` (binding, topology_tracking, splat_frames).

Storage (saved with the .blend file):
  - per splat, point attributes of the Gaussian mesh (so deleting splats keeps them consistent): milo_face,
    milo_bary, milo_offset, milo_local_quat, milo_rest_log_scale;
  - per binding, ID properties of the Gaussian mesh: the bound (rest) vertices in the Gaussian object's space,
    the triangles, the mesh's face count and vertex ids at bind time, and a token that changes with every bind;
  - the bound mesh object and the options: `obj.milo_binding` (properties.MILO_PG_binding);
  - on the bound mesh: the integer vertex attribute milo_vertex_id (see core.topology_tracking).

The bound mesh is read from the depsgraph (evaluated: armatures, shape keys, lattices, modifiers, edit mode) and
expressed in the Gaussian object's space (inverse(G.matrix_world) @ M.matrix_world), so that moving either
object moves the splats with the mesh. The live display writes centres, rotations and scales into the Gaussian
object's own 3DGS attributes; the SH (f_rest_*) stay in the rest frame and are turned on export.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import bmesh
import bpy
import numpy as np

from milo_backend.errors import MiloError

from .core.binding import Binding, bind
from .core.splat_frames import bound_pose, rotated_f_rest, sh_rotation_since_rest, splat_arrays, transform_pose
from .core.topology_tracking import (VERTEX_ID_ATTRIBUTE, TopologyState, binding_vertices, ids_to_write, rest_ids,
                                     topology_matches, track_topology, unchanged)
from .gaussian_object import (check_gaussian_object, read_attribute, read_colors, read_positions, remove_attribute,
                              stored_pose, write_attribute, write_pose)
from .splat_display import LOST_ATTRIBUTE, depend_on_mesh

# Per-splat binding arrays -> (attribute name, data type).
SPLAT_ATTRIBUTES = {"face": ("milo_face", "INT"), "bary": ("milo_bary", "FLOAT_VECTOR"),
                    "offset": ("milo_offset", "FLOAT"), "local_quat": ("milo_local_quat", "QUATERNION"),
                    "log_scales": ("milo_rest_log_scale", "FLOAT_VECTOR")}
# Whole-binding arrays -> ID property of the Gaussian mesh.
MESH_PROPERTIES = {"rest_vertices": "milo_rest_vertices", "triangles": "milo_triangles",
                   "n_source_faces": "milo_n_source_faces"}
BOUND_IDS = "milo_bound_vertex_ids"
TOKEN = "milo_binding_token"
REBIND_HINT = "select the Gaussians and click Rebind in the MILo panel (or run bpy.ops.milo.bind)"



def is_bound(obj) -> bool:
    """A binding is stored on the object (its mesh may have been deleted since: then it cannot follow)."""
    return obj is not None and obj.type == "MESH" and MESH_PROPERTIES["rest_vertices"] in obj.data


def write_lost(me: bpy.types.Mesh, lost: np.ndarray) -> None:
    """Flag the splats that lost their face (the display hides them); no attribute when none is lost."""
    if lost.any():
        write_attribute(me, LOST_ATTRIBUTE, "BOOLEAN", lost)
    else:
        remove_attribute(me, LOST_ATTRIBUTE)
    me.update()


# ------------------------------------------------------------------------------------------- storage
def store_binding(me: bpy.types.Mesh, binding: Binding, bound_ids: np.ndarray) -> None:
    arrays = binding.to_arrays()
    for name, (attr_name, data_type) in SPLAT_ATTRIBUTES.items():
        write_attribute(me, attr_name, data_type, arrays[name])
    values = {prop: arrays[name] if name != "n_source_faces" else int(arrays[name][0])
              for name, prop in MESH_PROPERTIES.items()}
    values[BOUND_IDS] = np.ascontiguousarray(bound_ids, np.int32)
    values[TOKEN] = random.getrandbits(31)
    for prop, value in values.items():
        # Never assign an array over an existing array property of another length: Blender 5.0 copies the new
        # buffer into the old allocation (heap corruption). A fresh property is allocated to size.
        if prop in me:
            del me[prop]
        me[prop] = value


def load_binding(me: bpy.types.Mesh) -> tuple[Binding, np.ndarray]:
    """The stored binding and the bound vertex ids; MiloError (with the Rebind hint) when they are unusable."""
    arrays = {}
    for name, (attr_name, _) in SPLAT_ATTRIBUTES.items():
        values = read_attribute(me, attr_name)
        if values is not None:
            arrays[name] = values
    try:
        for name, prop in MESH_PROPERTIES.items():
            if prop in me:
                arrays[name] = np.asarray(me[prop]) if name != "n_source_faces" else np.array([int(me[prop])])
        binding = Binding.from_arrays(arrays)
    except (ValueError, TypeError) as exc:
        raise MiloError(f"the binding stored on '{me.name}' is unusable ({exc})", hint=REBIND_HINT) from None
    return binding, np.asarray(me.get(BOUND_IDS, []), dtype=np.int32)


def clear_binding(me: bpy.types.Mesh) -> None:
    for attr_name, _ in SPLAT_ATTRIBUTES.values():
        remove_attribute(me, attr_name)
    remove_attribute(me, LOST_ATTRIBUTE)
    for prop in (*MESH_PROPERTIES.values(), BOUND_IDS, TOKEN):
        if prop in me:
            del me[prop]


@dataclass(eq=False)
class Rig:
    """A loaded binding with what the per-frame path caches (rebuilt when the stored binding changes)."""
    key: tuple
    binding: Binding
    bound_ids: np.ndarray
    topology_key: tuple | None = None
    topology: TopologyState | None = None
    written: tuple | None = field(default=None)   # (vertices, stretch) behind the pose last written


_rigs: dict[int, Rig] = {}


def clear_cache() -> None:
    _rigs.clear()


def rig_of(obj: bpy.types.Object) -> Rig:
    me = obj.data
    key = (me.session_uid, me.get(TOKEN), len(me.vertices))
    rig = _rigs.get(obj.session_uid)
    if rig is None or rig.key != key:
        binding, bound_ids = load_binding(me)
        rig = _rigs[obj.session_uid] = Rig(key, binding, bound_ids)
    return rig


# ---------------------------------------------------------------------------------------- bound meshes
@contextlib.contextmanager
def evaluated_mesh(obj: bpy.types.Object, depsgraph):
    """The deformed mesh as the depsgraph evaluated it (modifiers, shape keys, edit-mode changes)."""
    evaluated = obj.evaluated_get(depsgraph)
    if obj.mode != "EDIT":
        yield evaluated.data
        return
    # In edit mode the evaluated data is a wrapper of the edit mesh without attributes: make a real mesh.
    me = evaluated.to_mesh()
    try:
        yield me
    finally:
        evaluated.to_mesh_clear()


def mesh_to_splat_space(gauss: bpy.types.Object, mesh_obj: bpy.types.Object, depsgraph) -> np.ndarray:
    g = np.array(gauss.evaluated_get(depsgraph).matrix_world, dtype=np.float64)
    m = np.array(mesh_obj.evaluated_get(depsgraph).matrix_world, dtype=np.float64)
    try:
        return np.linalg.solve(g, m)
    except np.linalg.LinAlgError:
        raise MiloError(f"'{gauss.name}' has a zero scale: its splats have no space to follow the mesh in",
                        hint="give the Gaussian object a non-zero scale") from None


def in_space(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    if np.allclose(matrix, np.eye(4), rtol=0, atol=1e-12):
        return points
    return (points.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)


def face_corners(me: bpy.types.Mesh) -> tuple[np.ndarray, np.ndarray]:
    corners = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", corners)
    sizes = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_total", sizes)
    return corners, sizes


def topology_of(rig: Rig, me: bpy.types.Mesh) -> TopologyState:
    n_vertices, n_faces = len(me.vertices), len(me.polygons)
    if topology_matches(rig.binding, n_vertices, n_faces):
        return unchanged(rig.binding)
    if rig.topology_key != (n_vertices, n_faces):
        corners, sizes = face_corners(me)
        rig.topology = track_topology(rig.binding, rig.bound_ids, n_vertices, corners, sizes,
                                      read_attribute(me, VERTEX_ID_ATTRIBUTE))
        rig.topology_key = (n_vertices, n_faces)
    return rig.topology


def bound_mesh(gauss: bpy.types.Object) -> bpy.types.Object:
    mesh_obj = gauss.milo_binding.mesh
    if mesh_obj is None or mesh_obj.type != "MESH":
        raise MiloError(f"the mesh '{gauss.name}' was bound to no longer exists", hint=REBIND_HINT)
    return mesh_obj


def deformed_vertices(gauss: bpy.types.Object, depsgraph) -> tuple[Rig, np.ndarray | None, TopologyState]:
    """The bound vertices on the current (evaluated) mesh, in the Gaussian object's space; None when the
    binding cannot be evaluated (state.rebind_needed)."""
    rig = rig_of(gauss)
    mesh_obj = bound_mesh(gauss)
    with evaluated_mesh(mesh_obj, depsgraph) as me:
        state = topology_of(rig, me)
        if state.rebind_needed:
            return rig, None, state
        positions = read_positions(me)
    positions = in_space(positions, mesh_to_splat_space(gauss, mesh_obj, depsgraph))
    return rig, binding_vertices(rig.binding, positions, state.vertex_index), state


def set_status(gauss: bpy.types.Object, state: TopologyState | None, message: str = "") -> None:
    """The binding's state for the panel; properties are only written when they change (each write is a
    depsgraph update)."""
    props = gauss.milo_binding
    values = {"status": message or (state.message if state else ""),
              "rebind_needed": bool(state.rebind_needed) if state else bool(message),
              "n_lost": state.n_lost if state and not state.rebind_needed else 0}
    for name, value in values.items():
        if getattr(props, name) != value:
            setattr(props, name, value)


def follow_mesh(gauss: bpy.types.Object, depsgraph) -> bool:
    """Live display: move the splats onto the current mesh (centres, rotations, scales, lost flags). Returns
    whether anything was written. Never raises for a broken binding: the panel shows it."""
    if gauss.mode == "EDIT":
        return False                # its points are being edited: their attributes are not writable now
    try:
        rig, vertices, state = deformed_vertices(gauss, depsgraph)
    except MiloError as exc:
        set_status(gauss, None, exc.message)
        return False
    if vertices is None:
        set_status(gauss, state)
        return False
    stretch = bool(gauss.milo_binding.scale_with_stretch)
    me = gauss.data
    wrote = False
    if rig.written is None or rig.written[1] != stretch or not np.array_equal(rig.written[0], vertices):
        write_pose(me, bound_pose(rig.binding, vertices, stretch))
        rig.written = (vertices.copy(), stretch)
        wrote = True
    had_lost = LOST_ATTRIBUTE in me.attributes
    if state.lost.any() or had_lost:
        stored = read_attribute(me, LOST_ATTRIBUTE) if had_lost else None
        if stored is None or not np.array_equal(stored, state.lost):
            write_lost(me, state.lost)
            wrote = True
    set_status(gauss, state)
    return wrote


# -------------------------------------------------------------------------------------------- frames
def frame_splats(gauss: bpy.types.Object, depsgraph, world: bool = True) -> dict[str, np.ndarray]:
    """The splats as they are now (write_splat_ply arrays): deformed with the mesh when bound, SH turned with
    each splat, lost ones left out; in world space, or in the Gaussian object's own space."""
    check_gaussian_object(gauss)
    keep = None
    if is_bound(gauss):
        rig, vertices, state = deformed_vertices(gauss, depsgraph)
        if vertices is None:
            raise MiloError(f"'{gauss.name}' cannot follow its mesh: {state.message}", hint=REBIND_HINT)
        pose = bound_pose(rig.binding, vertices, bool(gauss.milo_binding.scale_with_stretch))
        keep = ~state.lost if state.lost.any() else None
    else:
        pose = stored_pose(gauss.data)
    if world:
        try:
            pose = transform_pose(pose, np.array(gauss.evaluated_get(depsgraph).matrix_world))
        except ValueError as exc:
            raise MiloError(f"'{gauss.name}' cannot be exported in world space: {exc}",
                            hint="apply the object's scale (Ctrl+A) or give it a uniform positive scale, or export "
                                 "in the object's own space") from None
    return splat_arrays(pose, read_colors(gauss.data), keep)


# ----------------------------------------------------------------------------------------- bind / unbind
def bake_colour(gauss: bpy.types.Object) -> None:
    """Turn the stored SH from the binding's rest frame to the splats' current rotations (before the binding
    goes away or is replaced): afterwards the object's attributes describe the splats on their own."""
    try:
        binding, _ = load_binding(gauss.data)
    except MiloError:
        return                      # nothing usable to bake from: the colour stays as stored
    me = gauss.data
    colors = read_colors(me)
    if colors.f_rest.shape[0] == 0 or binding.n_splats != len(me.vertices):
        return
    turn = sh_rotation_since_rest(binding, stored_pose(me).quats)
    for i, row in enumerate(rotated_f_rest(colors.f_rest, turn)):
        write_attribute(me, f"f_rest_{i}", "FLOAT", row)


def check_bindable_mesh(mesh_obj, gauss) -> None:
    if mesh_obj is None:
        raise MiloError("no mesh to bind the splats to",
                        hint="select the mesh as well as the Gaussians (or pass mesh=NAME)")
    if mesh_obj.type != "MESH":
        raise MiloError(f"'{mesh_obj.name}' is not a mesh (it is a {mesh_obj.type.lower()} object): splats can "
                        f"only be bound to a mesh", hint="choose a mesh object (convert curves or text with Object > "
                                                         "Convert > Mesh)")
    if mesh_obj == gauss:
        raise MiloError(f"'{gauss.name}' cannot be bound to itself", hint="choose the reconstructed mesh")
    if mesh_obj.mode == "EDIT":
        raise MiloError(f"'{mesh_obj.name}' is in Edit Mode", hint="leave Edit Mode (Tab), then bind")


def bind_gaussians(context, gauss: bpy.types.Object, mesh_obj: bpy.types.Object) -> Binding:
    """Bind (or rebind) a Gaussian object to a mesh as both are now; the binding is stored on the Gaussians."""
    check_gaussian_object(gauss)
    check_bindable_mesh(mesh_obj, gauss)
    if gauss.mode == "EDIT":
        raise MiloError(f"'{gauss.name}' is in Edit Mode", hint="leave Edit Mode (Tab), then bind")
    if is_bound(gauss):
        bake_colour(gauss)          # the old binding's rest frame is about to go
    source = mesh_obj.data
    ids = ids_to_write(read_attribute(source, VERTEX_ID_ATTRIBUTE), len(source.vertices))
    if ids is not None:
        write_attribute(source, VERTEX_ID_ATTRIBUTE, "INT", ids)
        source.update()
    depsgraph = context.evaluated_depsgraph_get()
    evaluated = mesh_obj.evaluated_get(depsgraph)
    me = evaluated.data
    n_faces = len(me.polygons)
    me.calc_loop_triangles()
    triangles = np.empty(len(me.loop_triangles) * 3, np.int32)
    me.loop_triangles.foreach_get("vertices", triangles)
    if len(triangles) == 0:
        raise MiloError(f"the mesh '{mesh_obj.name}' has no faces: there is nothing to bind the splats to",
                        hint="bind to a mesh with faces (the reconstructed mesh.ply)")
    positions = in_space(read_positions(me), mesh_to_splat_space(gauss, mesh_obj, depsgraph))
    bound_ids = rest_ids(read_attribute(me, VERTEX_ID_ATTRIBUTE), len(positions))
    pose = stored_pose(gauss.data)
    try:
        binding = bind(positions, triangles.reshape(-1, 3), pose.means, pose.quats, pose.log_scales,
                       n_source_faces=n_faces)
    except ValueError as exc:
        raise MiloError(f"cannot bind '{gauss.name}' to '{mesh_obj.name}': {exc}",
                        hint="check that the mesh has faces with an area and that the splats are finite") from None
    store_binding(gauss.data, binding, bound_ids)
    remove_attribute(gauss.data, LOST_ATTRIBUTE)
    gauss.milo_binding.mesh = mesh_obj
    depend_on_mesh(gauss, mesh_obj)
    set_status(gauss, unchanged(binding))
    rig = rig_of(gauss)
    # The object's attributes are the bind input: they already show the splats on this mesh.
    rig.written = (binding.rest_vertices.copy(), bool(gauss.milo_binding.scale_with_stretch))
    gauss.data.update()
    return binding


def unbind(gauss: bpy.types.Object) -> None:
    """The splats keep their current pose and colour, and no longer follow the mesh."""
    bake_colour(gauss)
    clear_binding(gauss.data)
    gauss.milo_binding.mesh = None
    depend_on_mesh(gauss, None)
    set_status(gauss, None)
    _rigs.pop(gauss.session_uid, None)
    gauss.data.update()


def remove_lost_splats(gauss: bpy.types.Object, depsgraph) -> int:
    """Delete the splats whose face was deleted; returns how many."""
    _, vertices, state = deformed_vertices(gauss, depsgraph)
    if vertices is None:
        raise MiloError(f"'{gauss.name}': {state.message}", hint=REBIND_HINT)
    lost = np.flatnonzero(state.lost)
    if lost.size:
        bm = bmesh.new()
        try:
            bm.from_mesh(gauss.data)
            bm.verts.ensure_lookup_table()
            bmesh.ops.delete(bm, geom=[bm.verts[i] for i in lost], context="VERTS")
            bm.to_mesh(gauss.data)
        finally:
            bm.free()
        remove_attribute(gauss.data, LOST_ATTRIBUTE)
        gauss.data.update()
    follow_mesh(gauss, depsgraph)
    return int(lost.size)


def bound_objects(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    return [obj for obj in scene.objects if is_bound(obj)]

