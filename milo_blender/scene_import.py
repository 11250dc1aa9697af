"""Building Blender objects from a reconstruction: the mesh with its vertex colours, the Gaussians as
a point object with the 3DGS attributes, and the cameras, all in one collection under one root empty
whose rotation puts the scene's up on +Z (flipping it later rotates only that empty). With both a mesh and
Gaussians, the Gaussians are bound to the mesh so that they follow it (splat_binding).
"""
from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from milo_backend.errors import MiloError
from milo_backend.gaussians.splat_ply import read_splat_ply

from .core.camera_convert import blender_camera_matrix, blender_camera_params, load_cameras_json
from .core.mesh_ply import MeshData, read_mesh_ply
from .core.orient import FLIP, up_rotation
from .core.runs import RunFolder
from .core.splat_attributes import base_colors, splat_attributes
from .splat_binding import bind_gaussians
from .splat_display import display_modifier

ROOT_KEY = "milo_source"      # custom property marking a root empty (value: what was imported)
COLOR_ATTRIBUTE = "Color"


def _matrix(m: np.ndarray) -> Matrix:
    return Matrix([list(map(float, row)) for row in np.asarray(m)])


def _link(obj, collection, root) -> None:
    collection.objects.link(obj)
    if root is not None:
        obj.parent = root
        obj.matrix_parent_inverse = Matrix.Identity(4)


def mesh_object(name: str, data: MeshData) -> bpy.types.Object:
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(data.vertices))
    me.vertices.foreach_set("co", data.vertices.reshape(-1))
    me.loops.add(len(data.corners))
    me.loops.foreach_set("vertex_index", data.corners)
    me.polygons.add(len(data.face_sizes))
    me.polygons.foreach_set("loop_start", data.loop_starts)
    me.update(calc_edges=True)
    if data.colors is not None:
        attr = me.color_attributes.new(COLOR_ATTRIBUTE, "BYTE_COLOR", "POINT")
        rgba = np.concatenate([data.colors, np.ones((len(data.colors), 1), np.float32)], axis=1)
        attr.data.foreach_set("color_srgb", rgba.reshape(-1))  # photo colours are sRGB
        me.color_attributes.active_color = attr
        me.color_attributes.render_color_index = me.color_attributes.active_color_index
        me.materials.append(vertex_color_material())
    return bpy.data.objects.new(name, me)


def vertex_color_material() -> bpy.types.Material:
    """Material Preview / renders show the vertex colours (Solid mode shows them via shading 'Attribute')."""
    mat = bpy.data.materials.get("MILo vertex colours")
    if mat is not None:
        return mat
    mat = bpy.data.materials.new("MILo vertex colours")
    if bpy.app.version < (5, 0, 0):  # node materials are the only kind from 5.0 on
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 0.9
    color = nodes.new("ShaderNodeVertexColor")
    color.layer_name = COLOR_ATTRIBUTE
    color.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def gaussians_object(name: str, splats: dict[str, np.ndarray]) -> bpy.types.Object:
    positions, attrs = splat_attributes(splats)
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(positions))
    me.vertices.foreach_set("co", positions.reshape(-1))
    for attr_name, values in attrs.items():
        me.attributes.new(attr_name, "FLOAT", "POINT").data.foreach_set("value", values)
    color = me.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    color.data.foreach_set("color_srgb", base_colors(splats).reshape(-1))
    me.color_attributes.active_color = color
    obj = bpy.data.objects.new(name, me)
    obj["milo_gaussians"] = True
    # vertices alone are invisible outside Edit Mode: show each splat as an ellipsoid (or a point)
    display_modifier(obj)
    return obj


def camera_objects(cameras, collection, root, extent: float | None, set_resolution: bool, scene) -> list:
    objects = []
    for cam in cameras:
        p = blender_camera_params(cam)
        data = bpy.data.cameras.new(cam.name)
        data.lens, data.sensor_fit = p.lens, p.sensor_fit
        data.sensor_width, data.sensor_height = p.sensor_width, p.sensor_height
        data.shift_x, data.shift_y = p.shift_x, p.shift_y
        data.display_size = 0.05 * extent if extent else 0.2
        obj = bpy.data.objects.new(cam.name, data)
        _link(obj, collection, root)
        obj.matrix_basis = _matrix(blender_camera_matrix(cam.world_to_cam))
        obj["milo_resolution"] = list(p.resolution)
        objects.append(obj)
    if set_resolution and cameras:
        p = blender_camera_params(cameras[0])
        scene.render.resolution_x, scene.render.resolution_y = p.resolution
        scene.render.resolution_percentage = 100
        scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = p.pixel_aspect
    return objects


