"""bpy.ops.milo.render_splats: render the (animated) splats from the scene camera with the MILo backend's
Gaussian rasteriser (GPU when present, CPU otherwise); the image sequence lands in the output folder."""

from pathlib import Path

import bpy
import numpy as np

from milo_backend.errors import MiloError
from milo_backend.data.camera import Camera

from .. import addon, gaussian_object, splat_binding
from ..core.camera_export import opencv_camera, write_cameras_json
from ..core.job import Job
from ..core.render_job import frame_inputs, render_steps
from ..core.splat_frames import frame_file_name
from .bind import named_object, target_gaussians
from .export import FRAMES, for_each_frame, frame_numbers, write_ply
from .job_operator import JobOperator


def backend_camera(scene, camera_obj, depsgraph, name: str) -> Camera:
    """What a Blender perspective camera sees at the current frame, as the backend's camera."""
    if camera_obj is None:
        raise MiloError("the scene has no camera to render from", hint="add a camera and make it the scene camera")
    if camera_obj.type != "CAMERA":
        raise MiloError(f"'{camera_obj.name}' is not a camera", hint="choose a camera object")
    evaluated = camera_obj.evaluated_get(depsgraph)
    data = evaluated.data
    if data.type != "PERSP":
        raise MiloError(f"camera '{camera_obj.name}' is {data.type.lower()}: the splat renderer is a pinhole camera",
                        hint="set the camera type to Perspective")
    r = scene.render
    resolution = (r.resolution_x * r.resolution_percentage // 100, r.resolution_y * r.resolution_percentage // 100)
    return opencv_camera(name, np.array(evaluated.matrix_world), data.lens, data.sensor_width, data.sensor_height,
                         data.sensor_fit, data.shift_x, data.shift_y, resolution, (r.pixel_aspect_x, r.pixel_aspect_y))


class MILO_OT_render_splats(JobOperator, bpy.types.Operator):
    """Render the splats from the scene camera with the MILo backend, one image per frame"""

    bl_idname = "milo.render_splats"
    bl_label = "Render Splats"
    bl_options = {"REGISTER"}

    job_kind = "render"
    gaussians: bpy.props.StringProperty(name="Gaussians", description="Gaussian object (default: the active one)")
    camera: bpy.props.StringProperty(name="Camera", description="Camera object (default: the scene camera)")
    directory: bpy.props.StringProperty(name="Output", subtype="DIR_PATH",
                                        description="Folder for the images (default: the panel's render folder)")
    frames: bpy.props.EnumProperty(name="Frames", items=FRAMES, default="RANGE")
    use_scene_range: bpy.props.BoolProperty(name="Scene frame range", default=True)
    frame_start: bpy.props.IntProperty(name="Start", default=1)
    frame_end: bpy.props.IntProperty(name="End", default=250)

    def status_props(self, context):
        return context.window_manager.milo_render_job

    def make_job(self, context, log_path) -> Job:
        scene = context.scene
        python = addon.backend_python(context)       # before exporting anything: is there a backend at all?
        gauss = target_gaussians(context, self.gaussians)
        camera = named_object(self.camera) if self.camera else scene.camera
        folder = self.directory or scene.milo.render_output
        if not folder.strip():
            raise MiloError("no folder for the rendered images", hint="choose a render output folder")
        out = Path(bpy.path.abspath(folder))
        frames = frame_numbers(scene, self.frames, self.use_scene_range, self.frame_start, self.frame_end)

        def export(frame, depsgraph):
            inputs = frame_inputs(out, Path(frame_file_name(frame)).stem)
            write_cameras_json(inputs.cameras, [backend_camera(scene, camera, depsgraph, inputs.name)])
            write_ply(inputs.splats, splat_binding.frame_splats(gauss, depsgraph, world=True))
            return inputs

        inputs = for_each_frame(context, frames, export)
        context.window_manager.milo_render_job.output = str(out)
        return Job(render_steps(python, inputs, out, scene.milo.device), log_path=log_path)

    def job_done(self, context, job: Job) -> None:
        out = context.window_manager.milo_render_job.output
        self.report({"INFO"}, f"Rendered {len(job.steps)} frame{'s' if len(job.steps) > 1 else ''} into {out}")


# Cycles counts every splat a ray passes as one transparent bounce (its default, 8, cuts overlapping splats)
SPLAT_TRANSPARENT_BOUNCES = 256
SPLAT_EEVEE_SAMPLES = 64  # dithered transparency converges with the samples


class MILO_OT_prepare_splat_render(bpy.types.Operator):
    """Set the scene up to render splats with EEVEE or Cycles: the Standard view transform (the photos'
    colours), enough transparent bounces for Cycles and enough samples for EEVEE's dithered transparency"""

    bl_idname = "milo.prepare_splat_render"
    bl_label = "Prepare Scene for Splats"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        scene = context.scene
        for obj in scene.objects:  # the material reads these attributes; a broken one would render silently
            if gaussian_object.is_gaussian_object(obj) or obj.get("milo_gaussians"):
                try:
                    gaussian_object.check_gaussian_object(obj, values=True)
                except MiloError as exc:
                    self.report({"ERROR"}, f"{exc.message} ({exc.hint})")
                    return {"CANCELLED"}
        changed = []
        if scene.view_settings.view_transform != "Standard":
            changed.append(f"view transform {scene.view_settings.view_transform} -> Standard")
            scene.view_settings.view_transform, scene.view_settings.look = "Standard", "None"
        if scene.cycles.transparent_max_bounces < SPLAT_TRANSPARENT_BOUNCES:
            changed.append(f"Cycles transparent bounces {scene.cycles.transparent_max_bounces} -> "
                           f"{SPLAT_TRANSPARENT_BOUNCES}")
            scene.cycles.transparent_max_bounces = SPLAT_TRANSPARENT_BOUNCES
            scene.cycles.max_bounces = max(scene.cycles.max_bounces, SPLAT_TRANSPARENT_BOUNCES)
        if scene.eevee.taa_render_samples < SPLAT_EEVEE_SAMPLES:
            changed.append(f"EEVEE render samples {scene.eevee.taa_render_samples} -> {SPLAT_EEVEE_SAMPLES}")
            scene.eevee.taa_render_samples = SPLAT_EEVEE_SAMPLES
        self.report({"INFO"}, "; ".join(changed) if changed else "the scene was already set up for splats")
        return {"FINISHED"}
