"""Renderer benchmark: forward/backward time and peak memory of both backends on synthetic scenes.

    python -m milo_backend.bench.render [cpu|cuda]

CPU memory is the peak RSS growth of a fresh subprocess over one forward+backward render (tracemalloc does
not see torch's allocations; Linux /proc high-water mark); CUDA memory is `torch.cuda.max_memory_allocated`.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from milo_backend import cpu_kernels
from milo_backend.data.camera import Camera, look_at
from milo_backend.render import Splats, gsplat_available, render

BENCHMARKS_FILE = Path(__file__).resolve().parents[3] / "BENCHMARKS.md"
CPU_CASES = [(128, 20_000), (256, 50_000)]
CUDA_CASES = [(128, 20_000), (256, 50_000), (1080, 500_000)]


def random_scene(n: int, width: int, height: int, *, radius_px: tuple[float, float] = (1.5, 5.0),
                 sh_degree: int = 3, opacity: tuple[float, float] = (0.05, 0.95), seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Splats, Camera]:
    """`n` random anisotropic Gaussians in a cube seen by a camera 4 units away.

    Their projected radius (3 sigma) is drawn in `radius_px` for a Gaussian at the cube's centre."""
    g = torch.Generator().manual_seed(seed)
    focal = float(max(width, height))
    camera = Camera("bench", width, height, fx=focal, fy=focal, cx=width / 2, cy=height / 2,
                    world_to_cam=look_at([0.0, -4.0, 0.0], [0.0, 0.0, 0.0]))
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * 1.2
    sigma_px = torch.empty(n).uniform_(*radius_px, generator=g) / 3
    scales = (sigma_px * 4.0 / focal)[:, None] * torch.empty(n, 3).uniform_(0.4, 1.6, generator=g)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    opacities = torch.empty(n).uniform_(*opacity, generator=g)
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    splats = Splats(*(t.to(device=device, dtype=dtype) for t in (means, quats, scales, opacities, sh)))
    return splats, camera


def _leaf_splats(splats: Splats) -> Splats:
    return Splats(*(t.detach().clone().requires_grad_(True) for t in splats))


def _loss(out) -> torch.Tensor:
    """Touches every differentiable output, as training does."""
    return (out.color.sum() + out.alpha.sum() + 0.1 * out.depth_expected.sum()
            + 0.1 * out.depth_median.sum() + out.normals.sum())


def time_render(splats: Splats, camera: Camera, backend: str, repeats: int = 10,
                clock=time.perf_counter) -> dict:
    """Best-of-`repeats` forward and backward seconds of `clock` (the first call warms up)."""
    leaves = _leaf_splats(splats)
    sync = torch.cuda.synchronize if leaves.means.is_cuda else (lambda: None)
    fwd, bwd = [], []
    for i in range(repeats + 1):
        sync()
        t0 = clock()
        out = render(leaves, camera, sh_degree=3, backend=backend)
        sync()
        t1 = clock()
        _loss(out).backward()
        sync()
        t2 = clock()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return {"forward_s": min(fwd), "backward_s": min(bwd), "total_s": min(f + b for f, b in zip(fwd, bwd))}


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_rss_child(size: int, n: int, reference: bool = False) -> None:
    """Subprocess body: print the peak RSS growth (MB) of one forward+backward render over the RSS
    before it. The kernel's high-water mark is reset first (clear_refs 5), since importing torch
    already peaks higher than a small render."""
    torch.set_num_threads(2)
    splats, camera = random_scene(n, size, size)
    leaves = _leaf_splats(splats)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    with cpu_kernels.reference_code() if reference else contextlib.nullcontext():
        _loss(render(leaves, camera, sh_degree=3, backend="torch")).backward()
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_rss_growth_mb": (peak - before) / 1024, "peak_rss_mb": peak / 1024}))


