"""Live deformation: handlers that move bound splats onto their mesh whenever it changes.

frame_change_post: after the depsgraph evaluated the new frame (armatures, shape keys, drivers...), every bound
Gaussian object that follows its mesh is updated. depsgraph_update_post: only those whose mesh was re-evaluated
(edits, sculpting, a moved bone) or whose mesh or own object moved. Writing the splats is itself a depsgraph
update of the Gaussian object's geometry, which these handlers ignore, so nothing loops.

Python timers never fire in the `bpy` module (tests, background renders): everything here runs from handlers.
"""
from __future__ import annotations

import contextlib
import time

import bpy
from bpy.app.handlers import persistent

from . import splat_binding

_suspended = 0
last_update_s = 0.0          # seconds the last handler call spent (shown in the panel, read by the benchmark)
last_update_cpu_s = 0.0      # the same in process CPU time


@contextlib.contextmanager
def suspended():
    """No live updates inside (an export steps through frames and computes the splats itself)."""
    global _suspended
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1


def update(objects, depsgraph) -> int:
    """Follow the mesh for these Gaussian objects; returns how many were rewritten."""
    global last_update_s, last_update_cpu_s
    start, start_cpu = time.perf_counter(), time.process_time()
    written = sum(splat_binding.follow_mesh(obj, depsgraph) for obj in objects)
    last_update_s, last_update_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    return written


def _following(scene) -> list:
    return [obj for obj in splat_binding.bound_objects(scene) if obj.milo_binding.follow]


@persistent
def on_frame_change(scene, depsgraph) -> None:
    if _suspended:
        return
    objects = _following(scene)
    if objects:
        update(objects, depsgraph)


@persistent
def on_depsgraph_update(scene, depsgraph) -> None:
    if _suspended:
        return
    objects = _following(scene)
    if not objects:
        return
    deformed, moved = set(), set()
    for u in depsgraph.updates:
        if isinstance(u.id, bpy.types.Object):
            pointer = u.id.original.as_pointer()
            if u.is_updated_geometry:
                deformed.add(pointer)
            if u.is_updated_transform:
                moved.add(pointer)
    changed = [obj for obj in objects if obj.as_pointer() in moved
               or (obj.milo_binding.mesh is not None and obj.milo_binding.mesh.as_pointer() in deformed | moved)]
    if changed:
        update(changed, depsgraph)


@persistent
def on_data_reloaded(*_args) -> None:
    """A file load, undo or redo replaces the data the cached bindings came from."""
    splat_binding.clear_cache()


_HANDLERS = (("frame_change_post", on_frame_change), ("depsgraph_update_post", on_depsgraph_update),
             ("load_post", on_data_reloaded), ("undo_post", on_data_reloaded), ("redo_post", on_data_reloaded))


def register() -> None:
    for name, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler not in handlers:
            handlers.append(handler)


def unregister() -> None:
    for name, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler in handlers:
            handlers.remove(handler)
    splat_binding.clear_cache()
