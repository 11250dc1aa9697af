"""The robustness scene suite: small synthetic scenes rendered with Blender's Cycles, with ground truth.

Each scene is a Blender scene built from primitives (procedural textures, a sun with cast shadows, a
world light), photographed from `VIEWS` cameras at `SIZE` px on a Fibonacci spiral around the objects,
every 8th view held out. The scenes differ in what tends to break a reconstruction:

- `ground`: an object on a large checkered ground plane, casting a shadow, under a uniform grey sky;
- `dome`: the Stanford bunny in front of a textured dome (the mesh bench's setting, rendered by Cycles);
- `thin`: a ring and rods a few pixels thick, on a textured ground;
- `two`: two objects at clearly different depths on a textured ground;
- `rgba`: an object alone, photos with a transparent background (RGBA).

Written per scene: `images/*.png`, `transforms.json` (known poses) and `ground_truth.obj` (the scored
objects, never the ground or the dome) plus `crop.json`, the box the evaluation is cropped to: the
objects' box, starting just above the ground plane where there is one (the ground is not scored).

Rendering runs Blender as a Python module (`bpy`, a test/benchmark dependency) in a child process, so
the backend never imports bpy and Blender's process state stays out of the trainer.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SIZE = 160
VIEWS = 48
TEST_EVERY = 8


@dataclass(frozen=True)
class SuiteScene:
    name: str
    description: str
    ground: str | None          # "checker" | "noise" | None
    background: str             # "sky" (uniform grey) | "dome" (textured) | "transparent"
    distance: float = 3.0       # camera distance from the look-at point
    elevation: tuple = (12.0, 65.0)
    look_at_z: float = 0.0


SCENES: dict[str, SuiteScene] = {s.name: s for s in (
    SuiteScene("ground", "object on a checkered ground plane, cast shadow, uniform grey sky", "checker", "sky",
               look_at_z=0.35),
    SuiteScene("dome", "bunny in front of a textured dome", None, "dome", elevation=(-15.0, 70.0)),
    SuiteScene("thin", "ring and rods 2-4 px thick on a textured ground", "noise", "sky", look_at_z=0.5),
    SuiteScene("two", "two objects at different depths on a textured ground", "noise", "sky", distance=3.4,
               look_at_z=0.3),
    SuiteScene("rgba", "object alone, transparent background (RGBA photos)", None, "transparent",
               elevation=(-30.0, 70.0)),
)}


def suite_cameras(scene: SuiteScene, n_views: int = VIEWS, size: int = SIZE):
    """The scene's cameras: a Fibonacci spiral between its elevations, looking at its centre."""
    from milo_backend.data.mesh_scene import sphere_cameras
    from milo_backend.data.camera import Camera

    cams = sphere_cameras(n_views, size, distance=scene.distance, elevation_deg=scene.elevation)
    shift = np.eye(4)
    shift[:3, 3] = (0.0, 0.0, scene.look_at_z)
    # moving the whole rig up keeps every camera aimed at the raised centre
    return [Camera(name=c.name, width=c.width, height=c.height, fx=c.fx, fy=c.fy, cx=c.cx, cy=c.cy,
                   world_to_cam=c.world_to_cam @ np.linalg.inv(shift)) for c in cams]


def make_suite_scene(name: str, out_dir: str | Path, bunny: str | Path | None = None, n_views: int = VIEWS,
                     size: int = SIZE, samples: int = 64, reporter=None) -> Path:
    """Render scene `name` into `out_dir` (skipped when its transforms.json exists). Returns `out_dir`."""
    from milo_backend.data.synthetic import write_posed_scene
    from milo_backend.errors import MiloError
    from milo_backend.mesh_io import read_mesh

    if name not in SCENES:
        raise MiloError(f"unknown suite scene {name!r}", hint=f"use one of: {', '.join(SCENES)}")
    out = Path(out_dir)
    if (out / "transforms.json").exists() and (out / "ground_truth.obj").exists():
        return out
    scene = SCENES[name]
    cams = suite_cameras(scene, n_views, size)
    (out / "images").mkdir(parents=True, exist_ok=True)
    job = {"scene": asdict(scene), "out": str(out.resolve()), "samples": samples,
           "bunny": str(bunny) if bunny else None,
           "cameras": [{"name": c.name, "size": size, "fov": float(2 * np.arctan(size / (2 * c.fx))),
                        "cam_to_world": c.cam_to_world.tolist()} for c in cams]}
    job_path = out / "blender_job.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    if reporter is not None:
        reporter.stage("scene", f"Rendering suite scene {name!r} with Cycles ({n_views} views)")
    proc = subprocess.run([sys.executable, "-m", "milo_backend.bench.suite_blender", str(job_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise MiloError(f"Blender could not render suite scene {name!r}: {proc.stderr.strip()[-2000:]}",
                        hint="install bpy==5.0.1 (bash run.sh test does) and check the message above")
    gt = read_mesh(out / "objects.obj")
    write_posed_scene(out, cams, _rendered_by_blender, gt, TEST_EVERY, reporter, stage="scene")
    return out


def _rendered_by_blender(camera) -> np.ndarray:
    from milo_backend.errors import MiloError
    raise MiloError(f"Blender did not write the photo {camera.name}", hint="re-run; the scene folder is incomplete")

