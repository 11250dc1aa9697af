"""The training loop. It reads like the schedule table of the method notes (section 1); every piece of
maths it calls lives in its own module.
"""
from __future__ import annotations

import contextlib
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from milo_backend import gpu_kernels, losses
from milo_backend.atomic import write_json
from milo_backend.checkpoint import (checkpoint_mesh_state, checkpoint_model, latest_checkpoint, load_checkpoint,
                                     save_checkpoint)
from milo_backend.config import MIN_GAUSSIANS_PER_VIEW_PIXEL, SMALLER_PRESET, TrainConfig
from milo_backend.data.camera import Camera, camera_extent
from milo_backend.data.dataset import Dataset, load_dataset
from milo_backend.data.images import ImageCache, training_image
from milo_backend.data.plane_sweep import plane_sweep_points
from milo_backend.data.transforms import MIN_TRIANGULATED_POINTS, triangulate_known_poses
from milo_backend.device import select_device
from milo_backend.errors import Cancelled, MiloError
from milo_backend.events import Reporter
from milo_backend.gaussians import densify
from milo_backend.gaussians.filter3d import compute_filter_3d
from milo_backend.gaussians.importance import fallback_scores, gather_weight_stats, scores_from_stats
from milo_backend.gaussians.init import (init_from_points, init_random, random_start_count, sparse_depth_range,
                                        view_depth_range, view_focus_depth)
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
    run = RunFolder(out)
    if resume:
        if not run.holds_run:
            raise MiloError(f"nothing to resume in {out}", hint="run train without --resume", path=out)
        if not run.resumable:  # a finished run whose checkpoints were deleted
            raise MiloError(f"{out} holds a finished run but no checkpoint (checkpoints/ is gone): there is "
                            "nothing to resume from, and its gaussians.ply is kept as it is",
                            hint="`extract` rebuilds the mesh from gaussians.ply; to train again, choose "
                                 "another output folder", path=out)
        return
    if run.holds_run:
        raise MiloError(f"{out} already holds a training run",
                        hint="add --resume to continue it, or choose another output folder", path=out)
    out.mkdir(parents=True, exist_ok=True)


