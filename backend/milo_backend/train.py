"""The training loop. It reads like the schedule table of the method notes (section 1); every piece of
maths it calls lives in its own module.
"""
from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from milo_backend import losses
from milo_backend.atomic import write_json
from milo_backend.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from milo_backend.config import MIN_GAUSSIANS_PER_VIEW_PIXEL, SMALLER_PRESET, TrainConfig
from milo_backend.data.camera import Camera, camera_extent
from milo_backend.data.dataset import Dataset, load_dataset
from milo_backend.data.images import ImageCache, training_image
from milo_backend.data.transforms import MIN_TRIANGULATED_POINTS, triangulate_known_poses
from milo_backend.device import select_device
from milo_backend.errors import Cancelled, MiloError
from milo_backend.events import Reporter
from milo_backend.gaussians import densify
from milo_backend.gaussians.filter3d import compute_filter_3d
from milo_backend.gaussians.importance import fallback_scores, gather_weight_stats, scores_from_stats
from milo_backend.gaussians.init import init_from_points, init_random, random_start_count, sparse_depth_range
from milo_backend.gaussians.model import GaussianModel
from milo_backend.gaussians.optim import LearningRates, make_optimizers, set_position_lr
from milo_backend.gaussians.ply import write_ply
from milo_backend.run_folder import RunFolder, locked_run_folder
from milo_backend.appearance import decoupled_photometric_loss, make_appearance
from milo_backend.depth_prior import LAMBDA_DEPTH_ORDER, DepthPrior, depth_order_loss
from milo_backend.extract import final_mesh
from milo_backend.mesh_phase import MeshPhase
from milo_backend.previews import colorize_depth, normals_image, save_loss_curve, save_panel, to_uint8
from milo_backend.render import Splats, render


@dataclass
class RunState:
    """What a checkpoint holds besides the model: enough to continue bit-for-bit in order."""

    iteration: int = 0
    order: list[int] = field(default_factory=list)  # remaining camera indices of the current epoch
    history: list[dict] = field(default_factory=list)  # one record per logged step (loss curve)


class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks every iteration (checkpoint, then exit)."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (library use): no handler, no flag
                pass
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def prepare_output(out: Path, resume: bool) -> None:
    """Refuse to silently overwrite a previous run; `--resume` continues it."""
    if resume:
        if latest_checkpoint(out) is None and not RunFolder(out).gaussians.exists():
            raise MiloError(f"nothing to resume in {out}", hint="run train without --resume", path=out)
        if latest_checkpoint(out) is None:  # a finished run whose checkpoints were deleted
            raise MiloError(f"{out} holds a finished run but no checkpoint (checkpoints/ is gone): there is "
                            "nothing to resume from, and its gaussians.ply is kept as it is",
                            hint="`extract` rebuilds the mesh from gaussians.ply; to train again, choose "
                                 "another output folder", path=out)
        return
    if latest_checkpoint(out) is not None or RunFolder(out).gaussians.exists():
        raise MiloError(f"{out} already holds a training run",
                        hint="add --resume to continue it, or choose another output folder", path=out)
    out.mkdir(parents=True, exist_ok=True)