def show_vertex_colors_in_solid_mode(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                for space in area.spaces:
                    if space.type == "VIEW_3D":
                        space.shading.color_type = "VERTEX"


def _read_single_ply(path: Path) -> tuple[dict | None, MeshData | None]:
    """A lone .ply from any tool: Gaussian splats if it has the 3DGS properties, else a mesh."""
    try:
        return read_splat_ply(path), None
    except MiloError as splat_error:
        try:
            return None, read_mesh_ply(path)
        except MiloError:
            raise splat_error from None


def import_result(context, source: str | Path, import_cameras: bool = True, flip_up: bool = False,
                  set_resolution: bool = True, bind: bool = True) -> bpy.types.Object:
    """Import a run folder (gaussians.ply, mesh.ply, cameras.json) or one .ply; returns the root empty. `bind`:
    bind the Gaussians to the mesh when both are there."""
    source = Path(source)
    splats = mesh = cameras = None
    extent = None
    if source.is_dir():
        run = RunFolder(source)
        if not run.gaussians.is_file() and not run.mesh.is_file():
            raise MiloError(f"{source} holds no gaussians.ply or mesh.ply",
                            hint="choose a finished MILo output folder, or a .ply file", path=source)
        splats = read_splat_ply(run.gaussians) if run.gaussians.is_file() else None
        mesh = read_mesh_ply(run.mesh) if run.mesh.is_file() else None
        if run.cameras.is_file():
            cameras, extent = load_cameras_json(run.cameras)
        name = source.name or "result"
    elif source.is_file() and source.suffix.lower() == ".ply":
        splats, mesh = _read_single_ply(source)
        name = source.stem
    else:
        raise MiloError(f"nothing to import at {source}", hint="choose a MILo output folder or a .ply file",
                        path=source)
    w2c = np.stack([c.world_to_cam for c in cameras]) if cameras else None

    scene = context.scene
    collection = bpy.data.collections.new(f"MILo {name}")
    scene.collection.children.link(collection)
    root = bpy.data.objects.new(f"MILo {name}", None)
    root.empty_display_type = "ARROWS"
    root[ROOT_KEY] = str(source)
    root["milo_flipped"] = bool(flip_up)
    collection.objects.link(root)
    root.matrix_basis = _matrix(up_rotation(w2c, flip=flip_up))
    mesh_obj = gauss_obj = None
    if mesh is not None:
        mesh_obj = mesh_object(f"{name} mesh", mesh)
        _link(mesh_obj, collection, root)
        if mesh.colors is not None:
            show_vertex_colors_in_solid_mode(context)
    if splats is not None:
        gauss_obj = gaussians_object(f"{name} Gaussians", splats)
        _link(gauss_obj, collection, root)
    if cameras and import_cameras:
        cam_collection = bpy.data.collections.new(f"MILo {name} cameras")
        collection.children.link(cam_collection)
        camera_objects(cameras, cam_collection, root, extent, set_resolution, scene)
    context.view_layer.update()
    if bind and mesh_obj is not None and gauss_obj is not None and len(mesh.face_sizes):
        try:
            bind_gaussians(context, gauss_obj, mesh_obj)
        except MiloError as exc:  # the import itself succeeded: say why the splats do not follow the mesh
            gauss_obj.milo_binding.status = f"Not bound: {exc.message}"
    return root


def find_root(obj) -> bpy.types.Object | None:
    while obj is not None:
        if ROOT_KEY in obj:
            return obj
        obj = obj.parent
    return None


def flip_up_axis(root: bpy.types.Object) -> None:
    """Turn the imported result upside down about its own origin."""
    m = root.matrix_basis.copy()
    flipped = (_matrix(FLIP) @ m.to_3x3()).to_4x4()
    flipped.translation = m.translation
    root.matrix_basis = flipped
    root["milo_flipped"] = not bool(root.get("milo_flipped", False))
