"""bpy.ops.milo.import_result (a run folder or any 3DGS / mesh .ply) and bpy.ops.milo.flip_up_axis."""

from pathlib import Path

import bpy
from bpy_extras.io_utils import ImportHelper

from milo_backend.errors import MiloError
from milo_backend.run_folder import RunFolder

from ..scene_import import find_root, flip_up_axis, import_result
from .reconstruct import settings_paths


class MILO_OT_import_result(bpy.types.Operator, ImportHelper):
    """Import a MILo result (mesh, Gaussians, cameras) or a Gaussian splatting .ply from another tool"""

    bl_idname = "milo.import_result"
    bl_label = "Import MILo Result"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: bpy.props.StringProperty(default="*.ply", options={"HIDDEN"})
    directory: bpy.props.StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"},
                                        description="A MILo output folder (used when no file is given)")
    import_cameras: bpy.props.BoolProperty(name="Import cameras", default=True)
    flip_up: bpy.props.BoolProperty(name="Flip up axis", default=False,
                                    description="Turn the result upside down (when the estimated up is wrong)")
    whole_run: bpy.props.BoolProperty(name="Whole run", default=True,
                                      description="When a MILo gaussians.ply or mesh.ply is chosen, import its "
                                                  "whole output folder (mesh, Gaussians and cameras)")
    bind_splats: bpy.props.BoolProperty(name="Bind splats to mesh", default=True,
                                        description="Bind the Gaussians to the mesh so that they follow it")

    def invoke(self, context, event):
        if self.directory and not self.filepath:
            return self.execute(context)
        return ImportHelper.invoke(self, context, event)

    def source(self, context) -> Path:
        if self.filepath and Path(bpy.path.abspath(self.filepath)).is_file():
            path = Path(bpy.path.abspath(self.filepath))
            run = RunFolder(path.parent)
            if self.whole_run and path in (run.gaussians, run.mesh) and run.cameras.is_file():
                return path.parent
            return path
        if self.directory:
            return Path(bpy.path.abspath(self.directory))
        _, output = settings_paths(context.scene.milo)
        return output

    def execute(self, context):
        try:
            root = import_result(context, self.source(context), import_cameras=self.import_cameras,
                                 flip_up=self.flip_up, bind=self.bind_splats)
        except MiloError as exc:
            self.report({"ERROR"}, f"{exc.message}. {exc.hint}" if exc.hint else exc.message)
            return {"CANCELLED"}
        for obj in context.view_layer.objects.selected:
            obj.select_set(False)
        root.select_set(True)
        context.view_layer.objects.active = root
        self.report({"INFO"}, f"Imported '{root.name}'")
        return {"FINISHED"}


class MILO_OT_flip_up_axis(bpy.types.Operator):
    """Turn the selected MILo result upside down (when the up axis estimated from the cameras is wrong)"""

    bl_idname = "milo.flip_up_axis"
    bl_label = "Flip Up Axis"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        roots = {r.name: r for r in (find_root(o) for o in context.selected_objects + [context.active_object])
                 if r is not None}
        if not roots:
            self.report({"ERROR"}, "Select an imported MILo result (any of its objects) first")
            return {"CANCELLED"}
        for root in roots.values():
            flip_up_axis(root)
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(MILO_OT_import_result.bl_idname, text="MILo Result / Gaussian Splats (.ply)")
