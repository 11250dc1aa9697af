"""Settings of a reconstruction (saved with the .blend, per scene), the binding of splats to a mesh (per Gaussian
object, saved) and the live status of jobs (window manager: never saved)."""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .core.backend import BASE_ITERATIONS, DEVICES, PRESETS, SCENES
from .core.display import QUALITY_ITERATIONS

SCENE_HELP = {"outdoor": "Unbounded scene with a background", "indoor": "Bounded scene, e.g. a room or an object"}
PRESET_LABELS = {"verylowres": "Very low", "lowres": "Low", "default": "Default", "highres": "High",
                 "veryhighres": "Very high"}


class MILO_PG_settings(bpy.types.PropertyGroup):
    source: StringProperty(name="Photos", subtype="DIR_PATH",
                           description="Folder of photos, or an existing COLMAP / transforms.json dataset")
    output: StringProperty(name="Output", subtype="DIR_PATH",
                           description="Folder for the result (Gaussians, mesh, cameras, checkpoints, log)")
    preset: EnumProperty(name="Preset", default="default",
                         items=[(p, PRESET_LABELS.get(p, p), f"Backend preset '{p}': mesh resolution and memory")
                                for p in PRESETS])
    scene: EnumProperty(name="Scene", default="outdoor",
                        items=[(s, s.title(), SCENE_HELP.get(s, "")) for s in sorted(SCENES, reverse=True)])
    quality: EnumProperty(name="Quality", default="FULL",
                          items=[(k, k.title(), f"{v:,} iterations") for k, v in QUALITY_ITERATIONS.items()]
                          + [("CUSTOM", "Custom", "Choose the number of iterations")])
    iterations: IntProperty(name="Iterations", default=BASE_ITERATIONS, min=10, soft_max=30_000)
    device: EnumProperty(name="Device", default="auto",
                         items=[(d, d.upper() if d != "auto" else "Auto", "") for d in DEVICES])
    run_on: EnumProperty(name="Run on", default="LOCAL",
                         items=[("LOCAL", "This computer", "Train here, in a backend process of this computer"),
                                ("RAY", "Ray cluster", "Train on a Ray cluster (a workstation or cloud GPU): the photos "
                                                       "are sent there and the results come back into Output")])
    ray_address: StringProperty(name="Address", default="ray://127.0.0.1:10001",
                                description="The cluster's Ray Client address, ray://HOST:PORT (port 10001 unless "
                                            "the cluster chose another)")
    max_size: IntProperty(name="Max image size", default=0, min=0, subtype="PIXEL",
                          description="Longest image side used for training (0: the backend's default)")
    import_cameras: BoolProperty(name="Import cameras", default=True,
                                 description="Also create Blender cameras at the photos' poses")
    flip_up: BoolProperty(name="Flip up axis", default=False,
                          description="Turn the result upside down on import (when the photos were not upright)")
    bind_splats: BoolProperty(name="Bind splats to mesh", default=True,
                              description="On import, bind the Gaussians to the mesh so that they follow it")
    render_output: StringProperty(name="Render output", subtype="DIR_PATH",
                                  description="Folder for the images of Render Splats (frame_0001.png, ...)")

    def iteration_budget(self) -> int:
        return self.iterations if self.quality == "CUSTOM" else QUALITY_ITERATIONS[self.quality]


class MILO_PG_job(bpy.types.PropertyGroup):
    status: StringProperty()        # '' (never ran), running, cancelling, done, failed, cancelled
    progress: FloatProperty(min=0.0, max=1.0)
    progress_text: StringProperty()
    metrics: StringProperty()
    message: StringProperty()
    hint: StringProperty()
    log_path: StringProperty(subtype="FILE_PATH")
    preview_path: StringProperty(subtype="FILE_PATH")
    output: StringProperty(subtype="DIR_PATH")


def _is_mesh(_self, obj) -> bool:
    return obj.type == "MESH"


def _refollow(self, context) -> None:
    """An option changed: show its effect at once (the handlers only react to mesh changes)."""
    from . import splat_binding
    obj = self.id_data
    if self.follow and self.mesh is not None:
        splat_binding.follow_mesh(obj, context.evaluated_depsgraph_get())


class MILO_PG_binding(bpy.types.PropertyGroup):
    """Per Gaussian object: the mesh its splats follow (the binding itself is stored on its mesh data)."""
    mesh: PointerProperty(name="Bound mesh", type=bpy.types.Object, poll=_is_mesh,
                          description="The mesh the splats follow (set by Bind)")
    follow: BoolProperty(name="Follow mesh", default=True, update=_refollow,
                         description="Move the splats with the mesh live (frame changes, edits, posing)")
    scale_with_stretch: BoolProperty(name="Stretch with mesh", default=True, update=_refollow,
                                     description="Scale each splat as its triangle stretches or shrinks")
    status: StringProperty(name="Status", description="What happened to the binding (lost faces, broken)")
    rebind_needed: BoolProperty(name="Rebind needed")
    n_lost: IntProperty(name="Lost splats", min=0)


CLASSES = (MILO_PG_settings, MILO_PG_job, MILO_PG_binding)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.milo = bpy.props.PointerProperty(type=MILO_PG_settings)
    bpy.types.Object.milo_binding = bpy.props.PointerProperty(type=MILO_PG_binding)
    bpy.types.WindowManager.milo_job = bpy.props.PointerProperty(type=MILO_PG_job)
    bpy.types.WindowManager.milo_backend_job = bpy.props.PointerProperty(type=MILO_PG_job)
    bpy.types.WindowManager.milo_render_job = bpy.props.PointerProperty(type=MILO_PG_job)


def unregister() -> None:
    del bpy.types.WindowManager.milo_render_job
    del bpy.types.WindowManager.milo_backend_job
    del bpy.types.WindowManager.milo_job
    del bpy.types.Scene.milo
    del bpy.types.Object.milo_binding
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
