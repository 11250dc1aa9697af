"""Splats rendered by Blender's own engines against the backend's render of the same camera:
`python -m tools.bench_splat_render RUN [RUN ...] [--size 320] [--engines BLENDER_EEVEE,CYCLES] [--samples 32]
[--views 1] [--no-write]`.

Each run folder (a finished `train`) is imported with the extension registered from this source tree (the mesh
hidden from the render), rendered from its held-out cameras (training cameras if it has none) at `--size` px on
the longest side, with the Standard view transform over a black world, and compared with the backend's torch
render of the same camera at SH degree 0 (what the Blender material shows) and at the run's full degree. Seconds
per frame are the wall time of `bpy.ops.render.render` (shader compilation included). Writes the
"splats-in-blender" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def render_run(bpy, run: Path, size: int, engine: str, samples: int, views: int,
               pictures: Path | None = None) -> list[dict]:
    import torch
    from PIL import Image
    from milo_backend.evaluate import load_splats, read_cameras
    from milo_backend.losses import psnr, ssim
    from milo_backend.render import render

    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    assert bpy.ops.milo.import_result(directory=str(run)) == {"FINISHED"}
    scene = bpy.context.scene
    gauss = next(o for o in scene.objects if o.get("milo_gaussians"))
    for obj in scene.objects:
        if obj.type == "MESH" and obj is not gauss:
            obj.hide_render = True
    scene.render.engine = engine
    assert bpy.ops.milo.prepare_splat_render() == {"FINISHED"}  # Standard view transform, bounces, samples
    scene.render.film_transparent = False
    scene.world = bpy.data.worlds.new("black")
    background = scene.world.node_tree.nodes.get("Background") if scene.world.node_tree else None
    if background is not None:
        background.inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
    if engine == "CYCLES":
        scene.cycles.samples, scene.cycles.device, scene.cycles.use_denoising = samples, "CPU", False
    else:
        scene.eevee.taa_render_samples = samples
    cameras = read_cameras(run / "cameras.json")
    chosen = ([c for c in cameras if c.split == "test"] or cameras)[:views]
    splats, full_degree = load_splats(run, "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cam in chosen:
            s = size / max(cam.width, cam.height)
            w, h = max(1, round(cam.width * s)), max(1, round(cam.height * s))
            small = cam.scaled(w, h)
            scene.camera = bpy.data.objects[cam.name]
            scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
            scene.render.filepath = os.path.join(tmp, "frame.png")
            start = time.perf_counter()
            bpy.ops.render.render(write_still=True)
            seconds = time.perf_counter() - start
            img = torch.from_numpy(np.asarray(Image.open(scene.render.filepath).convert("RGB")).astype(np.float32) / 255)
            row = {"scene": run.name, "splats": f"{splats.means.shape[0]:,}", "view": cam.name, "size": f"{w}x{h}",
                   "engine": engine, "samples": samples, "seconds": seconds}
            with torch.no_grad():
                for label, degree in (("degree 0", 0), ("full SH", full_degree)):
                    ref = render(splats, small, sh_degree=degree, background=torch.zeros(3),
                                 backend="torch").color.clamp(0, 1)
                    row[f"PSNR vs backend ({label})"] = float(psnr(img, ref))
                    row[f"SSIM ({label})"] = float(ssim(img, ref))
                    if pictures is not None and degree == 0:  # backend | Blender | 4x difference
                        strip = torch.cat([ref, img, (4 * (img - ref).abs()).clamp(0, 1)], dim=1)
                        pictures.mkdir(parents=True, exist_ok=True)
                        name = f"splats_{run.name}_{engine.lower()}.png"
                        Image.fromarray((strip.numpy() * 255).round().astype(np.uint8)).save(pictures / name)
                        row["picture"] = f"[strip](benchmarks/{name})"
            rows.append(row)
            print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--engines", default="BLENDER_EEVEE,CYCLES")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--pictures", type=Path, help="folder for backend | Blender | difference strips")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import bpy
    import milo_blender
    from tools.bench_common import publish

    bpy.ops.wm.read_homefile(use_empty=True)
    milo_blender.register()
    try:
        rows = [row for run in args.runs for engine in args.engines.split(",")
                for row in render_run(bpy, run.resolve(), args.size, engine, args.samples, args.views,
                                      args.pictures)]
    finally:
        milo_blender.unregister()
    columns = ["scene", "splats", "view", "size", "engine", "samples", "seconds", "PSNR vs backend (degree 0)",
               "SSIM (degree 0)", "PSNR vs backend (full SH)", "SSIM (full SH)", "picture"]
    publish("splats-in-blender", "Splats in Blender's own renders against the backend render",
            "tools.bench_splat_render", argv, f"Blender {bpy.app.version_string} (bpy module, headless, CPU). "
            "Each run's held-out camera, Standard view transform, black world, the mesh hidden; the backend "
            "renders the same Gaussians from the same camera (torch, CPU). Seconds: one F12 render, shader "
            "compilation included.", rows, columns, not args.no_write)


if __name__ == "__main__":
    main(sys.argv[1:])
