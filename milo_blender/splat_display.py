"""How Gaussian splats show in the viewport and in EEVEE / Cycles renders: a geometry-nodes modifier on the
Gaussian object.

Each splat becomes an ellipsoid (an ico sphere instance, unrealised: instancing costs a fraction of realising)
rotated by rot_*, with radii exp(scale_*) x Size (Size in standard deviations, 2 by default), carrying the
Gaussian material (`gaussian_material`); or, the cheap mode for
editing, a point of radius exp(max scale_*) x Size. Density shows a stable random fraction of the splats (the
same ones on every frame, so the display does not flicker while they move). Splats that lost their face
(attribute LOST_ATTRIBUTE) are hidden. The live deformation only rewrites the attributes this reads.
"""
from __future__ import annotations

import bpy

MODIFIER = "MILo splat points"     # the importer's name for it since the first release: files keep working
GROUP = "MILo splat display"
LOST_ATTRIBUTE = "milo_lost"
COLOR_ATTRIBUTE = "Color"
SIZE_ATTRIBUTE = "milo_size"      # Size, per splat, for the material's falloff
LOCAL_ATTRIBUTE = "milo_local"    # position on the unit sphere of the instance, for the material
INPUTS = ("Ellipsoids", "Density", "Size")       # the modifier's inputs, shown in the panel
MESH_INPUT = "Bound Mesh"                         # set by binding, hidden from the modifier panel
# 2 sigma, not the 3 that 3DGS rasterisers cover: the proxies are composited by their surface's depth, and
# larger ones put more splats out of order. Against the backend's render: 27.3 dB at 2 against 24.3 at 3 on
# the 40-splat test; on the sample scene (not tuned on) 26.3 against 24.1 dB, 3.4x faster in Cycles.
DEFAULT_SIZE = 2.0


def display_modifier(obj: bpy.types.Object) -> bpy.types.NodesModifier:
    """The display modifier of a Gaussian object, added (or re-pointed at the current group) when needed."""
    mod = obj.modifiers.get(MODIFIER)
    if mod is None or mod.type != "NODES":
        mod = obj.modifiers.new(MODIFIER, "NODES")
    group = splat_display_group()
    if mod.node_group is not group:
        mod.node_group = group
    return mod


def input_identifier(mod: bpy.types.NodesModifier, name: str) -> str:
    """The modifier's key for a group input (`mod[key]` holds its value)."""
    for item in mod.node_group.interface.items_tree:
        if item.item_type == "SOCKET" and item.in_out == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(name)


def set_display(obj: bpy.types.Object, ellipsoids: bool | None = None, density: float | None = None,
                size: float | None = None) -> None:
    mod = display_modifier(obj)
    for name, value in (("Ellipsoids", ellipsoids), ("Density", density), ("Size", size)):
        if value is not None:
            mod[input_identifier(mod, name)] = value
    obj.update_tag()


def depend_on_mesh(obj: bpy.types.Object, mesh: bpy.types.Object | None) -> None:
    """Make the display (so every render of the Gaussian object) depend on its bound mesh, or on nothing."""
    mod = display_modifier(obj)
    try:
        mod[input_identifier(mod, MESH_INPUT)] = mesh
    except KeyError:  # a display group saved by an earlier version: no such input
        return
    obj.update_tag()


def _socket(group, name, socket_type, in_out="INPUT", default=None, min_value=None, max_value=None):
    socket = group.interface.new_socket(name=name, in_out=in_out, socket_type=socket_type)
    if default is not None:
        socket.default_value = default
    if min_value is not None:
        socket.min_value, socket.max_value = min_value, max_value
    return socket


def _named(nodes, name: str, data_type: str = "FLOAT"):
    node = nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    node.inputs["Name"].default_value = name
    return node.outputs["Attribute"]


def _math(nodes, links, operation: str, a, b=None):
    node = nodes.new("ShaderNodeMath")
    node.operation = operation
    for i, value in enumerate((a, b)):
        if value is None:
            continue
        if isinstance(value, (int, float)):
            node.inputs[i].default_value = value
        else:
            links.new(value, node.inputs[i])
    return node.outputs[0]


