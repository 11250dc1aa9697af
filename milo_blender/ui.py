"""The MILo tab of the 3D View sidebar: reconstruct, progress with the latest preview, import."""
from __future__ import annotations

from pathlib import Path

import bpy
import bpy.utils.previews

from . import follow, gaussian_object, splat_binding, splat_display
from .core import job as jobs
from .core.runs import RunFolder
from .operators.reconstruct import settings_paths

_previews = None  # bpy.utils.previews collection holding the latest training preview


def preview_icon(path: str) -> int:
    """Icon id of the preview image at `path` (reloaded when the path changes)."""
    global _previews
    if not path or not Path(path).is_file():
        return 0
    if _previews is None:
        _previews = bpy.utils.previews.new()
    if path not in _previews:
        _previews.clear()
        _previews.load(path, path, "IMAGE")
    return _previews[path].icon_id


def draw_job_status(layout, props, cancel_kinds=("reconstruct",)) -> None:
    """Progress bar, metrics and the outcome of a job (shared by the panel and the preferences)."""
    if not props.status:
        return
    running = any(jobs.running(k) for k in cancel_kinds)
    box = layout.box()
    if running:
        box.progress(factor=props.progress, type="BAR", text=props.progress_text)
        if props.metrics:
            box.label(text=props.metrics)
        row = box.row()
        for kind in cancel_kinds:
            if jobs.running(kind):
                row.operator("milo.cancel", text="Cancel (Esc)", icon="CANCEL").kind = kind
    elif props.status == "failed":
        box.label(text=props.message, icon="ERROR")
        if props.hint:
            box.label(text=props.hint, icon="INFO")
    elif props.status == "cancelled":
        box.label(text=props.message or "Stopped", icon="PAUSE")
        if props.hint:
            box.label(text=props.hint, icon="INFO")
    elif props.status == "done":
        box.label(text="Finished", icon="CHECKMARK")
    if props.log_path:
        box.operator("milo.open_log", icon="TEXT").filepath = props.log_path


class MILO_PT_reconstruct(bpy.types.Panel):
    bl_label = "Reconstruct"
    bl_idname = "MILO_PT_reconstruct"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MILo"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.milo
        props = context.window_manager.milo_job
        col = layout.column()
        col.prop(settings, "source")
        col.prop(settings, "output")
        col.prop(settings, "preset")
        col.prop(settings, "scene")
        col.prop(settings, "quality")
        if settings.quality == "CUSTOM":
            col.prop(settings, "iterations")
        col.prop(settings, "device")
        col.prop(settings, "run_on")
        if settings.run_on == "RAY":
            col.prop(settings, "ray_address")
        col.prop(settings, "max_size")
        col.prop(settings, "import_cameras")
        col.prop(settings, "bind_splats")

        running = jobs.running("reconstruct") is not None
        _, output = settings_paths(settings)
        run = RunFolder(output) if settings.output.strip() else None
        row = layout.row(align=True)
        row.enabled = not running
        row.scale_y = 1.4
        if run is not None and run.resumable and not run.finished:
            row.operator("milo.reconstruct", text="Resume", icon="PLAY").resume = True
        else:
            row.operator("milo.reconstruct", icon="PLAY").resume = False
        if run is not None and run.finished:
            layout.operator("milo.import_result", icon="IMPORT").directory = str(output)

        draw_job_status(layout, props)
        icon = preview_icon(props.preview_path) if (running or props.status) else 0
        if icon:
            layout.template_icon(icon_value=icon, scale=10.0)


class MILO_PT_result(bpy.types.Panel):
    bl_label = "Result"
    bl_idname = "MILO_PT_result"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MILo"

    def draw(self, context):
        layout = self.layout
        layout.operator("milo.import_result", text="Import Result / Splats...", icon="IMPORT")
        layout.prop(context.scene.milo, "flip_up")
        layout.operator("milo.flip_up_axis", icon="FILE_REFRESH")


class MILO_PT_splats(bpy.types.Panel):
    """The active Gaussian object: its binding to a mesh, its display, export and rendering."""
    bl_label = "Splats"
    bl_idname = "MILO_PT_splats"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MILo"

    def draw(self, context):
        layout = self.layout
        obj = context.active_object
        if not gaussian_object.is_gaussian_object(obj):
            layout.label(text="Select a Gaussian splat object", icon="INFO")
            return
        props = obj.milo_binding
        box = layout.box()
        if splat_binding.is_bound(obj):
            box.label(text=f"Follows '{props.mesh.name}'" if props.mesh else "Its mesh was deleted", icon="LINKED")
            row = box.row()
            row.prop(props, "follow")
            row.prop(props, "scale_with_stretch")
            if props.status:
                box.label(text=props.status, icon="ERROR" if props.rebind_needed else "INFO")
            row = box.row()
            if props.n_lost and not props.rebind_needed:
                row.operator("milo.remove_lost_splats", icon="TRASH")
            row.operator("milo.bind", text="Rebind", icon="FILE_REFRESH")
            row.operator("milo.unbind", icon="UNLINKED")
            if props.follow and follow.last_update_s:
                box.label(text=f"Last update {1000 * follow.last_update_s:.0f} ms")
        else:
            if props.status:
                box.label(text=props.status, icon="ERROR")
            box.label(text="Select the mesh too (Ctrl+click), then:")
            box.operator("milo.bind", icon="LINKED")
        mod = obj.modifiers.get(splat_display.MODIFIER)
        if mod is not None and mod.node_group is not None and mod.node_group.name == splat_display.GROUP:
            col = layout.column(align=True)
            for name in splat_display.INPUTS:
                col.prop(mod, f'["{splat_display.input_identifier(mod, name)}"]', text=name)
        col = layout.column(align=True)
        col.operator("milo.export_gaussians", text="Export Current Frame", icon="EXPORT").frames = "CURRENT"
        col.operator("milo.export_gaussians", text="Export Frame Range", icon="SEQUENCE").frames = "RANGE"
        box = layout.box()
        box.label(text="Blender render (F12): splats with the whole scene", icon="RENDER_STILL")
        box.label(text="EEVEE / Cycles; blending is approximate")
        box.operator("milo.prepare_splat_render", icon="SCENE")
        box = layout.box()
        box.label(text="Render Splats: exact splat-only frames", icon="RENDER_ANIMATION")
        box.label(text="by the MILo backend, no other objects")
        box.prop(context.scene.milo, "render_output")
        running = jobs.running("render") is not None
        row = box.row()
        row.enabled = not running
        row.operator("milo.render_splats", icon="RENDER_ANIMATION")
        draw_job_status(layout, context.window_manager.milo_render_job, cancel_kinds=("render",))


CLASSES = (MILO_PT_reconstruct, MILO_PT_result, MILO_PT_splats)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    global _previews
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    if _previews is not None:
        bpy.utils.previews.remove(_previews)
        _previews = None
