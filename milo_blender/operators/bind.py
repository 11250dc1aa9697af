"""bpy.ops.milo.bind (also Rebind), milo.unbind and milo.remove_lost_splats: splats that follow a mesh."""

import time

import bpy

from milo_backend.errors import MiloError

from .. import gaussian_object, splat_binding
from ..scene_import import find_root


def report_error(op, exc: MiloError) -> set[str]:
    op.report({"ERROR"}, f"{exc.message}. {exc.hint}" if exc.hint else exc.message)
    return {"CANCELLED"}


def named_object(name: str) -> bpy.types.Object:
    obj = bpy.data.objects.get(name)
    if obj is None:
        raise MiloError(f"there is no object named '{name}'", hint="check the object's name in the Outliner")
    return obj


def target_gaussians(context, name: str = "") -> bpy.types.Object:
    """The named object, else the active object, else a selected Gaussian object, else the Gaussians of the active
    imported result (after an import its root empty is active)."""
    if name:
        obj = named_object(name)
    else:
        active = context.active_object
        candidates = [active] if gaussian_object.is_gaussian_object(active) else \
            [o for o in context.selected_objects if gaussian_object.is_gaussian_object(o)]
        if not candidates and active is not None:   # the mesh the splats follow, or an imported result's root
            candidates = [o for o in context.scene.objects if gaussian_object.is_gaussian_object(o)
                          and o.milo_binding.mesh == active]
            candidates += [o for o in active.children_recursive if gaussian_object.is_gaussian_object(o)]
        obj = candidates[0] if candidates else active
    gaussian_object.check_gaussian_object(obj)
    return obj


def target_mesh(context, gauss, name: str = "") -> bpy.types.Object | None:
    """The named object, else another selected mesh, else the mesh the splats were bound to, else the only mesh
    imported with them."""
    if name:
        return named_object(name)
    selected = [o for o in context.selected_objects if o.type == "MESH" and o != gauss
                and not gaussian_object.is_gaussian_object(o)]
    if selected:
        return selected[0]
    if gauss.milo_binding.mesh is not None:
        return gauss.milo_binding.mesh
    root = find_root(gauss)
    siblings = [o for o in (root.children if root else ()) if o.type == "MESH" and o != gauss
                and not gaussian_object.is_gaussian_object(o)]
    return siblings[0] if len(siblings) == 1 else None


class MILO_OT_bind(bpy.types.Operator):
    """Attach every splat to the nearest triangle of the mesh, so that it follows the mesh's deformation
    (armature, shape keys, modifiers, edits). Select the Gaussians and the mesh"""

    bl_idname = "milo.bind"
    bl_label = "Bind Splats to Mesh"
    bl_options = {"REGISTER", "UNDO"}

    gaussians: bpy.props.StringProperty(name="Gaussians", description="Gaussian object (default: the active one)")
    mesh: bpy.props.StringProperty(name="Mesh", description="Mesh object (default: the other selected mesh, or the "
                                                            "one bound before)")

    def execute(self, context):
        try:
            gauss = target_gaussians(context, self.gaussians)
            mesh_obj = target_mesh(context, gauss, self.mesh)
            start = time.perf_counter()
            binding = splat_binding.bind_gaussians(context, gauss, mesh_obj)
        except MiloError as exc:
            return report_error(self, exc)
        self.report({"INFO"}, f"Bound {binding.n_splats:,} splats of '{gauss.name}' to '{mesh_obj.name}' "
                              f"({len(binding.triangles):,} triangles, {time.perf_counter() - start:.1f} s)")
        return {"FINISHED"}


class MILO_OT_unbind(bpy.types.Operator):
    """Stop the splats following the mesh; they keep their current position, shape and colour"""

    bl_idname = "milo.unbind"
    bl_label = "Unbind Splats"
    bl_options = {"REGISTER", "UNDO"}

    gaussians: bpy.props.StringProperty(name="Gaussians")

    def execute(self, context):
        try:
            gauss = target_gaussians(context, self.gaussians)
        except MiloError as exc:
            return report_error(self, exc)
        if not splat_binding.is_bound(gauss):
            self.report({"INFO"}, f"'{gauss.name}' is not bound")
            return {"CANCELLED"}
        splat_binding.unbind(gauss)
        return {"FINISHED"}


class MILO_OT_remove_lost_splats(bpy.types.Operator):
    """Delete the splats whose faces were deleted from the bound mesh"""

    bl_idname = "milo.remove_lost_splats"
    bl_label = "Remove Lost Splats"
    bl_options = {"REGISTER", "UNDO"}

    gaussians: bpy.props.StringProperty(name="Gaussians")

    def execute(self, context):
        try:
            gauss = target_gaussians(context, self.gaussians)
            if not splat_binding.is_bound(gauss):
                raise MiloError(f"'{gauss.name}' is not bound to a mesh", hint="bind it first")
            removed = splat_binding.remove_lost_splats(gauss, context.evaluated_depsgraph_get())
        except MiloError as exc:
            return report_error(self, exc)
        self.report({"INFO"}, f"Removed {removed:,} splats from '{gauss.name}'")
        return {"FINISHED"}
