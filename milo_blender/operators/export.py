"""bpy.ops.milo.export_gaussians: the splats as standard 3DGS PLY files, for the current frame or for every frame
of a range (frame_0001.ply, ...), deformed with their mesh and with their view-dependent colour turned."""

from pathlib import Path

import bpy

from milo_backend.errors import MiloError
from milo_backend.gaussians.splat_ply import write_splat_ply

from .. import follow, splat_binding
from ..core.splat_frames import frame_file_name
from .bind import report_error, target_gaussians

FRAMES = [("CURRENT", "Current frame", "One PLY file of the current frame"),
          ("RANGE", "Frame range", "A folder with one PLY per frame: frame_0001.ply, ...")]
SPACES = [("WORLD", "World", "As placed in the Blender scene (what other tools expect)"),
          ("LOCAL", "Object", "In the Gaussian object's own space: the reconstruction's coordinates, which its "
                              "cameras.json uses")]


def frame_numbers(scene, frames: str, use_scene_range: bool, start: int, end: int) -> list[int]:
    if frames == "CURRENT":
        return [scene.frame_current]
    first, last = (scene.frame_start, scene.frame_end) if use_scene_range else (start, end)
    if last < first:
        raise MiloError(f"the frame range {first}-{last} is empty", hint="set an end frame after the start frame")
    return list(range(first, last + 1))


def for_each_frame(context, frames: list[int], visit) -> list:
    """visit(frame, depsgraph) on every frame in turn; the live display rests meanwhile (each frame is computed
    once, by visit), and the scene returns to its frame afterwards."""
    scene = context.scene
    current, subframe = scene.frame_current, scene.frame_subframe
    wm = context.window_manager
    wm.progress_begin(0, len(frames))
    results = []
    try:
        with follow.suspended():
            for i, frame in enumerate(frames):
                if frame != scene.frame_current or len(frames) > 1:
                    scene.frame_set(frame)
                results.append(visit(frame, context.evaluated_depsgraph_get()))
                wm.progress_update(i + 1)
    finally:
        wm.progress_end()
        if (scene.frame_current, scene.frame_subframe) != (current, subframe):
            scene.frame_set(current, subframe=subframe)
    return results


def write_ply(path: Path, splats: dict) -> Path:
    try:
        return write_splat_ply(path, **splats)
    except OSError as exc:
        raise MiloError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a folder you can write to",
                        path=path) from None


class MILO_OT_export_gaussians(bpy.types.Operator):
    """Export the Gaussian splats as standard 3DGS PLY files (deformed with their mesh when bound)"""

    bl_idname = "milo.export_gaussians"
    bl_label = "Export Gaussian Splats"
    bl_options = {"REGISTER"}

    gaussians: bpy.props.StringProperty(name="Gaussians", description="Gaussian object (default: the active one)")
    frames: bpy.props.EnumProperty(name="Frames", items=FRAMES, default="CURRENT")
    filepath: bpy.props.StringProperty(name="File", subtype="FILE_PATH", description="PLY file (current frame)")
    directory: bpy.props.StringProperty(name="Folder", subtype="DIR_PATH", description="Folder (frame range)")
    filter_glob: bpy.props.StringProperty(default="*.ply", options={"HIDDEN"})
    use_scene_range: bpy.props.BoolProperty(name="Scene frame range", default=True)
    frame_start: bpy.props.IntProperty(name="Start", default=1)
    frame_end: bpy.props.IntProperty(name="End", default=250)
    space: bpy.props.EnumProperty(name="Space", items=SPACES, default="WORLD")

    def invoke(self, context, event):
        try:
            gauss = target_gaussians(context, self.gaussians)
        except MiloError as exc:
            return report_error(self, exc)
        if self.frames == "CURRENT" and not self.filepath:
            folder = Path(bpy.path.abspath("//")) if bpy.data.filepath else Path.home()
            self.filepath = str(folder / f"{bpy.path.clean_name(gauss.name)}.ply")
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            gauss = target_gaussians(context, self.gaussians)
            frames = frame_numbers(context.scene, self.frames, self.use_scene_range, self.frame_start, self.frame_end)
            world = self.space == "WORLD"
            if self.frames == "CURRENT":
                if not self.filepath:
                    raise MiloError("no file to export to", hint="choose a .ply file name")
                path = Path(bpy.path.abspath(self.filepath))
                if path.suffix.lower() != ".ply":
                    path = path.with_name(path.name + ".ply")
                paths = for_each_frame(context, frames, lambda _f, dg: write_ply(
                    path, splat_binding.frame_splats(gauss, dg, world)))
            else:
                if not self.directory:
                    raise MiloError("no folder to export the frames to", hint="choose an output folder")
                folder = Path(bpy.path.abspath(self.directory))
                paths = for_each_frame(context, frames, lambda f, dg: write_ply(
                    folder / frame_file_name(f), splat_binding.frame_splats(gauss, dg, world)))
        except MiloError as exc:
            return report_error(self, exc)
        where = paths[0] if len(paths) == 1 else paths[0].parent
        self.report({"INFO"}, f"Exported {len(paths)} frame{'s' if len(paths) > 1 else ''} of '{gauss.name}' to {where}")
        return {"FINISHED"}


def menu_export(self, context):
    self.layout.operator(MILO_OT_export_gaussians.bl_idname, text="MILo Gaussian Splats (.ply)")
