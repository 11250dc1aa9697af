"""Benchmark of the gaussians/ functions at realistic sizes (1M Gaussians, SH degree 3, 50 cameras):
PLY I/O, 3D filter, kNN initialisation, optimiser-aware edits, densification and simplification.

    python -m milo_backend.bench.gaussians [--device cpu|cuda] [--n 1000000]
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from milo_backend.bench import markdown_table, section_header, write_section
from milo_backend.data.camera import Camera, look_at
from milo_backend.gaussians import ops
from milo_backend.gaussians.densify import DensifyStats, aggressive_clone, densify_and_prune, simplify
from milo_backend.gaussians.filter3d import compute_filter_3d
from milo_backend.gaussians.init import init_from_points, knn_scales, random_points_in_view
from milo_backend.gaussians.model import GaussianModel
from milo_backend.gaussians.optim import make_optimizers
from milo_backend.gaussians.ply import read_ply, write_ply

BENCHMARKS_MD = Path(__file__).resolve().parents[3] / "BENCHMARKS.md"


def ring_cameras(n: int = 50, width: int = 1920, height: int = 1080) -> list[Camera]:
    """Fox-sized photos on a ring of radius 4 around the origin."""
    return [Camera(f"c{i}", width, height, 1400.0, 1400.0, width / 2, height / 2,
                   look_at((4 * math.cos(2 * math.pi * i / n), 4 * math.sin(2 * math.pi * i / n),
                            1.0 + 0.5 * math.sin(6 * math.pi * i / n)), (0, 0, 0)))
            for i in range(n)]


def trained_model(n: int, device: str, seed: int = 0) -> GaussianModel:
    """A model with optimisers that have taken one step (so Adam moments exist for the edits)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    params = {"means": torch.randn(n, 3, generator=g), "scales": torch.randn(n, 3, generator=g) * 0.5 - 4,
              "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g),
              "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.randn(n, 15, 3, generator=g) * 0.1}
    model = GaussianModel({k: v.to(device) for k, v in params.items()})
    make_optimizers(model, 4.4)
    for p in model.params.values():
        p.grad = torch.randn_like(p) * 1e-3
    for opt in model.optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


def timed(fn, device: str) -> tuple[tuple[float, float], object]:
    """((wall seconds, CPU seconds of this process), result). CPU time is the steadier figure on a
    shared machine: it does not count time spent waiting for a core."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0, time.process_time() - c0), result


def bench_gaussians(device: str = "cpu", n: int = 1_000_000, n_cameras: int = 50, repeats: int = 3) -> str:
    torch.manual_seed(0)
    cams = ring_cameras(n_cameras)
    rows = []

    def row(what: str, seconds: tuple[float, float], note: str = "", count: int = n) -> None:
        rows.append({"operation": what, "N": f"{count:,}", "wall s": seconds[0], "CPU s": seconds[1],
                     "note": note})

    model = trained_model(n, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench gaussians.ply"
        s, _ = timed(lambda: write_ply(model, path), device)
        row("write_ply (SH3, filter baked)", s, f"{path.stat().st_size / 2**20:.0f} MiB")
        s, back = timed(lambda: read_ply(path, device), device)
        row("read_ply", s)
        assert len(back) == n
    s, f3d = timed(lambda: compute_filter_3d(model.params["means"].detach(), cams), device)
    row(f"compute_filter_3d ({n_cameras} cameras)", s)
    model.state["filter_3d"] = f3d
    pts = model.params["means"].detach().cpu().numpy()
    s, _ = timed(lambda: knn_scales(pts), "cpu")
    row("knn_scales (cKDTree, all cores)", s)
    s, _ = timed(lambda: init_from_points(model.params["means"].detach(), torch.rand(n, 3, device=device)), device)
    row("init_from_points (incl. kNN)", s)
    s, pts = timed(lambda: random_points_in_view(cams, 100_000, np.random.default_rng(0)), "cpu")
    row(f"random_points_in_view ({n_cameras} cameras, CPU)", s, count=100_000)

    # edits run on a fresh copy of the model each time (they change it); median of `repeats` runs
    # after one warm-up, as densification runs many times per training
    def on_copy(label: str, edit, note_fn=lambda result: "") -> None:
        times, result = [], None
        for _ in range(repeats + 1):
            target = copy.deepcopy(model)  # params, Adam state and state stay linked in the copy
            s, result = timed(lambda: edit(target), device)
            times.append(s)
            del target
        row(label, tuple(float(np.median([t[i] for t in times[1:]])) for i in range(2)), note_fn(result))

    def with_stats(m: GaussianModel) -> dict:
        k = len(m)
        stats = DensifyStats.empty(k, device)
        # ~8% above the gradient threshold, ~0.6% "blurry": a busy early densification step
        stats.grad_sum[:] = torch.rand(k, device=device) ** 8 * 4e-4
        stats.count[:] = 1
        stats.max_dominated_fraction[:] = torch.rand(k, device=device) ** 8 * 2.1e-4
        return densify_and_prune(m, stats, 4.4)

    def clone_some(m: GaussianModel) -> int:
        return aggressive_clone(m, torch.rand(len(m), device=device) ** 4,
                                (torch.rand(len(m), device=device) < 0.5).float())

    on_copy("ops.duplicate 10% (params + Adam moments + state)",
            lambda m: ops.duplicate(m, torch.rand(len(m), device=device) < 0.1))
    on_copy("ops.remove 10%", lambda m: ops.remove(m, torch.rand(len(m), device=device) < 0.1))
    on_copy("densify_and_prune (clone + split + prune)", with_stats,
            lambda c: ", ".join(f"{k} {v:,}" for k, v in c.items()))
    on_copy("aggressive_clone", clone_some, lambda c: f"cloned {c:,}")
    on_copy("simplify keep_fraction=0.6 (weighted sampling w/o replacement)",
            lambda m: simplify(m, torch.rand(len(m), device=device) ** 3, keep_fraction=0.6),
            lambda r: f"removed {r:,}")
    on_copy("simplify keep_mass=0.99", lambda m: simplify(m, torch.rand(len(m), device=device) ** 3,
                                                          keep_mass=0.99), lambda r: f"removed {r:,}")

    cmd = f"python -m milo_backend.bench.gaussians --device {device} --n {n}"
    load = f"load average {os.getloadavg()[0]:.1f} at the start. " if hasattr(os, "getloadavg") else ""
    return (section_header("Gaussians: I/O, 3D filter, densification, simplification", cmd, device)
            + f"{load}Edits: median of {repeats} runs on fresh copies after a warm-up; Adam moments "
              "included. CPU s = this process's CPU time (less sensitive to other jobs).\n\n"
            + markdown_table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    md = bench_gaussians(args.device, args.n)
    print(md)
    write_section(f"gaussians-{args.device.split(':')[0]}", md, args.out)


if __name__ == "__main__":
    main()