def initial_model(dataset: Dataset, out: Path, cfg: TrainConfig, reporter: Reporter, device,
                  max_gaussians: int, images: ImageCache | None = None) -> GaussianModel:
    """Gaussians at the SfM points; for posed inputs without points (NeRF), at points triangulated with
    the known poses. With fewer than MIN_TRIANGULATED_POINTS of them (synthetic or textureless scenes),
    random points inside the region the cameras see, between the depths the few points found (if any),
    plus those points."""
    sparse = dataset.sparse
    if sparse is None and dataset.kind == "transforms":
        reporter.stage("triangulate", "Triangulating points with the known camera poses")
        sparse = triangulate_known_poses(dataset, out, reporter, min_points=1)
    if sparse is not None and len(sparse) >= MIN_TRIANGULATED_POINTS:
        sparse, scored = sparse.split_scored()
        if len(scored):  # never seen by the Gaussians: `eval` measures the mesh against them
            scored.save(RunFolder(out).scored_points)
            reporter.log(f"{len(scored)} well-measured points held out of the initialisation to score the mesh")
        reporter.log(f"initialising {len(sparse)} Gaussians from the sparse point cloud")
        return init_from_points(torch.as_tensor(sparse.xyz, dtype=torch.float32).to(device),
                                torch.as_tensor(sparse.colors, dtype=torch.float32).to(device))
    points = None if sparse is None else sparse.xyz
    colors = None if sparse is None else sparse.colors
    cams = dataset.train_cameras
    found = 0 if points is None else len(points)
    depth_range = sparse_depth_range(points, cams) if found else None
    n = random_start_count(cams, min(cfg.init_points, max_gaussians))
    dense, dense_colors = dense_start_points(cams, depth_range, n, cfg.seed,
                                             ImageCache() if images is None else images, reporter)
    seeds = [p for p in (points, dense) if p is not None and len(p)]
    seed_colors = [c for p, c in ((points, colors), (dense, dense_colors)) if p is not None and len(p)]
    reporter.warning(f"only {found} sparse points: starting from {len(dense)} plane-sweep points and "
                     f"{n - len(dense)} random Gaussians inside the cameras' view"
                     + (f" at depths {depth_range[0]:.3g}-{depth_range[1]:.3g} (where the points are)"
                        if depth_range else ""),
                     hint="a COLMAP model or photos (SfM) give a better start")
    # seen by half of the cameras: the region they all look at, not floaters just in front of one
    return init_random(cams, n - len(dense), np.random.default_rng(cfg.seed), min_views=max(2, len(cams) // 2),
                       depth_range=depth_range, seed_points=np.concatenate(seeds) if seeds else None,
                       seed_colors=np.concatenate(seed_colors) if seeds else None, device=device)


# Share of a random start that plane-sweep points may take; the rest stays random, for what stereo cannot
# see (textureless sky, surfaces seen by one photo).
DENSE_START_SHARE = 0.75
SWEEP_MAX_SIZE = 320  # longest side of the photos the sweep compares (larger ones are scaled down)


def dense_start_points(cams: list[Camera], depth_range: tuple[float, float] | None, n: int, seed: int,
                       images: ImageCache, reporter: Reporter) -> tuple[np.ndarray, np.ndarray]:
    """At most DENSE_START_SHARE * n points (and colours) where the posed photos agree on a depth
    (`plane_sweep_points`), between `depth_range` (default: `view_depth_range`). The photos are read
    through `images`, the training run's cache, so they are decoded once."""
    reporter.stage("stereo", f"Dense points from {len(cams)} posed photos (plane sweep)")
    largest = max(max(c.width, c.height) for c in cams)
    if largest > SWEEP_MAX_SIZE:  # the sweep's cost grows with the pixels; the start needs < 1 point per pixel
        cams = [c.downscaled(largest / SWEEP_MAX_SIZE) for c in cams]
    rgb, masks = [], []
    for c in cams:
        colour, alpha = images.get(c)
        rgb.append(colour)
        masks.append(None if alpha is None else alpha[..., 0] > 0.5)
    near, far = depth_range or view_depth_range(cams)
    pts, cols = plane_sweep_points(cams, rgb, near, far, view_focus_depth(cams),
                                   masks if any(m is not None for m in masks) else None,
                                   progress=lambda i, total: reporter.progress("stereo", i, total))
    limit = int(DENSE_START_SHARE * n)
    if len(pts) > limit:
        pick = np.random.default_rng(seed).choice(len(pts), limit, replace=False)
        pts, cols = pts[pick], cols[pick]
    reporter.log(f"{len(pts)} plane-sweep points for the start")
    return pts, cols


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
    if device.type == "cuda":
        gpu_kernels.announce(reporter, ("gsplat", "nvdiffrast") if cfg.renderer != "torch" else ("nvdiffrast",))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    reporter.stage("load", f"Loading {data}")
    dataset = load_dataset(data, out, reporter, eval_split=cfg.eval_split, max_size=cfg.max_size)
    cams = dataset.train_cameras
    if len(cams) < 2:
        raise MiloError(f"only {len(cams)} training image(s) in {data}", hint="training needs at least 2 views")
    write_json(run.cameras, {"cameras": [c.to_json() for c in dataset.cameras], "extent": camera_extent(cams)})
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
    run = TrainingRun(dataset, out, cfg, reporter, device)
    if resume and latest_checkpoint(out) is not None:
        run.restore(load_checkpoint(out))
    else:
        run.start(initial_model(dataset, out, cfg, reporter, device, run.max_gaussians, run.images))
    reporter.stage("train", f"Training {cfg.iterations} iterations on {device.type}")
    with StopFlag() as flag:
        while run.state.iteration < cfg.iterations:
            if flag.stop:
                raise Cancelled(str(run.save().resolve()))
            run.step(run.state.iteration + 1)
    return run.finish()


class TrainingRun:
    """One training run: the Gaussians, their optimisers and schedule state, and `step(it)`, one iteration
    of the schedule table (section 1 of the method notes): a training view's losses and update, then the
    schedule's events at that iteration. Mesh in the loop is `MeshPhase`'s (mesh_phase.py)."""

    def __init__(self, dataset: Dataset, out: Path, cfg: TrainConfig, reporter: Reporter, device):
        self.out, self.cfg, self.reporter, self.device = out, cfg, reporter, device
        self.cams = cams = dataset.train_cameras
        self.sched = cfg.schedule
        self.extent = camera_extent(cams)
        # Decision: no more Gaussians than 1/16 of the observed pixels (the preset's cap otherwise): trained
        # 3DGS scenes end near 1/40 (e.g. 5M Gaussians for 200M pixels), more cannot be constrained by the
        # photos, and small CPU runs would otherwise densify without bound.
        self.max_gaussians = min(cfg.budgets["max_gaussians"], sum(c.width * c.height for c in cams) // 16)
        self.min_gaussians = min(self.max_gaussians,
                                 int(MIN_GAUSSIANS_PER_VIEW_PIXEL * max(c.width * c.height for c in cams)))
        self.images = ImageCache()
        self.background = torch.full((3,), 1.0 if cfg.white_background else 0.0, device=device)
        self.prior = DepthPrior(cfg.depth_prior, device) if cfg.depth_prior else None  # a missing file fails here
        self.rates = LearningRates().scaled(cfg.lr_scale)
        self.state = RunState()
        self.model: GaussianModel | None = None
        self.stats: densify.DensifyStats | None = None
        self.mesh: MeshPhase | None = None
        self.appearance = self.appearance_opt = None
        n_checkpoints = max(1, cfg.iterations // cfg.checkpoint_every) if cfg.checkpoint_every else 10
        self.checkpoint_every = max(1, cfg.iterations // n_checkpoints)
        self.preview_every = cfg.preview_every or max(1, cfg.iterations // 10)
        self._last_emit = 0.0

    # -- set-up: a new run, or a checkpoint ---------------------------------------------------------
    def start(self, model: GaussianModel) -> None:
        self._attach(model)

    def restore(self, ckpt: dict) -> None:
        """Continue exactly where `ckpt` (a `save()` payload) stopped."""
        self._attach(checkpoint_model(ckpt, self.device))
        for k, opt in self.model.optimizers.items():
            opt.load_state_dict(ckpt["model"]["optimizers"][k])
        self.state = RunState(**ckpt["run"])
        if ckpt.get("densify"):
            self.stats = densify.DensifyStats.from_state_dict(ckpt["densify"], self.device)
        torch.set_rng_state(ckpt["torch_rng"])
        random.setstate(ckpt["py_rng"])
        self.mesh.load_state_dict(checkpoint_mesh_state(ckpt))
        if self.appearance and ckpt.get("appearance"):
            self.appearance.load_state_dict(ckpt["appearance"])
        self.reporter.log(f"resuming at iteration {self.state.iteration}")

    def _attach(self, model: GaussianModel) -> None:
        cfg = self.cfg
        self.model = model
        make_optimizers(model, self.extent, self.rates)
        self.stats = densify.DensifyStats.empty(len(model), self.device)
        self.update_filter()
        # mesh in the loop (mesh_phase.py) and the optional appearance network (appearance.py)
        self.mesh = MeshPhase(model, self.cams, self.render_at, extent=self.extent,
                              max_pivots=cfg.pivot_budget(self.cams),
                              schedule=self.sched, scene=cfg.scene, reporter=self.reporter, seed=cfg.seed)
        if cfg.decoupled_appearance:
            self.appearance, self.appearance_opt = make_appearance(len(self.cams), self.device)

    # -- helpers -------------------------------------------------------------------------------------
    def train_cameras(self, it: int) -> list[Camera]:
        """The cameras at the resolution trained at iteration `it` (half, then full)."""
        return self.cams if it >= self.sched.full_resolution_from else [c.downscaled(2) for c in self.cams]

    def update_filter(self) -> None:
        # Decision: the filter is the finest sampling rate the scene is ever rendered at (full
        # resolution), also during the half-resolution phase. Computing it at the training resolution
        # halves it at the switch, which fades every small Gaussian at once (opacity x sqrt(det ratio)).
        self.model.state["filter_3d"] = compute_filter_3d(self.model.params["means"].detach(), self.cams)

    def render_at(self, camera: Camera, with_stats: bool = False, splats: Splats | None = None):
        return render(self.model.splats() if splats is None else splats, camera,
                      sh_degree=self.model.active_sh_degree, background=self.background,
                      backend=self.cfg.renderer, with_stats=with_stats)

    def render_stats(self, camera: Camera):
        with torch.no_grad():
            return self.render_at(camera, with_stats=True)

    def image(self, camera: Camera) -> torch.Tensor:
        return training_image(self.images, camera, self.background)

    def save(self) -> Path:
        path = save_checkpoint(self.out, {
            "model": self.model.state_dict(), "run": vars(self.state), "densify": self.stats.state_dict(),
            "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(), "config": self.cfg.to_json(),
            "mesh": self.mesh.state_dict(),
            "appearance": self.appearance.state_dict() if self.appearance else None})
        self.reporter.artifact("checkpoint", path)
        return path

    # -- one iteration ---------------------------------------------------------------------------------
    def step(self, it: int) -> None:
        """Iteration `it`: the update on one training view, the schedule's events, reporting, checkpoints.
        Running out of memory during the update saves the run as it was before it (--resume continues)."""
        with self._saved_if_out_of_memory():
            out_r, gt, loss = self._update(it)
        self.state.iteration = it
        self._schedule_events(it)  # mid-way through one of these the run is not whole: not saved
        with self._saved_if_out_of_memory():
            self._report(it, out_r, gt, loss)

    @contextlib.contextmanager
    def _saved_if_out_of_memory(self):
        try:
            yield
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.save()
            raise

    def _update(self, it: int):
        """Losses on one training view, then one optimiser step; nothing changes before the step, so a
        failure (out of memory, NaN) leaves the run as it was."""
        cfg, sched, model, state = self.cfg, self.sched, self.model, self.state
        if not state.order:
            state.order = random.sample(range(len(self.cams)), len(self.cams))
        view = state.order.pop()
        cam = self.train_cameras(it)[view]
        gt = self.image(cam)

        model.active_sh_degree = sched.sh_degree(it, model.max_sh_degree)
        set_position_lr(model, it, sched.position_lr_decay_steps, self.extent, self.rates)

        # the per-Gaussian statistics feed the "blurry" split of the densification window
        splats = model.splats()  # shared by the render and the flatness term
        out_r = self.render_at(cam, with_stats=it <= sched.densify_until, splats=splats)
        out_r.means2d.retain_grad()
        if self.appearance is None:
            loss = losses.photometric_loss(out_r.color, gt, cfg.lambda_ssim)
        else:
            loss = decoupled_photometric_loss(out_r.color, self.appearance(out_r.color, view), gt, cfg.lambda_ssim)
        if it >= sched.depth_normal_from:
            loss = loss + cfg.lambda_depth_normal * losses.depth_normal_loss(
                out_r.normals, out_r.depth_median, out_r.depth_expected, cam)
            if cfg.lambda_flat:
                loss = loss + cfg.lambda_flat * losses.flatness_loss(splats.scales, self.extent)
            if self.prior is not None:
                loss = loss + LAMBDA_DEPTH_ORDER * depth_order_loss(out_r.depth_expected, self.prior.order(cam, gt),
                                                                    self.extent)
        if cfg.mesh and it >= sched.mesh_from and self.mesh.started_at is None:
            self.mesh.start(it)
        if self.mesh.active:
            loss = loss + self.mesh.loss(cam, out_r.depth_median)[0]
        if not torch.isfinite(loss):
            good = latest_checkpoint(self.out)
            raise MiloError(f"training diverged: the loss became {loss.item()} at iteration {it}",
                            hint=(f"the last good checkpoint ({good}) is kept: resume with --resume, or "
                                  "restart with a lower --max-size") if good else
                            "restart with different settings (e.g. a lower --max-size)")
        loss.backward()
        if it <= sched.densify_until:
            densify.accumulate(self.stats, out_r, cam)
        for opt in model.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.mesh.after_step(it)
        if self.appearance_opt is not None:
            self.appearance_opt.step()
            self.appearance_opt.zero_grad(set_to_none=True)
        return out_r, gt, loss

    def _schedule_events(self, it: int) -> None:
        """Section 1 of the method notes: densification, re-initialisation, simplifications, 3D filter."""
        cfg, sched, model = self.cfg, self.sched, self.model
        changed = False
        if sched.is_densify_step(it):
            densify.densify_and_prune(model, self.stats, self.extent, grad_threshold=cfg.densify_grad_threshold,
                                      prune_opacity=cfg.prune_opacity, max_gaussians=self.max_gaussians)
            changed = True
        if sched.is_aggressive_clone_step(it):
            w = gather_weight_stats(self.render_stats, self.train_cameras(it), len(model))
            densify.aggressive_clone(model, w.weight_sum, w.pixels_dominated, max_gaussians=self.max_gaussians)
            changed = True
        if it == sched.depth_reinit_at:
            densify.depth_reinit(model, self.train_cameras(it), self.image, self.render_stats,
                                 n_points=min(len(model), self.max_gaussians))
            make_optimizers(model, self.extent, self.rates)
            changed = True
        if it == sched.simplify_at:
            simplify_by_importance(model, self.render_stats, self.train_cameras(it), cfg.scene, self.min_gaussians,
                                   keep_fraction=cfg.simplify_keep_fraction)
            make_optimizers(model, self.extent, self.rates)  # as the published code: fresh Adam after simplification
            changed = True
        if it == sched.simplify2_at:  # drop the bottom 1% of importance
            simplify_by_importance(model, self.render_stats, self.train_cameras(it), cfg.scene, self.min_gaussians,
                                   keep_mass=0.99)
            changed = True
        if changed:
            self.stats = densify.DensifyStats.empty(len(model), self.device)
        if changed or it % sched.filter_3d_every == 0:
            self.update_filter()

    def _report(self, it: int, out_r, gt: torch.Tensor, loss: torch.Tensor) -> None:
        total = self.cfg.iterations
        now = time.monotonic()
        if now - self._last_emit > 0.2 or it == total:
            self._last_emit = now
            psnr = float(losses.psnr(out_r.color.detach(), gt))
            record = {"step": it, "loss": float(loss.detach()), "psnr": psnr, "gaussians": len(self.model)}
            self.state.history.append(record)
            self.reporter.progress("train", it, total, loss=record["loss"], psnr=psnr, gaussians=len(self.model))
        if it % self.preview_every == 0 or it == total:
            self.reporter.artifact("preview", write_preview(self.out, it, self.cams[0], self.render_at, self.images,
                                                            self.background))
        if it % self.checkpoint_every == 0 and it != total:
            self.save()

    # -- the end ---------------------------------------------------------------------------------------
    def finish(self) -> dict:
        """The last checkpoint, gaussians.ply, the loss curve and (unless disabled) the final mesh."""
        cfg, reporter = self.cfg, self.reporter
        self.save()
        run = RunFolder(self.out)
        ply = write_ply(self.model, run.gaussians)
        reporter.artifact("gaussians", ply)
        curve = save_loss_curve(run.loss_curve, self.state.history)
        if curve:
            reporter.artifact("loss_curve", curve)
        outputs = {"gaussians": str(ply.resolve()), "cameras": str(run.cameras.resolve()),
                   "log": str(run.log.resolve())}
        if cfg.extract_mesh:
            outputs.update(final_mesh(self.mesh, self.out, self.image, self.sched, remove_unseen=cfg.remove_unseen,
                                      keep_fragments=cfg.keep_fragments, seed=cfg.seed, reporter=reporter))
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
