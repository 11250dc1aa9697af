"""Training benchmark on the generated synthetic scene: time per iteration, peak memory, held-out PSNR."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from milo_backend.bench import markdown_table, peak_memory, section_header
from milo_backend.config import TrainConfig
from milo_backend.data.synthetic import make_synthetic_scene
from milo_backend.evaluate import evaluate_run
from milo_backend.events import NullReporter
from milo_backend.train import train


def bench_train(device: str = "cpu", iterations: int = 1000, size: int = 96, views: int = 32) -> str:
    """Gaussians only (mesh in the loop off: its cost is measured by the mesh-loop benchmark)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scene = make_synthetic_scene(Path(tmp) / "scene", n_views=views, size=size)
        rep = NullReporter()
        cfg = TrainConfig(iterations=iterations, device=device, preset="verylowres", mesh=False, extract_mesh=False)
        t0 = time.perf_counter()
        train(scene, Path(tmp) / "run", cfg, rep)
        seconds = time.perf_counter() - t0
        metrics = evaluate_run(Path(tmp) / "run", NullReporter(), device=device)
        final = rep.of("progress")[-1]
        load = os.getloadavg()[0]
        rows.append({"scene": f"synthetic {views} views {size}px (transforms.json)", "iterations": iterations,
                     "s/iter": seconds / iterations, "total s": seconds,
                     **peak_memory(device),
                     "Gaussians": final.get("gaussians"), "held-out PSNR": metrics["psnr"],
                     "held-out SSIM": metrics["ssim"], "load avg": f"{load:.1f}"})
    cmd = f"milo-backend bench train --device {device}"
    return section_header("Training (Gaussians only)", cmd, device) + markdown_table(rows)
