"""`milo-backend bench suite`: every scene of the robustness suite (`suite_scenes.py`), trained with the
default CPU settings from known poses and from the photos alone (SfM), mesh in the loop, scored against
the ground truth inside each scene's crop box.

Columns: held-out PSNR (the run's own held-out views) and its worst view, F-score at 1% and 0.5% of the ground truth's
bbox diagonal, Chamfer, mesh vertices inside the crop box, the Gaussian count over the run, seconds.
Runs from the photos live in the SfM frame: their mesh is mapped into the ground truth's frame by the
similarity that best aligns their camera centres with the true ones (Umeyama) before scoring.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from milo_backend.atomic import write_json
from milo_backend.bench import markdown_table, section_header, shared_data
from milo_backend.bench.suite_scenes import SCENES, VIEWS, SIZE, make_suite_scene, suite_cameras
from milo_backend.config import TrainConfig
from milo_backend.data.poses import pose_key, umeyama
from milo_backend.errors import MiloError
from milo_backend.evaluate import evaluate_run, read_cameras
from milo_backend.events import NullReporter
from milo_backend.mesh_io import read_mesh
from milo_backend.mesh_metrics import mesh_metrics, read_crop
from milo_backend.train import train

ITERATIONS = 1500   # the default CPU run length of the benchmarks (the bunny bench's)
SOURCES = ("poses", "photos")


def alignment_to_truth(run: Path, true_cameras: list) -> np.ndarray:
    """4x4 similarity taking the run's world frame to that of `true_cameras` (identity for known poses,
    up to rounding): least squares on the camera centres matched by image name."""
    truth = {pose_key(c.name): c.center for c in true_cameras}
    cams = [c for c in read_cameras(run / "cameras.json") if pose_key(c.name) in truth]
    if len(cams) < 3:
        raise MiloError(f"only {len(cams)} cameras of {run} match the scene's", hint="SfM registered too few photos")
    s, R, t = umeyama(np.stack([c.center for c in cams]), np.stack([truth[pose_key(c.name)] for c in cams]))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = s * R, t
    return T


def gaussian_counts(events: list[dict], points: int = 6) -> str:
    """The Gaussian count at `points` evenly spaced moments of training (start ... end), e.g. '13k 67k 15k'."""
    progress = [e for e in events if e["event"] == "progress" and e["stage"] == "train" and "gaussians" in e]
    if not progress:
        return "-"
    picks = [progress[round(i * (len(progress) - 1) / (points - 1))]["gaussians"] for i in range(points)]
    return " ".join(f"{n / 1000:.1f}k" for n in picks)


def run_row(scene_dir: Path, scene_name: str, source: str, out: Path, device: str, iterations: int) -> dict:
    """Train one scene from one source and score it; a failure becomes a row that says why."""
    if out.exists():
        shutil.rmtree(out)
    reporter = NullReporter()
    data = scene_dir if source == "poses" else scene_dir / "images"
    cfg = TrainConfig(iterations=iterations, device=device, preset="verylowres", eval_split=True)
    row = {"scene": scene_name, "source": "known poses" if source == "poses" else "photos (SfM)"}
    wall = time.perf_counter()
    try:
        train(data, out, cfg, reporter)
    except MiloError as exc:
        return {**row, "seconds": time.perf_counter() - wall, "note": f"failed: {exc.message}"}  # one table line
    wall = time.perf_counter() - wall
    images = evaluate_run(out, NullReporter(), device=device)
    verts, faces = read_mesh(out / "mesh.ply")
    T = alignment_to_truth(out, suite_cameras(SCENES[scene_name]))
    verts = verts @ T[:3, :3].T + T[:3, 3]
    gt_v, gt_f = read_mesh(scene_dir / "ground_truth.obj")
    crop = read_crop(scene_dir / "crop.json")
    m1 = mesh_metrics(verts, faces, gt_v, gt_f, threshold=0.01, crop=crop)
    m05 = mesh_metrics(verts, faces, gt_v, gt_f, threshold=0.005, crop=crop)
    return {**row, "held-out PSNR": images["psnr"], "worst view": min(v["psnr"] for v in images["per_view"]),
            "F@1%": m1["fscore"], "F@0.5%": m05["fscore"],
            "Chamfer %": 100 * m1["chamfer"], "precision / recall @1%": f"{m1['precision']:.2f} / {m1['recall']:.2f}",
            "object vertices": f"{m1['vertices_in_box']:,}", "Gaussians over the run": gaussian_counts(reporter.events),
            "seconds": wall, "note": ""}


def bench_suite(device: str = "cpu", iterations: int = ITERATIONS, scenes: list[str] | None = None,
                sources: tuple[str, ...] = SOURCES, workdir: str | Path | None = None,
                run_missing: bool = True) -> str:
    """The suite's table. `run_missing=False` only reports the rows already finished in `workdir`
    (the others say "not run"), e.g. to write the table of an interrupted suite."""
    torch.set_num_threads(min(2, torch.get_num_threads()) if device == "cpu" else torch.get_num_threads())
    scenes = scenes or list(SCENES)
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_suite_"))
    rows, start = [], time.perf_counter()
    scene_dirs = {name: make_suite_scene(name, work / "scenes" / name, bunny=shared_data("meshes", "bunny.obj"))
                  for name in scenes}
    render_s = time.perf_counter() - start
    for source in sources:  # every scene from known poses first: the more telling half if time runs out
        for name in scenes:
            # a finished row is kept in the work folder: an interrupted suite resumes where it stopped
            done = work / "runs" / f"{name}_{source}.row.json"
            settings = {"iterations": iterations, "device": device}
            row = json.loads(done.read_text(encoding="utf-8")) if done.exists() else None
            if row is None or row.pop("settings", None) != settings:
                if run_missing:
                    row = run_row(scene_dirs[name], name, source, work / "runs" / f"{name}_{source}", device,
                                  iterations)
                    write_json(done, {**row, "settings": settings})
                else:
                    row = {"scene": name, "source": "known poses" if source == "poses" else "photos (SfM)",
                           "note": "not run"}
            rows.append(row)
            print(rows[-1], flush=True)
    runs_s = sum(r.get("seconds", 0.0) for r in rows)
    load = os.getloadavg()
    cmd = f"milo-backend bench suite --device {device}"
    md = section_header("Robustness: the scene suite", cmd, device)
    md += (f"Five Cycles scenes ({VIEWS} views of {SIZE}x{SIZE} px, every 8th held out; "
           "`backend/milo_backend/bench/suite_scenes.py`): " + "; ".join(
               f"**{s.name}**: {s.description}" for s in SCENES.values() if s.name in scenes) +
           f". Each trained with the defaults of a CPU run ({iterations} iterations, preset verylowres, mesh "
           "in the loop) from the known poses and from the photos alone. Mesh scores against the ground truth "
           "inside the scene's crop box (the objects' box; where there is a ground it starts 2% of the diagonal "
           "above it), in % of the objects' bbox diagonal; runs from photos are first aligned by their cameras. "
           "Gaussians over the run: the count at 0, 20, 40, 60, 80 and 100% of training. Worst view: the "
           "lowest held-out view's PSNR; one Gaussian in front of a camera can veil a whole view, and single "
           "runs vary by up to 2 dB with the seed (BENCHMARKS.md, \"The suite, read\"). "
           f"Targets (issue 12): held-out PSNR >= 25 dB, F@1% >= 0.85, Chamfer <= 0.5%. The runs below took "
           f"{runs_s / 60:.0f} min on {os.cpu_count()} cores (rendering the scenes with Cycles: ~7 min, cached "
           f"in the work folder; {render_s / 60:.1f} min this time); load average at the end "
           f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.\n\n")
    md += markdown_table(rows, ["scene", "source", "held-out PSNR", "worst view", "F@1%", "F@0.5%", "Chamfer %",
                                "precision / recall @1%", "object vertices", "Gaussians over the run", "seconds",
                                "note"])
    return md


if __name__ == "__main__":  # python -m milo_backend.bench.suite [workdir] [scene,...] [poses,photos] [--report-only]
    import sys

    from milo_backend.bench import write_section

    argv = [a for a in sys.argv[1:] if a != "--report-only"]
    wd = argv[0] if len(argv) > 0 else None
    sc = argv[1].split(",") if len(argv) > 1 else None
    so = tuple(argv[2].split(",")) if len(argv) > 2 else SOURCES
    text = bench_suite(workdir=wd, scenes=sc, sources=so, run_missing="--report-only" not in sys.argv)
    print(text)
    write_section("suite", text, Path(__file__).resolve().parents[3] / "BENCHMARKS.md")
