"""MILo Blender extension: reconstruct meshes and Gaussian splats from photos, then animate the splats with the mesh.

Registration lives in the Blender-facing modules; nothing here imports bpy at module level, so that
`milo_blender.core` (pure numpy) can be imported and tested outside Blender.
"""


def _modules():
    from . import follow, operators, preferences, properties, ui
    return (properties, preferences, operators, ui, follow)


def _stop_jobs_on_load(*_args) -> None:
    from .core import job
    job.stop_all()


def register() -> None:
    import bpy

    for module in _modules():
        module.register()
    # persistent: the handler itself must survive the file load it reacts to
    bpy.app.handlers.load_pre.append(bpy.app.handlers.persistent(_stop_jobs_on_load))


def unregister() -> None:
    import bpy

    from .core import job

    job.stop_all()  # never leave a backend running without its extension
    if _stop_jobs_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_stop_jobs_on_load)
    for module in reversed(_modules()):
        module.unregister()
