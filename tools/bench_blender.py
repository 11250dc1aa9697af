"""Benchmark of splats following a mesh inside Blender (bpy module, the extension registered from this source tree):
`python -m tools.bench_blender [--splats N] [--subdivisions S] [--frames F] [--no-write]`.

The mesh of the numpy benchmark (`bench_binding`: a bumpy sphere of ~100k triangles for S = 91) animated by a shape
key (twisted and bent), N splats (default 500k, SH degree 3) bound to it. Per frame (scene.frame_set):
  - the frame_change_post handler: read the evaluated mesh, deform, write centres / rotations / scales into the
    Gaussian object's attributes (the cost the 100 ms target is about), and its three parts measured alone;
  - the geometry-nodes display re-evaluating with the moved splats (ellipsoids and points; frame_set evaluates
    again what its handlers changed, so its total includes the display);
  - exporting the frame (SH rotation and PLY writing) for comparison.
Writes the "blender-deform" section of BENCHMARKS.md.
"""
from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.bench_common import bench_parser, publish



def timed_calls(fn, runs: int) -> dict:
    wall, cpu = [], []
    for i in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"ms": 1000 * statistics.median(wall), "cpu ms": 1000 * statistics.median(cpu), "runs": runs}


def build_scene(bpy, n_splats: int, subdivisions: int, frames: int):
    from tools.bench_binding import bumpy, cube_mesh, splats_around, twist_and_bend
    from milo_blender.scene_import import gaussians_object

    rng = np.random.default_rng(0)
    sphere, triangles = cube_mesh(subdivisions, spherical=True)
    rest = bumpy(sphere)
    me = bpy.data.meshes.new("Body")
    me.from_pydata(rest.tolist(), [], triangles.tolist())
    body = bpy.data.objects.new("Body", me)
    bpy.context.scene.collection.objects.link(body)
    body.shape_key_add(name="Basis")
    key = body.shape_key_add(name="Twist")
    key.data.foreach_set("co", twist_and_bend(rest).astype(np.float32).ravel())
    for frame, value in ((1, 0.0), (frames, 1.0)):
        key.value = value
        key.keyframe_insert("value", frame=frame)
    means, quats, log_scales, sh_rest = splats_around(rest, triangles, n_splats, rng)
    sh = np.concatenate([rng.normal(0, 0.5, (n_splats, 1, 3)).astype(np.float32), sh_rest], axis=1)
    gauss = gaussians_object("Splats", {"means": means, "quats": quats, "log_scales": log_scales, "sh": sh,
                                        "opacity_logits": rng.normal(0, 1, n_splats)})
    bpy.context.scene.collection.objects.link(gauss)
    bpy.context.view_layer.update()
    return body, gauss, len(triangles)


def run(n_splats: int, subdivisions: int, frames: int) -> list[dict]:
    import bpy

    import milo_blender
    from milo_backend.gaussians.splat_ply import write_splat_ply
    from milo_blender import follow, gaussian_object, splat_binding, splat_display
    from milo_blender.core.splat_frames import bound_pose

    bpy.ops.wm.read_homefile(use_empty=True)
    milo_blender.register()
    try:
        scene = bpy.context.scene
        scene.frame_start, scene.frame_end = 1, frames
        body, gauss, n_triangles = build_scene(bpy, n_splats, subdivisions, frames)
        common = {"splats": n_splats, "triangles": n_triangles}
        rows = []
        start, start_cpu = time.perf_counter(), time.process_time()
        splat_binding.bind_gaussians(bpy.context, gauss, body)
        rows.append({"operation": "bind (milo.bind: read mesh, nearest triangle, store)", **common,
                     "ms": 1000 * (time.perf_counter() - start), "cpu ms": 1000 * (time.process_time() - start_cpu),
                     "runs": 1})
        for ellipsoids in (True, False):
            splat_display.set_display(gauss, ellipsoids=ellipsoids)
            handler, handler_cpu, display = [], [], []

            def frame(i):
                # The handler runs inside, and Blender evaluates again what it changed (the display).
                scene.frame_set(1 + i % frames)
                handler.append(follow.last_update_s)
                handler_cpu.append(follow.last_update_cpu_s)

            def redisplay(_i):
                gauss.data.update()                     # as after the handler: the splats' geometry changed
                t = time.perf_counter()
                bpy.context.view_layer.update()
                display.append(time.perf_counter() - t)

            total = timed_calls(frame, frames)
            timed_calls(redisplay, frames)
            if ellipsoids:
                rows.append({"operation": "frame_set: shape key + live handler + display", **common, **total})
                rows.append({"operation": "live handler (frame_change_post)", **common,
                             "ms": 1000 * statistics.median(handler), "cpu ms": 1000 * statistics.median(handler_cpu),
                             "runs": frames})
            rows.append({"operation": f"display re-evaluation ({'ellipsoids' if ellipsoids else 'points'})",
                         **common, "ms": 1000 * statistics.median(display), "cpu ms": "", "runs": frames,
                         "peak RSS MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        splat_display.set_display(gauss, ellipsoids=True)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        rig, vertices, _ = splat_binding.deformed_vertices(gauss, depsgraph)
        pose = bound_pose(rig.binding, vertices, True)
        rows.append({"operation": "  read evaluated mesh (float32 foreach_get, to splat space)", **common,
                     **timed_calls(lambda _i: splat_binding.deformed_vertices(gauss, depsgraph), frames)})
        rows.append({"operation": "  deform (stretch on)", **common,
                     **timed_calls(lambda _i: bound_pose(rig.binding, vertices, True), frames)})
        rows.append({"operation": "  write centres, rotations, scales (foreach_set)", **common,
                     **timed_calls(lambda _i: gaussian_object.write_pose(gauss.data, pose), frames)})
        with tempfile.TemporaryDirectory() as tmp:
            rows.append({"operation": "export one frame (frame_splats: SH degree 3 rotated)", **common,
                         **timed_calls(lambda _i: splat_binding.frame_splats(gauss, depsgraph), 3)})
            splats = splat_binding.frame_splats(gauss, depsgraph)
            rows.append({"operation": "  write_splat_ply", **common,
                         **timed_calls(lambda _i: write_splat_ply(Path(tmp) / "frame.ply", **splats), 3)})
        return rows
    finally:
        milo_blender.unregister()


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10, help="animated frames stepped through (medians)")
    args = parser.parse_args(argv)
    rows = run(args.splats, args.subdivisions, args.frames)
    import bpy
    publish("blender-deform", "Splats following a mesh in Blender (bpy, live handler and display)",
            "tools.bench_blender", argv,
            f"Blender {bpy.app.version_string} (bpy module, headless), numpy {np.__version__}; medians over the "
            "frames of a shape-key animation; `ms` wall clock, `cpu ms` process CPU time (the machine is shared: "
            "CPU time is what an idle machine's wall clock would show; empty where only the wall clock is "
            "measured). Target: the live handler for 500k splats <= 100 ms per frame. Display: geometry nodes, "
            "unrealised ico-sphere instances per splat carrying the Gaussian material (or points). Peak RSS: the "
            "process's peak resident memory up to that row (the scene, the binding and the display together).", rows,
            ["operation", "splats", "triangles", "ms", "cpu ms", "runs", "peak RSS MB"], write=not args.no_write)


if __name__ == "__main__":
    main()
