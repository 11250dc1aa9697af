"""bpy.ops.milo.reconstruct: photos -> backend training -> imported result."""

from pathlib import Path

import bpy

from milo_backend.errors import MiloError

from .. import addon
from ..core.backend import TrainOptions, train_command
from ..core.job import Job, Step
from ..core.runs import check_output_folder, check_source
from ..scene_import import import_result
from .job_operator import JobOperator


def settings_paths(settings) -> tuple[Path, Path]:
    source = Path(bpy.path.abspath(settings.source)) if settings.source.strip() else Path("")
    output = Path(bpy.path.abspath(settings.output)) if settings.output.strip() else Path("")
    return source, output


def ray_address(settings) -> str:
    """The cluster to run on, or "" for this computer."""
    if settings.run_on != "RAY":
        return ""
    if not settings.ray_address.strip():
        raise MiloError("no Ray cluster address", hint="type the cluster's address (ray://HOST:10001) next to Run on, "
                                                      "or choose This computer")
    return settings.ray_address.strip()


class MILO_OT_reconstruct(JobOperator, bpy.types.Operator):
    """Reconstruct Gaussians and a mesh from the photos with the MILo backend, then import them"""

    bl_idname = "milo.reconstruct"
    bl_label = "Reconstruct"
    bl_options = {"REGISTER"}

    job_kind = "reconstruct"
    resume: bpy.props.BoolProperty(name="Resume", default=False,
                                   description="Continue the interrupted run in the output folder")
    import_result: bpy.props.BoolProperty(name="Import when done", default=True)

    def make_job(self, context, log_path) -> Job:
        settings = context.scene.milo
        source, output = settings_paths(settings)
        check_source(source)
        check_output_folder(output, self.resume)
        python = addon.backend_python(context)
        options = TrainOptions(source=source, output=output, preset=settings.preset, scene=settings.scene,
                               iterations=settings.iteration_budget(), device=settings.device,
                               max_size=settings.max_size, resume=self.resume,
                               ray_address=ray_address(settings))
        context.window_manager.milo_job.output = str(output)
        label = "Resuming" if self.resume else "Reconstructing"
        return Job([Step(train_command(python, options), label)], log_path=log_path)

    def job_done(self, context, job: Job) -> None:
        if not self.import_result:
            self.report({"INFO"}, f"Reconstruction finished in {job.state.outputs.get('gaussians', '')}")
            return
        settings = context.scene.milo
        _, output = settings_paths(settings)
        root = import_result(context, output, import_cameras=settings.import_cameras, flip_up=settings.flip_up,
                             bind=settings.bind_splats)
        self.report({"INFO"}, f"Reconstruction finished and imported as '{root.users_collection[0].name}'")
