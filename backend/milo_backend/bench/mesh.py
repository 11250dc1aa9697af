"""Mesh benchmark: Delaunay of 100k / 1M points, and the per-iteration mesh step (pivots + marching
tetrahedra, frustum cull + 512x512 rasterisation, backward of the mesh depth loss) at 100k / 1M pivots.

Every case runs in a fresh process so that its peak memory is its own. The step scene: Gaussians
scattered within +-2% of a unit sphere (flattened, random orientations), SDF = distance to the
sphere, a camera 3 units away whose view the sphere fills.
"""
from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import torch

from milo_backend.bench import markdown_table, peak_memory, section_header

DELAUNAY_CASES = [(100_000, "shull"), (100_000, "scipy"), (1_000_000, "shull")]
STEP_PIVOTS = [100_000, 1_000_000]
IMAGE = 512
THREADS = 2  # the project's benchmark convention (shared 2-core development machines)


def bench_mesh(device: str = "cpu") -> str:
    torch.set_num_threads(THREADS)
    delaunay_rows = [_in_child(_delaunay_case, n, backend) for n, backend in DELAUNAY_CASES]
    step_cases = [(n, "cpu", "torch") for n in STEP_PIVOTS]
    if device.startswith("cuda") and torch.cuda.is_available():
        from milo_backend.mesh.raster import nvdiffrast_available
        step_cases += [(n, "cuda", "torch") for n in STEP_PIVOTS]
        if nvdiffrast_available("cuda"):
            step_cases += [(n, "cuda", "nvdiffrast") for n in STEP_PIVOTS]
    step_rows = [_in_child(_step_case, n, dev, raster) for n, dev, raster in step_cases]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (section_header("Mesh extraction (pivots, Delaunay, marching tetrahedra, mesh raster)",
                           f"milo-backend bench mesh --device {device}", device)
            + f"Load average (1/5/15 min) when the run ended: {load} on {os.cpu_count()} cores "
              "(a loaded machine inflates every figure).\n\n"
            + "Delaunay of uniform random points in a cube (all tetrahedra positively oriented; "
              "peak RSS of the whole process, torch included):\n\n"
            + markdown_table(delaunay_rows)
            + f"\nPer-iteration mesh step (best of 3; {IMAGE}x{IMAGE} view; Delaunay is once per 500 "
              "iterations, shown for scale):\n\n"
            + markdown_table(step_rows))


def _in_child(fn, *args) -> dict:
    """Run fn(*args) in a fresh spawned process; its dict result gains the process's peak RSS."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measured, (fn, *args))


def _measured(fn, *args) -> dict:
    torch.set_num_threads(THREADS)
    row = fn(*args)
    row["peak RSS GB"] = peak_memory()["peak RSS GB"]
    return row


def _delaunay_case(n: int, backend: str) -> dict:
    from milo_backend.mesh.delaunay import delaunay

    pts = np.random.default_rng(0).random((n, 3)).astype(np.float32)
    t0 = time.perf_counter()
    tets = delaunay(pts, backend=backend)
    seconds = time.perf_counter() - t0
    return {"points": f"{n:,}", "backend": backend, "seconds": seconds, "tetrahedra": f"{len(tets):,}"}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_scene(n_pivots: int, device: str = "cpu"):
    """The step benchmark's scene: Gaussians (means, log scales, quats, ids; leaves that require grad)
    in a thin shell around the unit sphere, and the camera whose 512x512 view the sphere fills."""
    from milo_backend.data.camera import Camera, look_at

    g = torch.Generator().manual_seed(0)
    n = n_pivots // 9
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    means = dirs * (1.0 + 0.02 * torch.randn(n, 1, generator=g))
    log_scales = torch.log(torch.rand(n, 3, generator=g) * 0.01 + 0.002)
    log_scales[:, 2] -= 2.0
    quats = torch.randn(n, 4, generator=g)
    means, log_scales, quats = (t.to(device).requires_grad_() for t in (means, log_scales, quats))
    idx = torch.arange(n, device=device)
    cam = Camera("bench", IMAGE, IMAGE, 700.0, 700.0, IMAGE / 2, IMAGE / 2, look_at((0.4, -3.0, 0.8), (0, 0, 0)))
    return means, log_scales, quats, idx, cam


def step_mesh(n_pivots: int):
    """The step scene's mesh (no gradients) and camera: (verts, faces in view, camera)."""
    from milo_backend.mesh import cull_to_frustum, delaunay, marching_tetrahedra, pivots

    means, log_scales, quats, idx, cam = step_scene(n_pivots)
    with torch.no_grad():
        piv, radii = pivots(means, log_scales.exp(), quats, idx)
        mesh = marching_tetrahedra(piv, piv.norm(dim=1) - 1.0, delaunay(piv), radii)
        return mesh.verts, cull_to_frustum(mesh.verts, mesh.faces, cam), cam


def _step_case(n_pivots: int, device: str, raster: str, repeats: int = 3) -> dict:
    from milo_backend.losses import mesh_depth_loss
    from milo_backend.mesh import cull_to_frustum, delaunay, marching_tetrahedra, pivots, rasterize_mesh

    means, log_scales, quats, idx, cam = step_scene(n_pivots, device)
    with torch.no_grad():
        piv, _ = pivots(means, log_scales.exp(), quats, idx)
    t0 = time.perf_counter()
    tets = delaunay(piv)
    t_delaunay = time.perf_counter() - t0
    sdf = (piv.norm(dim=1) - 1.0).detach().requires_grad_()
    target = None
    best = {"mt": float("inf"), "raster": float("inf"), "backward": float("inf"), "total": float("inf")}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        piv, radii = pivots(means, log_scales.exp(), quats, idx)
        mesh = marching_tetrahedra(piv, sdf, tets, radii)
        _sync(device)
        t1 = time.perf_counter()
        faces = cull_to_frustum(mesh.verts, mesh.faces, cam)
        out = rasterize_mesh(mesh.verts, faces, cam, backend=raster)
        _sync(device)
        t2 = time.perf_counter()
        if target is None:  # a Gaussian depth map stand-in: the mesh's own depth, perturbed
            target = out.depth.detach() * 1.01
        loss = mesh_depth_loss(out.depth, target, out.mask, extent=3.0)
        loss.backward()
        _sync(device)
        t3 = time.perf_counter()
        for k, v in (("mt", t1 - t0), ("raster", t2 - t1), ("backward", t3 - t2), ("total", t3 - t0)):
            best[k] = min(best[k], v)
        for t in (means, log_scales, quats, sdf):
            t.grad = None
    return {"pivots": f"{len(piv):,}", "device": device, "raster": raster, "tetrahedra": f"{len(tets):,}",
            "mesh faces": f"{len(mesh.faces):,}", "faces in view": f"{len(faces):,}",
            "Delaunay s": t_delaunay, "pivots+MT s": best["mt"], "cull+raster s": best["raster"],
            "backward s": best["backward"], "step s": best["total"],
            "peak GPU GB": peak_memory(device)["peak GPU GB"]}
