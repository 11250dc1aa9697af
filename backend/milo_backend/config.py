"""Training options, presets and the schedule.

Every phase boundary of the published 18,000-iteration schedule is stored as a fraction of the iteration
budget, so `--iterations 2000` runs the same sequence of phases, just shorter (the published code keeps
its absolute iteration numbers whatever `--iterations` says). Intervals (densify every 100, Delaunay
every 500, ...) scale the same way, so each phase sees the same number of events, except that a
densification step always accumulates gradients over at least 10 views (short runs would otherwise
densify after every single image, from one view's noisy gradients), and that the depth
re-initialisation is skipped where its scaled iteration comes too early (`MIN_DEPTH_REINIT_ITERATION`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

BASE_ITERATIONS = 18_000

# The choices of the command line, the config and the Blender panel (they read them from here).
SCENES = ("indoor", "outdoor")       # importance scores: every view (indoor) or dominating views (outdoor)
DEVICES = ("auto", "cpu", "cuda")
RENDERERS = ("auto", "torch", "gsplat")
# The depth re-initialisation replaces every Gaussian by samples of the current renders, so the renders
# must have settled first. Scaled into a 1500-iteration run it comes at iteration 167, when 18% of the
# bunny bench's background pixels still render far in front of the background (2-3% from iteration ~700
# on); resampling them there froze a shell of background Gaussians around the object that the mesh then
# wrapped (Chamfer 0.76% with it, 0.54% without; BENCHMARKS.md). Schedules that would place it earlier
# than this iteration (under 9,000 iterations) skip it; the published 18k schedule keeps it at 2000.
MIN_DEPTH_REINIT_ITERATION = 1000

# Decision: the simplifications never leave fewer Gaussians than this many per pixel of one training view
# (or all there are). Their keep rules count only Gaussians that dominate some pixel; after a random start
# most Gaussians are faint layers that dominate none although together they make the image, and the rule
# then cut a 160 px scene from 67,200 to 2,312 Gaussians with no densification left to recover (held-out
# PSNR 18 dB; BENCHMARKS.md, "Why the Gaussian set collapsed"). It binds on most CPU scenes at 160 px
# (the bunny bench ended at 7,285 before, 12,800 with it: F@1% 0.921 -> 0.936, CPU time 2.5x); 1 and 2
# per pixel bought only 0.3 and 0.6 dB on the suite's ground scene for +34% and +80% time.
MIN_GAUSSIANS_PER_VIEW_PIXEL = 0.5

# Decision: the mesh has at most this many pivots per pixel of one training view (the preset's budget when
# that is smaller). A mesh finer than the photos is shaped by depth noise: the fox at 240 px used all its
# 16k Gaussians, 145k pivots for views of 32k pixels, and crumpled; with 54k pivots its mesh was smoother
# (roughness median 8.7 -> 7.2 deg; 8.5 -> 7.8 at this budget in a later pair) with half the vertices, and
# the run took 34% less time (its mesh-only PSNR varies by ~1 dB from run to run: no gain established).
# Checked at 2 per pixel on the bunny bench and the suite's `ground`: F@1% 0.95 / 0.98 -> 0.94 / 0.97,
# Chamfer 0.41% / 0.35% -> 0.40% / 0.32% (BENCHMARKS.md, "Why the surface crumples"). The suite's `dome`
# over three seeds: held-out 24.55 -> 23.97 dB, all of it one veiled view of one seed (without that seed
# 24.59 -> 24.61 dB), F@1% 0.947 -> 0.939, Chamfer 0.43% either way, 22% less time.
PIVOTS_PER_VIEW_PIXEL = 2.0

# Decision: runs shorter than the published schedule take larger steps. Adam moves a parameter by at
# most about its learning rate per step, so the rates of 3DGS/MILo, chosen for 18k-30k iterations, leave
# a 1,500-iteration CPU run far from where its images ask. The rates are multiplied by
# sqrt(18000 / iterations), at least 1 and at most MAX_SHORT_RUN_LR_SCALE (3.46 at 1,500); the position
# rate's decay keeps its shape. Measured at 1,500 iterations, 160 px (BENCHMARKS.md, "Short runs take
# larger steps"): the suite's ground scene 17.3 -> 18.6 dB held out, F@1% 0.73 -> 0.87 (the "before" is an
# earlier commit's run); Gaussians only on that scene, 17.29 -> 18.74 dB with x3; its two-object
# scene 25.5 -> 27.9 dB, F@1% 0.977 -> 0.999; the bunny bench F@1% 0.936 -> 0.954, PSNR 21.1 -> 22.4 dB;
# only the thin-rods scene's mesh lost (F@1% 0.49 -> 0.47, far from usable either way).
MAX_SHORT_RUN_LR_SCALE = 4.0


def short_run_lr_scale(iterations: int) -> float:
    """The factor on every learning rate for a run of `iterations` (1 from the published length on)."""
    return min(MAX_SHORT_RUN_LR_SCALE, max(1.0, (BASE_ITERATIONS / max(1, iterations)) ** 0.5))


# name -> (max pivots, max Gaussians). Pivot budgets are the published ones; the Gaussian cap keeps a
# preset's memory bounded (the published code has no cap; densification stops growing past it).
PRESETS: dict[str, dict] = {
    "verylowres": {"max_pivots": 270_000, "max_gaussians": 300_000},
    "lowres": {"max_pivots": 540_000, "max_gaussians": 600_000},
    "default": {"max_pivots": 5_400_000, "max_gaussians": 3_000_000},
    "highres": {"max_pivots": 9_000_000, "max_gaussians": 5_000_000},
    "veryhighres": {"max_pivots": 13_500_000, "max_gaussians": 7_500_000},
}
SMALLER_PRESET = {"veryhighres": "highres", "highres": "default", "default": "lowres",
                  "lowres": "verylowres", "verylowres": None}


@dataclass(frozen=True)
class Schedule:
    """Iteration numbers of every event, derived from the published schedule scaled to `iterations`."""

    iterations: int

    def at(self, base_iteration: int) -> int:
        """The iteration corresponding to `base_iteration` of the 18k schedule."""
        return round(base_iteration * self.iterations / BASE_ITERATIONS)

    def every(self, base_interval: int, floor: int = 1) -> int:
        """A scaled interval, at least `floor` (densification must see several views per decision)."""
        return max(floor, self.at(base_interval))

    # phase boundaries
    @property
    def densify_from(self) -> int: return self.at(500)
    @property
    def densify_until(self) -> int: return self.at(3000)
    @property
    def densify_every(self) -> int: return self.every(100, floor=10)
    @property
    def aggressive_clone_every(self) -> int: return self.every(250, floor=25)
    @property
    def depth_reinit_at(self) -> int | None:
        at = self.at(2000)
        return at if at >= MIN_DEPTH_REINIT_ITERATION else None
    @property
    def full_resolution_from(self) -> int: return self.at(3000)
    @property
    def simplify_at(self) -> int: return self.at(3000)
    @property
    def sh_increase_every(self) -> int: return self.every(1000)
    @property
    def depth_normal_from(self) -> int: return self.at(3000)
    @property
    def simplify2_at(self) -> int: return self.at(8000)
    @property
    def mesh_from(self) -> int: return self.at(8000) + 1
    @property
    def delaunay_every(self) -> int: return self.every(500)
    @property
    def sdf_reset_every(self) -> int: return self.every(500)
    @property
    def sdf_reset_until(self) -> int: return self.at(13000)
    @property
    def labels_every(self) -> int: return self.every(200)
    @property
    def filter_3d_every(self) -> int: return self.every(100)
    @property
    def position_lr_decay_steps(self) -> int: return self.every(30000)

    def is_densify_step(self, it: int) -> bool:
        return self.densify_from <= it <= self.densify_until and it % self.densify_every == 0 \
            and it != self.depth_reinit_at

    def is_aggressive_clone_step(self, it: int) -> bool:
        return self.densify_from <= it <= self.densify_until and it % self.aggressive_clone_every == 0 \
            and it != self.depth_reinit_at and it != self.simplify_at

    def sh_degree(self, it: int, max_degree: int = 3) -> int:
        if it < self.full_resolution_from:
            return 0
        return min(max_degree, 1 + (it - self.full_resolution_from) // self.sh_increase_every)


@dataclass
class TrainConfig:
    iterations: int = BASE_ITERATIONS
    preset: str = "default"
    scene: str = "outdoor"              # one of SCENES
    device: str = "auto"                 # one of DEVICES
    renderer: str = "auto"               # one of RENDERERS
    max_size: int | None = None          # longest image side in pixels
    eval_split: bool = False             # hold out every 8th image
    white_background: bool = False
    seed: int = 0
    simplify_keep_fraction: float = 0.6  # "base" configuration of section 1
    densify_grad_threshold: float = 2e-4
    prune_opacity: float = 0.005
    lambda_ssim: float = 0.2
    lambda_depth_normal: float = 0.05
    # Addition to the published method (decision): from the depth-normal phase on, a small penalty on
    # each Gaussian's smallest standard deviation (3D filter included, so it stops pushing near the
    # filter's scale instead of making Gaussians the filter fades). Measured on the 160 px bunny: thick
    # Gaussians sit ~1.5 thicknesses inside the surface (at silhouettes their depth extent is what
    # would bleed over the background), so the mesh did too; with the penalty F@1% went 0.78 -> 0.83
    # and Chamfer 0.86% -> 0.75% of the diagonal. 0 turns it off.
    lambda_flat: float = 100.0
    preview_every: int = 0               # 0: 10 previews over the run
    checkpoint_every: int = 0            # 0: 10 checkpoints over the run
    mesh: bool = True                    # mesh in the loop (False: Gaussians only, the ablation's baseline)
    extract_mesh: bool = True            # final mesh at the end of training (extract.py)
    remove_unseen: bool = False          # drop final-mesh vertices that no camera sees
    keep_fragments: bool = False         # keep the final mesh's small disconnected pieces (extract.py)
    decoupled_appearance: bool = False   # per-image appearance network in the L1 term (appearance.py)
    depth_prior: str | None = None       # TorchScript monocular depth network (depth_prior.py)
    init_points: int = 20_000            # random initialisation (no SfM points); densification grows it
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.preset not in PRESETS:
            from milo_backend.errors import MiloError
            raise MiloError(f"unknown preset {self.preset!r}", hint=f"use one of: {', '.join(PRESETS)}")
        if self.scene not in SCENES:
            from milo_backend.errors import MiloError
            raise MiloError(f"unknown scene type {self.scene!r}", hint="use --scene indoor or --scene outdoor")

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.iterations)

    @property
    def budgets(self) -> dict:
        return PRESETS[self.preset]

    def pivot_budget(self, cameras) -> int:
        """The mesh's pivot budget for these training cameras (per pixel of the largest view)."""
        view_pixels = max(c.width * c.height for c in cameras)
        return min(self.budgets["max_pivots"], int(PIVOTS_PER_VIEW_PIXEL * view_pixels))

    @property
    def lr_scale(self) -> float:
        """The factor on the published learning rates for this run's length (`short_run_lr_scale`)."""
        return short_run_lr_scale(self.iterations)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        """The config `to_json` wrote. Keys this version does not know (a newer run) are ignored; keys it
        lacks (an older run) keep their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_run_config(path) -> TrainConfig:
    """The TrainConfig of a run from its config.json; the defaults where the file is missing."""
    import json
    from pathlib import Path

    from milo_backend.errors import MiloError

    path = Path(path)
    if not path.exists():
        return TrainConfig()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return TrainConfig.from_json(data)
    except (ValueError, TypeError) as exc:
        raise MiloError(f"{path} is not a training config ({exc})", hint="restore the config.json written by train",
                        path=path) from exc