def initial_model(dataset: Dataset, out: Path, cfg: TrainConfig, reporter: Reporter, device,
                  max_gaussians: int) -> GaussianModel:
    """Gaussians at the SfM points; for posed inputs without points (NeRF), at points triangulated with
    the known poses. With fewer than MIN_TRIANGULATED_POINTS of them (synthetic or textureless scenes),
    random points inside the region the cameras see, between the depths the few points found (if any),
    plus those points."""
    points, colors = dataset.points, dataset.point_colors
    if points is None and dataset.kind == "transforms":
        reporter.stage("triangulate", "Triangulating points with the known camera poses")
        points, colors = triangulate_known_poses(dataset, out, reporter, min_points=1) or (None, None)
    if points is not None and len(points) >= MIN_TRIANGULATED_POINTS:
        reporter.log(f"initialising {len(points)} Gaussians from the sparse point cloud")
        return init_from_points(torch.as_tensor(points, dtype=torch.float32).to(device),
                                torch.as_tensor(colors, dtype=torch.float32).to(device))
    cams = dataset.train_cameras
    found = 0 if points is None else len(points)
    depth_range = sparse_depth_range(points, cams) if found else None
    n = random_start_count(cams, min(cfg.init_points, max_gaussians))
    reporter.warning(f"only {found} sparse points: starting from {n} random Gaussians inside the cameras' view"
                     + (f" at depths {depth_range[0]:.3g}-{depth_range[1]:.3g} (where the points are)"
                        if depth_range else ""),
                     hint="a COLMAP model or photos (SfM) give a better start")
    # seen by half of the cameras: the region they all look at, not floaters just in front of one
    return init_random(cams, n, np.random.default_rng(cfg.seed), min_views=max(2, len(cams) // 2),
                       depth_range=depth_range, seed_points=points if found else None,
                       seed_colors=colors if found else None, device=device)


def train(data: str | Path, out: str | Path, cfg: TrainConfig, reporter: Reporter, resume: bool = False) -> dict:
    out = Path(out)
    if resume and not out.is_dir():
        prepare_output(out, resume)  # refuses, without creating the folder
    with locked_run_folder(out):  # a second job into the same folder is refused, even one started now
        prepare_output(out, resume)
        return _train_in(data, out, cfg, reporter, resume)


def _train_in(data, out: Path, cfg: TrainConfig, reporter: Reporter, resume: bool) -> dict:
    run = RunFolder(out)
    reporter.attach_log(run.log)
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    reporter.stage("load", f"Loading {data}")
    dataset = load_dataset(data, out, reporter, eval_split=cfg.eval_split, max_size=cfg.max_size)
    cams = dataset.train_cameras
    if len(cams) < 2:
        raise MiloError(f"only {len(cams)} training image(s) in {data}", hint="training needs at least 2 views")
    write_json(run.cameras, {"cameras": [c.to_json() for c in dataset.cameras],
                                      "extent": camera_extent(cams)})
    reporter.artifact("cameras", run.cameras)
    write_json(run.config, cfg.to_json())
    try:
        return _train(dataset, out, cfg, reporter, device, resume)
    except torch.OutOfMemoryError as exc:
        smaller = SMALLER_PRESET.get(cfg.preset)
        hint = (f"use --preset {smaller}" if smaller else "use a smaller --max-size") + \
            " (or --max-size to train on smaller images); then --resume continues from the last checkpoint"
        saved = latest_checkpoint(out)
        raise MiloError(f"the GPU ran out of memory with preset {cfg.preset!r}" +
                        (f"; the run was saved in {saved}" if saved else ""), hint=hint) from exc


def _train(dataset: Dataset, out: Path, cfg: TrainConfig, reporter: Reporter, device, resume: bool) -> dict:
    cams = dataset.train_cameras
    sched = cfg.schedule
    extent = camera_extent(cams)
    # Decision: no more Gaussians than 1/16 of the observed pixels (the preset's cap otherwise): trained
    # 3DGS scenes end near 1/40 (e.g. 5M Gaussians for 200M pixels), more cannot be constrained by the
    # photos, and small CPU runs would otherwise densify without bound.
    max_gaussians = min(cfg.budgets["max_gaussians"], sum(c.width * c.height for c in cams) // 16)
    min_gaussians = min(max_gaussians, int(MIN_GAUSSIANS_PER_VIEW_PIXEL * max(c.width * c.height for c in cams)))
    images = ImageCache()
    background = torch.ones(3, device=device) if cfg.white_background else torch.zeros(3, device=device)
    state = RunState()
    prior = DepthPrior(cfg.depth_prior, device) if cfg.depth_prior else None  # a missing file fails here

    rates = LearningRates().scaled(cfg.lr_scale)
    if resume and latest_checkpoint(out) is not None:
        ckpt = load_checkpoint(out)
        model = GaussianModel.from_state_dict(ckpt["model"], device)
        make_optimizers(model, extent, rates)
        for k, opt in model.optimizers.items():
            opt.load_state_dict(ckpt["model"]["optimizers"][k])
        state = RunState(**ckpt["run"])
        stats = densify.DensifyStats.from_state_dict(ckpt["densify"], device) if ckpt.get("densify") else None
        torch.set_rng_state(ckpt["torch_rng"])
        random.setstate(ckpt["py_rng"])
        reporter.log(f"resuming at iteration {state.iteration}")
    else:
        model = initial_model(dataset, out, cfg, reporter, device, max_gaussians)
        make_optimizers(model, extent, rates)
        stats = None
    if stats is None:
        stats = densify.DensifyStats.empty(len(model), device)
    def train_cameras(it: int) -> list[Camera]:
        """The cameras at the resolution trained at iteration `it` (half, then full)."""
        return cams if it >= sched.full_resolution_from else [c.downscaled(2) for c in cams]

    def update_filter() -> None:
        # Decision: the filter is the finest sampling rate the scene is ever rendered at (full
        # resolution), also during the half-resolution phase. Computing it at the training resolution
        # halves it at the switch, which fades every small Gaussian at once (opacity x sqrt(det ratio)).
        model.state["filter_3d"] = compute_filter_3d(model.params["means"].detach(), cams)

    update_filter()

    def save(reason: str = "") -> Path:
        path = save_checkpoint(out, {
            "model": model.state_dict(), "run": vars(state), "densify": stats.state_dict(),
            "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(), "config": cfg.to_json(),
            "mesh": mesh.state_dict(), "appearance": appearance.state_dict() if appearance else None})
        reporter.artifact("checkpoint", path)
        return path

    def render_at(camera: Camera, with_stats: bool = False, splats: Splats | None = None):
        return render(model.splats() if splats is None else splats, camera, sh_degree=model.active_sh_degree,
                      background=background, backend=cfg.renderer, with_stats=with_stats)

    def render_stats(camera: Camera):
        with torch.no_grad():
            return render_at(camera, with_stats=True)

    # mesh in the loop (mesh_phase.py) and the optional appearance network (appearance.py)
    mesh = MeshPhase(model, cams, render_at, extent=extent, max_pivots=cfg.budgets["max_pivots"], schedule=sched,
                     scene=cfg.scene, reporter=reporter, seed=cfg.seed)
    appearance, appearance_opt = make_appearance(len(cams), device) if cfg.decoupled_appearance else (None, None)
    if state.iteration:  # resumed from `ckpt`
        mesh.load_state_dict(ckpt.get("mesh") or {"started_at": None})
        if appearance and ckpt.get("appearance"):
            appearance.load_state_dict(ckpt["appearance"])

    n_checkpoints = max(1, cfg.iterations // cfg.checkpoint_every) if cfg.checkpoint_every else 10
    ckpt_every = max(1, cfg.iterations // n_checkpoints)
    preview_every = cfg.preview_every or max(1, cfg.iterations // 10)
    reporter.stage("train", f"Training {cfg.iterations} iterations on {device.type}")
    last_emit = 0.0
    whole = True  # the model and run state describe a whole iteration (not mid-step, not mid-densify)
    with StopFlag() as flag:
        try:
            while state.iteration < cfg.iterations:
                if flag.stop:
                    path = save()
                    raise Cancelled(str(path.resolve()))
                it = state.iteration + 1
                if not state.order:
                    state.order = random.sample(range(len(cams)), len(cams))
                view = state.order.pop()
                cam = train_cameras(it)[view]
                gt = training_image(images, cam, background)

                model.active_sh_degree = sched.sh_degree(it, model.max_sh_degree)
                set_position_lr(model, it, sched.position_lr_decay_steps, extent, rates)

                # the per-Gaussian statistics feed the "blurry" split of the densification window
                splats = model.splats()  # shared by the render and the flatness term
                out_r = render_at(cam, with_stats=it <= sched.densify_until, splats=splats)
                out_r.means2d.retain_grad()
                if appearance is None:
                    photo = losses.photometric_loss(out_r.color, gt, cfg.lambda_ssim)
                else:
                    photo = decoupled_photometric_loss(out_r.color, appearance(out_r.color, view), gt, cfg.lambda_ssim)
                loss = photo
                if it >= sched.depth_normal_from:
                    loss = loss + cfg.lambda_depth_normal * losses.depth_normal_loss(
                        out_r.normals, out_r.depth_median, out_r.depth_expected, cam)
                    if cfg.lambda_flat:
                        loss = loss + cfg.lambda_flat * losses.flatness_loss(splats.scales, extent)
                    if prior is not None:
                        loss = loss + LAMBDA_DEPTH_ORDER * depth_order_loss(out_r.depth_expected, prior.order(cam, gt),
                                                                            extent)
                if cfg.mesh and it >= sched.mesh_from and mesh.started_at is None:
                    mesh.start(it)
                if mesh.active:
                    loss = loss + mesh.loss(cam, out_r.depth_median)[0]
                if not torch.isfinite(loss):
                    good = latest_checkpoint(out)
                    raise MiloError(f"training diverged: the loss became {loss.item()} at iteration {it}",
                                    hint=(f"the last good checkpoint ({good}) is kept: resume with --resume, or "
                                          "restart with a lower --max-size") if good else
                                    "restart with different settings (e.g. a lower --max-size)")
                loss.backward()
                whole = False
                if it <= sched.densify_until:
                    densify.accumulate(stats, out_r, cam)
                for opt in model.optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                mesh.after_step(it)
                if appearance_opt is not None:
                    appearance_opt.step()
                    appearance_opt.zero_grad(set_to_none=True)
                state.iteration = it

                # -- schedule events (section 1 of the method notes) --------------------------------
                changed = False
                if sched.is_densify_step(it):
                    densify.densify_and_prune(model, stats, extent, grad_threshold=cfg.densify_grad_threshold,
                                              prune_opacity=cfg.prune_opacity,
                                              max_gaussians=max_gaussians)
                    changed = True
                if sched.is_aggressive_clone_step(it):
                    w = gather_weight_stats(render_stats, train_cameras(it), len(model))
                    densify.aggressive_clone(model, w.weight_sum, w.pixels_dominated,
                                             max_gaussians=max_gaussians)
                    changed = True
                if it == sched.depth_reinit_at:
                    densify.depth_reinit(model, train_cameras(it), lambda c: training_image(images, c, background),
                                         render_stats, n_points=min(len(model), max_gaussians))
                    make_optimizers(model, extent, rates)
                    changed = True
                if it == sched.simplify_at:
                    simplify_by_importance(model, render_stats, train_cameras(it), cfg.scene, min_gaussians,
                                           keep_fraction=cfg.simplify_keep_fraction)
                    make_optimizers(model, extent, rates)  # as the published code: fresh Adam after simplification
                    changed = True
                if it == sched.simplify2_at:  # drop the bottom 1% of importance
                    simplify_by_importance(model, render_stats, train_cameras(it), cfg.scene, min_gaussians,
                                           keep_mass=0.99)
                    changed = True
                if changed:
                    stats = densify.DensifyStats.empty(len(model), device)
                if changed or it % sched.filter_3d_every == 0:
                    update_filter()
                whole = True

                # -- reporting ------------------------------------------------------------------------
                now = time.monotonic()
                if now - last_emit > 0.2 or it == cfg.iterations:
                    last_emit = now
                    psnr = float(losses.psnr(out_r.color.detach(), gt))
                    record = {"step": it, "loss": float(loss.detach()), "psnr": psnr, "gaussians": len(model)}
                    state.history.append(record)
                    reporter.progress("train", it, cfg.iterations, loss=record["loss"], psnr=psnr,
                                      gaussians=len(model))
                if it % preview_every == 0 or it == cfg.iterations:
                    reporter.artifact("preview", write_preview(out, it, cams[0], render_at, images, background))
                if it % ckpt_every == 0 and it != cfg.iterations:
                    save()
        except torch.OutOfMemoryError:
            if whole:  # save the run as it was before the failed step; --resume continues from it
                out_r = loss = splats = None  # let the failed step's tensors go first
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                save()
            raise

    save()
    run = RunFolder(out)
    ply = write_ply(model, run.gaussians)
    reporter.artifact("gaussians", ply)
    curve = save_loss_curve(run.loss_curve, state.history)
    if curve:
        reporter.artifact("loss_curve", curve)
    outputs = {"gaussians": str(ply.resolve()), "cameras": str(run.cameras.resolve()),
               "log": str(run.log.resolve())}
    if cfg.extract_mesh:
        outputs.update(final_mesh(mesh, out, lambda c: training_image(images, c, background), sched,
                                  remove_unseen=cfg.remove_unseen, keep_fragments=cfg.keep_fragments,
                                  seed=cfg.seed, reporter=reporter))
    return outputs


def simplify_by_importance(model: GaussianModel, render_stats, cameras: list[Camera], scene: str, min_keep: int,
                           **rule) -> int:
    """One simplification (`rule`: keep_fraction or keep_mass) on importance scores over `cameras`,
    keeping at least `min_keep` Gaussians. Returns how many were removed."""
    stats = gather_weight_stats(render_stats, cameras, len(model))
    return densify.simplify(model, scores_from_stats(stats, scene), min_keep=min_keep,
                            fallback=fallback_scores(stats), **rule)


def write_preview(out: Path, it: int, camera: Camera, render_at, images: ImageCache, background) -> Path:
    """Photo | render | depth | normals of the first training view."""
    with torch.no_grad():
        r = render_at(camera)
    tiles = [to_uint8(training_image(images, camera, background)), to_uint8(r.color), colorize_depth(r.depth_median),
             normals_image(r.normals)]
    return save_panel(RunFolder(out).preview(it), tiles)