def splat_display_group() -> bpy.types.NodeTree:
    group = bpy.data.node_groups.get(GROUP)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(GROUP, "GeometryNodeTree")
    _socket(group, "Geometry", "NodeSocketGeometry")
    _socket(group, "Ellipsoids", "NodeSocketBool", default=True)
    _socket(group, "Density", "NodeSocketFloat", default=1.0, min_value=0.0, max_value=1.0)
    _socket(group, "Size", "NodeSocketFloat", default=DEFAULT_SIZE, min_value=0.0, max_value=100.0)
    mesh_socket = _socket(group, MESH_INPUT, "NodeSocketObject")
    if hasattr(mesh_socket, "hide_in_modifier"):
        mesh_socket.hide_in_modifier = True
    _socket(group, "Geometry", "NodeSocketGeometry", in_out="OUTPUT")
    nodes, links = group.nodes, group.links
    inp, out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")

    # The bound mesh's geometry, multiplied by zero into Size: the only point is the dependency, so that a
    # render evaluates the mesh (animation, armature) even when it is hidden from the render, and the follow
    # handler can read it there.
    mesh_info = nodes.new("GeometryNodeObjectInfo")
    links.new(inp.outputs[MESH_INPUT], mesh_info.inputs["Object"])
    mesh_size = nodes.new("GeometryNodeAttributeDomainSize")
    mesh_size.component = "MESH"
    links.new(mesh_info.outputs["Geometry"], mesh_size.inputs["Geometry"])
    size = _math(nodes, links, "ADD", inp.outputs["Size"],
                 _math(nodes, links, "MULTIPLY", mesh_size.outputs["Point Count"], 0.0))

    # Hidden: splats that lost their face, and those beyond the display density (random per index: stable).
    random = nodes.new("FunctionNodeRandomValue")
    random.data_type = "FLOAT"
    beyond = _math(nodes, links, "GREATER_THAN", random.outputs["Value"], None)
    links.new(inp.outputs["Density"], beyond.node.inputs[1])
    hide = nodes.new("FunctionNodeBooleanMath")
    hide.operation = "OR"
    links.new(_named(nodes, LOST_ATTRIBUTE, "BOOLEAN"), hide.inputs[0])
    links.new(beyond, hide.inputs[1])
    delete = nodes.new("GeometryNodeDeleteGeometry")
    delete.domain = "POINT"
    links.new(inp.outputs["Geometry"], delete.inputs["Geometry"])
    links.new(hide.outputs[0], delete.inputs["Selection"])
    to_points = nodes.new("GeometryNodeMeshToPoints")
    links.new(delete.outputs["Geometry"], to_points.inputs["Mesh"])
    store_size = nodes.new("GeometryNodeStoreNamedAttribute")
    store_size.data_type, store_size.domain = "FLOAT", "POINT"
    store_size.inputs["Name"].default_value = SIZE_ATTRIBUTE
    links.new(to_points.outputs["Points"], store_size.inputs["Geometry"])
    links.new(size, store_size.inputs["Value"])

    scales = [_math(nodes, links, "EXPONENT", _named(nodes, f"scale_{i}")) for i in range(3)]

    # Points: radius of the largest axis.
    largest = _math(nodes, links, "MAXIMUM", _math(nodes, links, "MAXIMUM", scales[0], scales[1]), scales[2])
    radius = _math(nodes, links, "MULTIPLY", largest, size)
    set_radius = nodes.new("GeometryNodeSetPointRadius")
    links.new(to_points.outputs["Points"], set_radius.inputs["Points"])
    links.new(radius, set_radius.inputs["Radius"])
    point_material = nodes.new("GeometryNodeSetMaterial")
    point_material.inputs["Material"].default_value = point_color_material()
    links.new(set_radius.outputs["Points"], point_material.inputs["Geometry"])

    # Ellipsoids: a unit sphere per splat, turned by its quaternion and scaled by its three radii.
    sphere = nodes.new("GeometryNodeMeshIcoSphere")
    sphere.inputs["Radius"].default_value = 1.0
    sphere.inputs["Subdivisions"].default_value = 1
    local = nodes.new("GeometryNodeStoreNamedAttribute")  # the unit-sphere position, for the material
    local.data_type, local.domain = "FLOAT_VECTOR", "POINT"
    local.inputs["Name"].default_value = LOCAL_ATTRIBUTE
    links.new(sphere.outputs["Mesh"], local.inputs["Geometry"])
    links.new(nodes.new("GeometryNodeInputPosition").outputs["Position"], local.inputs["Value"])
    smooth = nodes.new("GeometryNodeSetShadeSmooth")
    links.new(local.outputs["Geometry"], smooth.inputs["Geometry"])
    sphere_material = nodes.new("GeometryNodeSetMaterial")
    sphere_material.inputs["Material"].default_value = gaussian_material()
    links.new(smooth.outputs["Geometry"], sphere_material.inputs["Geometry"])
    quaternion = nodes.new("FunctionNodeQuaternionToRotation")
    for i, axis in enumerate("WXYZ"):
        links.new(_named(nodes, f"rot_{i}"), quaternion.inputs[axis])
    radii = nodes.new("ShaderNodeCombineXYZ")
    for i, axis in enumerate("XYZ"):
        links.new(scales[i], radii.inputs[axis])
    sized = nodes.new("ShaderNodeVectorMath")
    sized.operation = "SCALE"
    links.new(radii.outputs["Vector"], sized.inputs[0])
    links.new(size, sized.inputs["Scale"])
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    links.new(store_size.outputs["Geometry"], instance.inputs["Points"])
    links.new(sphere_material.outputs["Geometry"], instance.inputs["Instance"])
    links.new(quaternion.outputs["Rotation"], instance.inputs["Rotation"])
    links.new(sized.outputs["Vector"], instance.inputs["Scale"])

    switch = nodes.new("GeometryNodeSwitch")
    switch.input_type = "GEOMETRY"
    links.new(inp.outputs["Ellipsoids"], switch.inputs["Switch"])
    links.new(point_material.outputs["Geometry"], switch.inputs["False"])
    links.new(instance.outputs["Instances"], switch.inputs["True"])
    links.new(switch.outputs["Output"], out.inputs["Geometry"])
    return group


