"""Preferences buttons: "Set up backend" (private venv + PyTorch + the bundled backend wheel) and
"Check backend" (runs `doctor`). Both are jobs like a reconstruction: progress, log, cancel."""

import json
import sys

import bpy

from .. import addon
from ..core.backend import bundled_backend_wheel, detect_nvidia_gpu, doctor_command, setup_steps
from ..core.job import Job, Step
from .job_operator import JobOperator


class _BackendJob(JobOperator):
    def status_props(self, context):
        return context.window_manager.milo_backend_job

    def job_done(self, context, job: Job) -> None:
        addon.preferences(context).doctor_report = json.dumps(job.state.outputs)
        torch = job.state.outputs.get("torch", "?")
        gpus = ", ".join(g.get("name", "?") for g in job.state.outputs.get("gpus", [])) or "no GPU"
        self.report({"INFO"}, f"Backend ready: torch {torch}, {gpus}")


class MILO_OT_setup_backend(_BackendJob, bpy.types.Operator):
    """Create a private Python environment for the backend and install PyTorch (CUDA build when an NVIDIA
    GPU is present) and the MILo backend into it (downloads about 1-3 GB)"""

    bl_idname = "milo.setup_backend"
    bl_label = "Set up Backend"
    job_kind = "setup"

    def make_job(self, context, log_path) -> Job:
        steps = setup_steps(sys.executable, addon.managed_venv(), bundled_backend_wheel(addon.EXTENSION_DIR),
                            detect_nvidia_gpu())
        # minutes of downloads: a cancel must stop pip at once, there is no checkpoint to wait for
        return Job(steps, log_path=log_path, cancel_grace_s=5.0)

    def job_done(self, context, job: Job) -> None:
        prefs = addon.preferences(context)
        if prefs.backend_python.strip():
            self.report({"WARNING"}, "The new environment is used once 'Backend Python' is cleared")
        super().job_done(context, job)


class MILO_OT_check_backend(_BackendJob, bpy.types.Operator):
    """Run the backend's self-check: Python, PyTorch, CUDA, GPUs and their memory"""

    bl_idname = "milo.check_backend"
    bl_label = "Check Backend"
    job_kind = "doctor"

    def make_job(self, context, log_path) -> Job:
        return Job([Step(doctor_command(addon.backend_python(context)), "Checking the backend")],
                   log_path=log_path)
