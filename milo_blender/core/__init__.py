"""bpy-free core of the extension: maths and I/O that run (and are tested) outside Blender.

Modules depend only on the standard library and numpy (Blender ships numpy, not scipy or torch); import them
directly, e.g. `from milo_blender.core.binding import bind, deform`. The job runner, backend set-up and PLY
readers may also use `plyfile` and the torch-free parts of `milo_backend` (errors, events, splat_ply, config,
data.camera), which travel inside the extension as wheels.
"""