def _new_material(name: str) -> tuple[bpy.types.Material, bool]:
    mat = bpy.data.materials.get(name)
    if mat is not None:
        return mat, False
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # node materials are the only kind from 5.0 on
        mat.use_nodes = True
    return mat, True


def point_color_material() -> bpy.types.Material:
    """Points carry their attributes themselves (attribute type GEOMETRY)."""
    mat, created = _new_material("MILo splat colours")
    if created:
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
        attr = nodes.new("ShaderNodeAttribute")
        attr.attribute_name = COLOR_ATTRIBUTE
        links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def gaussian_material() -> bpy.types.Material:
    """The 3DGS look on the ellipsoid proxies, for EEVEE and Cycles.

    Along the view ray through a front-face point, a Gaussian's density peaks where the ray passes closest
    to its centre; in the instance's own space (the unit sphere = Size standard deviations) that distance
    is |p x d| / |d| and its Mahalanobis distance m = Size |p x d| / |d|. The splat covers the pixel with
    alpha = sigmoid(opacity) exp(-m^2 / 2), as in 3DGS (its 2D covariance is the projection of this one,
    up to the affine approximation), and emits its colour there (3DGS colours are radiance, not albedo;
    degree 0 only: the view-dependent part is not shown). Back faces are transparent, so a ray crosses
    each splat once in Cycles too. Dithered (stochastic) transparency with depth testing composites
    overlapping splats in their depth order in expectation: EEVEE's blended mode sorts whole objects, not
    the instances of one; it converges with the render samples.
    """
    mat, created = _new_material("MILo splat gaussians")
    if not created:
        return mat
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    for node in list(nodes):
        if node.type != "OUTPUT_MATERIAL":
            nodes.remove(node)
    output = next(n for n in nodes if n.type == "OUTPUT_MATERIAL")

    def attribute(name: str):
        node = nodes.new("ShaderNodeAttribute")
        node.attribute_type, node.attribute_name = "INSTANCER", name
        return node

    def vector(operation: str, a, b=None):
        node = nodes.new("ShaderNodeVectorMath")
        node.operation = operation
        links.new(a, node.inputs[0])
        if b is not None:
            links.new(b, node.inputs[1])
        return node.outputs["Value" if operation == "LENGTH" else "Vector"]

    local = nodes.new("ShaderNodeAttribute")
    local.attribute_type, local.attribute_name = "GEOMETRY", LOCAL_ATTRIBUTE
    geometry = nodes.new("ShaderNodeNewGeometry")
    to_local = nodes.new("ShaderNodeVectorTransform")
    to_local.vector_type, to_local.convert_from, to_local.convert_to = "VECTOR", "WORLD", "OBJECT"
    links.new(geometry.outputs["Incoming"], to_local.inputs["Vector"])
    ray = to_local.outputs["Vector"]
    distance = _math(nodes, links, "DIVIDE", vector("LENGTH", vector("CROSS_PRODUCT", local.outputs["Vector"], ray)),
                     vector("LENGTH", ray))
    m = _math(nodes, links, "MULTIPLY", distance, attribute(SIZE_ATTRIBUTE).outputs["Fac"])
    falloff = _math(nodes, links, "EXPONENT", _math(nodes, links, "MULTIPLY", _math(nodes, links, "MULTIPLY", m, m), -0.5))
    opacity = attribute("opacity").outputs["Fac"]
    sigmoid = _math(nodes, links, "DIVIDE", 1.0,
                    _math(nodes, links, "ADD", 1.0, _math(nodes, links, "EXPONENT",
                                                          _math(nodes, links, "MULTIPLY", opacity, -1.0))))
    front = _math(nodes, links, "SUBTRACT", 1.0, geometry.outputs["Backfacing"])
    alpha = _math(nodes, links, "MULTIPLY", _math(nodes, links, "MULTIPLY", sigmoid, falloff), front)
    emission = nodes.new("ShaderNodeEmission")
    links.new(attribute(COLOR_ATTRIBUTE).outputs["Color"], emission.inputs["Color"])
    transparent = nodes.new("ShaderNodeBsdfTransparent")
    mix = nodes.new("ShaderNodeMixShader")
    links.new(alpha, mix.inputs["Fac"])
    links.new(transparent.outputs[0], mix.inputs[1])
    links.new(emission.outputs[0], mix.inputs[2])
    links.new(mix.outputs[0], output.inputs["Surface"])
    if hasattr(mat, "surface_render_method"):
        mat.surface_render_method = "DITHERED"
    return mat