def peak_rss(size: int, n: int, reference: bool = False) -> dict:
    code = f"from milo_backend.bench.render import _peak_rss_child; _peak_rss_child({size}, {n}, {reference})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_render(device: str = "cpu") -> str:
    """Measure and return the markdown section (see the module notes)."""
    from milo_backend.bench import markdown_table, section_header
    torch.set_num_threads(2)
    rows = []
    load_before = os.getloadavg()[0]
    if device == "cpu":
        compiled = cpu_kernels.available()
        for size, n in CPU_CASES:
            splats, camera = random_scene(n, size, size)
            # the two compositors one after the other on the same scene: their ratio is the figure
            for reference in (True, False) if compiled else (True,):
                with cpu_kernels.reference_code() if reference else contextlib.nullcontext():
                    t = time_render(splats, camera, "torch")
                    # CPU time of one thread hardly depends on what else runs on the machine: the stable figure
                    torch.set_num_threads(1)
                    t1 = time_render(splats, camera, "torch", clock=time.process_time)
                    torch.set_num_threads(2)
                mem = peak_rss(size, n, reference)
                rows.append({"backend": "torch (CPU), " + ("torch compositor" if reference else "compiled compositor"),
                             "image": f"{size}x{size}", "gaussians": n,
                             "forward s": t["forward_s"], "backward s": t["backward_s"],
                             "fwd+bwd s": t["total_s"], "fwd+bwd CPU s, 1 thread": t1["total_s"],
                             "speed-up, 1 thread": rows[-1]["fwd+bwd CPU s, 1 thread"] / t1["total_s"]
                             if not reference else 1.0,
                             "peak RSS growth MB": mem["peak_rss_growth_mb"], "peak RSS MB": mem["peak_rss_mb"]})
    else:
        backends = ["torch"] + (["gsplat"] if gsplat_available() else [])
        for size, n in CUDA_CASES:
            splats, camera = random_scene(n, size, size, device="cuda")
            for backend in backends:
                torch.cuda.reset_peak_memory_stats()
                t = time_render(splats, camera, backend)
                rows.append({"backend": f"{backend} (CUDA)", "image": f"{size}x{size}", "gaussians": n,
                             "forward s": t["forward_s"], "backward s": t["backward_s"],
                             "fwd+bwd s": t["total_s"], "it/s": 1.0 / t["total_s"],
                             "peak GPU MB": torch.cuda.max_memory_allocated() / 2 ** 20})
    split = gpu_time_split(*random_scene(CUDA_CASES[-1][1], CUDA_CASES[-1][0], CUDA_CASES[-1][0], device="cuda")) \
        if device != "cpu" and "gsplat" in backends else None
    md = section_header("Gaussian renderer", f"python -m milo_backend.bench.render {device}", device)
    md += ("On the CPU the renderer runs with each compositor: torch's vectorised one (the reference) and the "
           "compiled one (`csrc/composite.cpp`); the speed-up is the ratio of their 1-thread CPU seconds. "
           if device == "cpu" else "")
    md += ("Random anisotropic Gaussians (3-sigma radius 1.5-5 px at the scene centre, opacity 0.05-0.95, "
           "SH degree 3); one view; loss touches colour, alpha, both depths and normals; best of 10"
           + (". Wall-clock seconds with 2 threads (on a CPU shared with other jobs they vary several-fold "
              "between runs; 1-min load average before / after: "
              f"{load_before:.1f} / {os.getloadavg()[0]:.1f}) and, steadier, the CPU seconds of the same "
              "work on 1 thread" if device == "cpu" else "")
           + ".\n\n")
    md += markdown_table(rows)
    if split:
        md += ("\n\nWhere the GPU time of the gsplat path goes (forward + backward, CUDA kernel time from "
               "torch's profiler over 5 renders of the largest case): gsplat's own kernels against the rest "
               "(our compositor pass for the median depth and statistics, SH, normals, the loss):\n\n")
        md += markdown_table(split)
    return md


GSPLAT_KERNELS = ("projection", "isect", "rasterize_to_pixels", "gsplat")


def gpu_time_split(splats: Splats, camera: Camera, repeats: int = 5) -> list[dict]:
    """CUDA kernel milliseconds per render, gsplat's kernels against everything else."""
    from torch.profiler import ProfilerActivity, profile

    leaves = _leaf_splats(splats)
    _loss(render(leaves, camera, sh_degree=3, backend="gsplat")).backward()  # warm up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            _loss(render(leaves, camera, sh_degree=3, backend="gsplat")).backward()
        torch.cuda.synchronize()
    ours, theirs = 0.0, 0.0
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
        if any(k in event.key.lower() for k in GSPLAT_KERNELS):
            theirs += us
        else:
            ours += us
    total = max(ours + theirs, 1e-9)
    return [{"part": "gsplat's kernels", "ms per render": theirs / 1000 / repeats, "share": f"{theirs / total:.0%}"},
            {"part": "the rest (compositor pass, SH, normals, loss)", "ms per render": ours / 1000 / repeats,
             "share": f"{ours / total:.0%}"}]


def main(argv: list[str] | None = None) -> None:
    from milo_backend.bench import write_section
    argv = sys.argv[1:] if argv is None else argv
    device = argv[0] if argv else ("cuda" if torch.cuda.is_available() else "cpu")
    md = bench_render(device)
    print(md)
    # CPU and CUDA figures live in separate sections so measuring one keeps the other
    write_section("render" if device == "cpu" else "render-cuda", md, BENCHMARKS_FILE)


if __name__ == "__main__":
    main()
