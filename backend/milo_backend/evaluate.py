"""Rendering a trained run from given cameras, and image metrics on held-out views."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from milo_backend import losses
from milo_backend.atomic import atomic_path, write_json
from milo_backend.config import read_run_config
from milo_backend.data.camera import Camera
from milo_backend.device import select_device
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter, Reporter
from milo_backend.gaussians.model import GaussianModel
from milo_backend.gaussians.ply import read_ply, write_ply
from milo_backend.previews import to_uint8
from milo_backend.render import render
from milo_backend.run_folder import RunFolder


def read_cameras(path: str | Path) -> list[Camera]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data["cameras"] if isinstance(data, dict) else data
        return [Camera.from_json(c) for c in items]
    except FileNotFoundError:
        raise MiloError(f"camera file not found: {path}", hint="pass the cameras.json written by train",
                        path=path) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise MiloError(f"{path} is not a cameras.json file ({exc})",
                        hint="use the cameras.json written by train (a list of cameras with name, width, "
                             "height, fx, fy, cx, cy, world_to_cam)", path=path) from None


def gaussians_path(source: str | Path) -> Path:
    source = Path(source)
    ply = RunFolder(source).gaussians if source.is_dir() else source
    if not ply.exists():
        raise MiloError(f"no Gaussians at {ply}", hint="pass a finished training run folder or a 3DGS .ply file",
                        path=ply)
    return ply


def load_gaussians(source, reporter: Reporter | None = None, device: torch.device | str = "cpu") -> GaussianModel:
    """The Gaussians of a run folder or of a PLY file. A run's damaged gaussians.ply is rebuilt from the
    run's last checkpoint (a finished run's last checkpoint is its final state), with a warning."""
    from milo_backend.checkpoint import checkpoint_model, latest_checkpoint, load_checkpoint

    ply = gaussians_path(source)
    try:
        return read_ply(ply, device)
    except MiloError as exc:
        run = Path(source)
        if not run.is_dir() or latest_checkpoint(run) is None:
            raise
        ckpt = load_checkpoint(run)
        write_ply(checkpoint_model(ckpt), ply)
        it, total = ckpt["run"]["iteration"], ckpt.get("config", {}).get("iterations")
        (reporter or NullReporter()).warning(
            f"{ply} could not be read ({exc.message}); it was rebuilt from the run's checkpoint "
            f"(iteration {it}{f' of {total}' if total else ''})",
            hint="nothing to do if the run had finished; otherwise continue it with train --resume")
        return read_ply(ply, device)


def load_splats(source, device: torch.device, reporter: Reporter | None = None):
    """Gaussians of a run folder or PLY as renderer input (3D filter already baked into the PLY)."""
    model = load_gaussians(source, reporter)
    splats = model.splats(with_filter=False)
    sh_degree = round(splats.sh.shape[1] ** 0.5) - 1
    return type(splats)(*(t.detach().to(device) for t in splats)), sh_degree


def render_cameras(source, cameras_file, out_dir, reporter: Reporter, device: str = "auto",
                   renderer: str = "auto", white_background: bool = False) -> list[Path]:
    """Render every camera of `cameras_file` into `out_dir/<name>.png`."""
    dev = select_device(device)
    splats, sh_degree = load_splats(source, dev, reporter)
    cameras = read_cameras(cameras_file)
    bg = torch.full((3,), 1.0 if white_background else 0.0, device=dev)
    out_dir = Path(out_dir)
    reporter.stage("render", f"Rendering {len(cameras)} views")
    paths = []
    for i, cam in enumerate(cameras):
        with torch.no_grad():
            img = render(splats, cam, sh_degree=sh_degree, background=bg, backend=renderer).color
        path = out_dir / (Path(cam.name).stem + ".png")
        with atomic_path(path) as tmp:
            Image.fromarray(to_uint8(img)).save(tmp, format="PNG")
        paths.append(path)
        reporter.progress("render", i + 1, len(cameras))
    return paths


def evaluate_run(run: str | Path, reporter: Reporter, device: str = "auto") -> dict:
    """PSNR / SSIM of the run's held-out views (cameras with split "test"); writes `run/eval.json`."""
    from milo_backend.data.images import ImageCache, training_image

    run = Path(run)
    folder = RunFolder(run)
    dev = select_device(device)
    cameras = [c for c in read_cameras(folder.cameras) if c.split == "test"]
    if not cameras:
        raise MiloError(f"the run in {run} has no held-out views",
                        hint="train with --eval (every 8th image held out) or a dataset with a test split",
                        path=folder.cameras)
    config = read_run_config(folder.config)
    bg = torch.full((3,), 1.0 if config.white_background else 0.0, device=dev)
    splats, sh_degree = load_splats(run, dev, reporter)
    images = ImageCache()
    reporter.stage("eval", f"Evaluating {len(cameras)} held-out views")
    per_view = []
    for i, cam in enumerate(cameras):
        with torch.no_grad():
            img = render(splats, cam, sh_degree=sh_degree, background=bg).color.clamp(0, 1)
            gt = training_image(images, cam, bg)
            per_view.append({"name": cam.name, "psnr": float(losses.psnr(img, gt)),
                             "ssim": float(losses.ssim(img, gt))})
        reporter.progress("eval", i + 1, len(cameras))
    metrics = {"views": len(per_view),
               "psnr": sum(v["psnr"] for v in per_view) / len(per_view),
               "ssim": sum(v["ssim"] for v in per_view) / len(per_view), "per_view": per_view}
    if folder.mesh.is_file():  # the mesh's own evidence: held-out points, mesh-only views, roughness
        from milo_backend.mesh_quality import evaluate_mesh_quality
        extent = float(json.loads(folder.cameras.read_text(encoding="utf-8"))["extent"])
        mesh = evaluate_mesh_quality(run, cameras, extent, metrics["psnr"],
                                     lambda c: training_image(images, c, bg).cpu(), reporter)
        metrics["mesh"] = {k: v for k, v in mesh.items() if k != "pictures"}
    write_json(folder.eval, metrics)
    reporter.artifact("eval", folder.eval)
    return metrics
