"""Preferences: which Python runs the backend, set-up / check buttons, and what the last check found."""

import json
import os

import bpy

from milo_backend.errors import MiloError

from . import addon
from .core.backend import BACKEND_PYTHON_ENV
from .ui import draw_job_status


class MILO_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = addon.PACKAGE

    backend_python: bpy.props.StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python interpreter of an existing environment with milo-backend installed. Empty: the "
                    "environment made by 'Set up backend'")
    doctor_report: bpy.props.StringProperty(default="", options={"HIDDEN"})

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_python")
        if os.environ.get(BACKEND_PYTHON_ENV):
            col.label(text=f"Overridden by {BACKEND_PYTHON_ENV}={os.environ[BACKEND_PYTHON_ENV]}", icon="INFO")
        try:
            col.label(text=f"Using {addon.backend_python(context)}", icon="CHECKMARK")
        except MiloError as exc:
            col.label(text=exc.message, icon="ERROR")
        row = layout.row()
        row.operator("milo.setup_backend", icon="IMPORT")
        row.operator("milo.check_backend", icon="CHECKMARK")
        draw_job_status(layout, context.window_manager.milo_backend_job, cancel_kinds=("setup", "doctor"))
        self.draw_report(layout)

    def draw_report(self, layout):
        if not self.doctor_report:
            return
        try:
            r = json.loads(self.doctor_report)
        except json.JSONDecodeError:
            return
        box = layout.box()
        box.label(text="Last check")
        grid = box.grid_flow(columns=2, even_columns=False)
        rows = [("Python", r.get("python", "?")), ("PyTorch", r.get("torch", "?")),
                ("CUDA", f"available (CUDA {r.get('torch_cuda')})" if r.get("cuda_available") else "not available")]
        for gpu in r.get("gpus", []):
            rows.append(("GPU", f"{gpu.get('name', '?')}, {gpu.get('memory_gb', '?')} GB"))
        for name in ("gsplat", "nvdiffrast"):
            status = r.get(name) or {}
            ok = status.get("compiled", status.get("import"))
            rows.append((name, "ready" if ok else "not available (the slower PyTorch renderer is used)"))
        for key, value in rows:
            grid.label(text=key)
            grid.label(text=str(value))


CLASSES = (MILO_AP_preferences,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
