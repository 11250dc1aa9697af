"""One way to run a backend job from an operator, shared by reconstruct, set-up and check.

Interactive: the operator is modal; a 0.1 s timer steps the job (`Job.poll`) on Blender's main thread,
copies its state into a window-manager property group and redraws; ESC or the Cancel button stop it.
Background mode (and tests, where timers never fire): `execute` polls the same job in a blocking loop.
Either way the end goes through `_finish`, which reports and calls the subclass's `job_done`.
"""

import bpy

from milo_backend.errors import MiloError

from .. import addon
from ..core import job as jobs
from ..core.display import metrics_text, progress_text
from ..core.job import Job
from ..core.protocol import CANCELLED, DONE


def sync_status(props, job: Job) -> None:
    """Job state -> the property group the panels draw."""
    s = job.state
    props.status = s.status
    props.progress = s.fraction
    props.progress_text = progress_text(s)
    props.metrics = metrics_text(s)
    props.message = s.message
    props.hint = s.hint
    if s.preview:
        props.preview_path = s.preview


def redraw_all(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "PREFERENCES"}:
                area.tag_redraw()


def report_user_error(op, props, exc: MiloError) -> set[str]:
    props.status, props.message, props.hint = "failed", exc.message, exc.hint
    op.report({"ERROR"}, f"{exc.message}. {exc.hint}" if exc.hint else exc.message)
    return {"CANCELLED"}


class JobOperator:
    """Mixin for bpy.types.Operator. Subclasses set `job_kind` and implement `make_job` and `job_done`."""

    job_kind = "reconstruct"
    _timer = None

    # -- to implement --------------------------------------------------------------------------
    def status_props(self, context):
        return context.window_manager.milo_job

    def make_job(self, context, log_path) -> Job:
        raise NotImplementedError

    def job_done(self, context, job: Job) -> None:
        """Called once after a successful job (e.g. import the result); may raise MiloError."""

    # -- driving ---------------------------------------------------------------------------------
    def _start(self, context) -> Job | None:
        props = self.status_props(context)
        if jobs.running(self.job_kind):
            self.report({"ERROR"}, f"A {self.job_kind} job is already running: cancel it first")
            return None
        try:
            log_path = addon.new_log_path(self.job_kind)
            job = self.make_job(context, log_path)
        except MiloError as exc:
            report_user_error(self, props, exc)
            return None
        props.log_path = str(log_path)
        props.preview_path = ""
        jobs.start(self.job_kind, job)
        sync_status(props, job)
        return job

    def execute(self, context):
        job = self._start(context)
        if job is None:
            return {"CANCELLED"}
        props = self.status_props(context)
        job.wait(interval=0.05, on_events=lambda _events: sync_status(props, job))
        return self._finish(context, job)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        job = self._start(context)
        if job is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = jobs.get(self.job_kind)
        if job is None:
            return self._stop_timer(context, {"CANCELLED"})
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
        if event.type == "TIMER":
            if job.poll() or job.finished:
                sync_status(self.status_props(context), job)
                redraw_all(context)
        if job.finished:
            return self._stop_timer(context, self._finish(context, job))
        return {"PASS_THROUGH"}

    def _stop_timer(self, context, result: set[str]) -> set[str]:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        return result

    def _finish(self, context, job: Job) -> set[str]:
        props = self.status_props(context)
        sync_status(props, job)
        s = job.state
        for warning in s.warnings:
            self.report({"WARNING"}, warning)
        if s.status == DONE:
            try:
                self.job_done(context, job)
            except MiloError as exc:
                return report_user_error(self, props, exc)
            return {"FINISHED"}
        if s.status == CANCELLED:
            self.report({"WARNING"}, f"Stopped: {s.message}. {s.hint}")
            return {"CANCELLED"}
        self.report({"ERROR"}, f"{s.message}. {s.hint}" if s.hint else s.message)
        return {"CANCELLED"}


class MILO_OT_cancel(bpy.types.Operator):
    """Stop the running job; a reconstruction saves a checkpoint first, which Resume continues"""

    bl_idname = "milo.cancel"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    kind: bpy.props.StringProperty(default="reconstruct")

    def execute(self, context):
        job = jobs.running(self.kind)
        if job is None:
            self.report({"INFO"}, "Nothing is running")
            return {"CANCELLED"}
        job.cancel()
        return {"FINISHED"}


class MILO_OT_open_log(bpy.types.Operator):
    """Open the log of the last job with the system's text viewer"""

    bl_idname = "milo.open_log"
    bl_label = "Open Log"
    bl_options = {"INTERNAL"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")

    def execute(self, context):
        if not self.filepath:
            self.report({"ERROR"}, "No log yet: run a job first")
            return {"CANCELLED"}
        return bpy.ops.wm.path_open(filepath=self.filepath)
