"""Operators: each a thin layer over `core` (and `scene_import` for building objects)."""

import bpy

from .backend_setup import MILO_OT_check_backend, MILO_OT_setup_backend
from .bind import MILO_OT_bind, MILO_OT_remove_lost_splats, MILO_OT_unbind
from .export import MILO_OT_export_gaussians, menu_export
from .importer import MILO_OT_flip_up_axis, MILO_OT_import_result, menu_import
from .job_operator import MILO_OT_cancel, MILO_OT_open_log
from .reconstruct import MILO_OT_reconstruct
from .render_splats import MILO_OT_prepare_splat_render, MILO_OT_render_splats

CLASSES = (MILO_OT_reconstruct, MILO_OT_cancel, MILO_OT_open_log, MILO_OT_import_result, MILO_OT_flip_up_axis,
           MILO_OT_setup_backend, MILO_OT_check_backend, MILO_OT_bind, MILO_OT_unbind, MILO_OT_remove_lost_splats,
           MILO_OT_export_gaussians, MILO_OT_render_splats, MILO_OT_prepare_splat_render)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
