"""Mesh visibility on the CPU: the torch z-buffer (`visible_faces`) against ray casting with Embree
(`embreex`) and Open3D's RaycastingScene, on the meshes of `bench mesh`'s step (100k and 1M pivots,
512x512 view, 2 threads). Writes the "ray-casting" section of BENCHMARKS.md.

    python -m tools.bench_ray_casting        # measures the libraries that are installed

Training changes the mesh at every iteration, so a ray caster pays its BVH build every time: both
"build + cast" (one view of a new mesh, what training does) and "cast again" (another view of the same
mesh, what a static mesh seen from many views costs) are timed. Face ids are compared pixel by pixel.
Neither library is a dependency: `pip install embreex open3d` to measure them (Open3D also needs the
system's libusb-1.0).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from milo_backend.bench import markdown_table, section_header, write_section
from milo_backend.bench.mesh import STEP_PIVOTS, THREADS, step_mesh
from milo_backend.mesh.raster_torch import visible_faces
from milo_backend.mesh.view_space import project, world_to_view


def _rays(camera) -> np.ndarray:
    """(H*W,3) float32 view-space directions through the pixel centres, z = 1 (the hit distance is depth)."""
    ys, xs = np.meshgrid(np.arange(camera.height) + 0.5, np.arange(camera.width) + 0.5, indexing="ij")
    return np.stack([(xs - camera.cx) / camera.fx, (ys - camera.cy) / camera.fy, np.ones_like(xs)],
                    -1).reshape(-1, 3).astype(np.float32)


def torch_zbuffer(v_cam, faces, camera):
    uv = project(v_cam, camera)
    ids = visible_faces(uv, v_cam[:, 2], faces, camera.height, camera.width)
    return lambda: ids, ids


def embree(v_cam, faces, camera):
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(scene, v_cam.numpy().astype(np.float32), faces.numpy().astype(np.int32))
    d = _rays(camera)
    o = np.zeros_like(d)

    def cast():
        return torch.from_numpy(scene.run(o, d, output=1)["primID"].astype(np.int64)).reshape(camera.height,
                                                                                             camera.width)
    return cast, cast()


def open3d(v_cam, faces, camera):
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v_cam.numpy().astype(np.float32)),
                        o3d.core.Tensor(faces.numpy().astype(np.uint32)))
    d = _rays(camera)
    rays = o3d.core.Tensor(np.concatenate([np.zeros_like(d), d], 1))

    def cast():
        ids = scene.cast_rays(rays, nthreads=THREADS)["primitive_ids"].numpy().astype(np.int64)
        ids[ids == np.iinfo(np.uint32).max] = -1
        return torch.from_numpy(ids).reshape(camera.height, camera.width)
    return cast, cast()


CASTERS = {"torch z-buffer": (torch_zbuffer, None), "Embree (embreex)": (embree, "embreex"),
           "Open3D RaycastingScene": (open3d, "open3d")}


def _version(module: str | None) -> str:
    if module is None:
        return f"torch {torch.__version__}"
    import importlib
    from importlib import metadata
    for dist in (module, f"{module}-cpu"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{module} {getattr(importlib.import_module(module), '__version__', '?')}"


def bench_ray_casting(repeats: int = 3) -> str:
    torch.set_num_threads(THREADS)
    rows = []
    for n in STEP_PIVOTS:
        verts, faces, camera = step_mesh(n)
        v_cam = world_to_view(verts, camera)
        reference = None
        for name, (make, module) in CASTERS.items():
            try:
                make(v_cam[:10], faces[:0], camera)  # import and warm up
            except ImportError:
                rows.append({"pivots": f"{n:,}", "faces in view": f"{len(faces):,}", "method": name,
                             "build + cast ms": "not installed", "cast again ms": "-", "same face id": "-"})
                continue
            first, again = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                cast, ids = make(v_cam, faces, camera)
                t1 = time.perf_counter()
                cast()
                again.append(time.perf_counter() - t1)
                first.append(t1 - t0)
            reference = ids if reference is None else reference
            rows.append({"pivots": f"{n:,}", "faces in view": f"{len(faces):,}", "method": name,
                         "version": _version(module), "build + cast ms": 1000 * min(first),
                         "cast again ms": 1000 * min(again) if module else "-",
                         "same face id": f"{(ids == reference).float().mean().item():.5f}"})
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (section_header("Mesh visibility: z-buffer against ray casting", "python -m tools.bench_ray_casting",
                           "cpu")
            + f"Meshes of `bench mesh`'s step, one 512x512 view, {THREADS} threads, best of {repeats}; load "
              f"average at the end {load}. Build + cast: a new mesh, what every training iteration needs; "
              "cast again: another view of the same mesh; same face id: share of pixels that see the face "
              "the torch z-buffer sees.\n\n" + markdown_table(rows))


def main() -> None:
    md = bench_ray_casting()
    write_section("ray-casting", md, Path(__file__).resolve().parents[1] / "BENCHMARKS.md")
    print(md)


if __name__ == "__main__":
    sys.exit(main())
