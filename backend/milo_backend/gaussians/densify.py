"""Growing and shrinking the set of Gaussians (3DGS + Mini-Splatting2, as in section 1 of the notes).

- `accumulate` / `densify_and_prune`: 3DGS clone (small) / split (large) on the view-space gradient,
  Mini-Splatting's split of "blurry" Gaussians that dominate a large image area, opacity pruning.
- `aggressive_clone`: Mini-Splatting2's clone of the Gaussians that carry the image.
- `depth_reinit`: replace all Gaussians by points sampled on the rendered surfaces.
- `simplify`: importance-based sampling / mass pruning (scores from `importance.py`).
All edits go through `ops.py`, so Adam moments and `model.state` stay aligned with the parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from gsplat.utils import normalized_quat_to_rotmat

from milo_backend.data.camera import Camera
from milo_backend.errors import MiloError
from milo_backend.events import Reporter
from milo_backend.gaussians import ops
from milo_backend.gaussians.init import knn_scales
from milo_backend.gaussians.model import GaussianModel
from milo_backend.render import RenderOutput

RenderFn = Callable[[Camera], RenderOutput]


# -- statistics gathered during training -------------------------------------------------------------
@dataclass
class DensifyStats:
    """Per-Gaussian accumulators between two densification steps."""

    grad_sum: torch.Tensor                 # (N,) sum of view-space gradient norms (3DGS NDC units)
    count: torch.Tensor                    # (N,) views in which it was visible
    max_dominated_fraction: torch.Tensor   # (N,) max over views of dominated pixels / (H*W)

    @classmethod
    def empty(cls, n: int, device: torch.device | str = "cpu") -> "DensifyStats":
        return cls(*(torch.zeros(n, device=device) for _ in range(3)))

    def mean_grad(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.grad_sum / self.count.clamp_min(1), torch.zeros_like(self.grad_sum))

    def state_dict(self) -> dict:
        return {k: getattr(self, k).detach().cpu() for k in ("grad_sum", "count", "max_dominated_fraction")}

    @classmethod
    def from_state_dict(cls, d: dict, device: torch.device | str = "cpu") -> "DensifyStats":
        return cls(d["grad_sum"].to(device), d["count"].to(device), d["max_dominated_fraction"].to(device))


@torch.no_grad()
def accumulate(stats: DensifyStats, out: RenderOutput, camera: Camera) -> None:
    """Add one training view. Call after `loss.backward()` on a render whose `means2d.retain_grad()`
    was set; render with `with_stats=True` for the blurry-Gaussian split to see dominated areas."""
    grad = out.means2d.grad
    if grad is None:
        raise ValueError("means2d has no gradient: call out.means2d.retain_grad() before backward()")
    # gradient w.r.t. pixels -> w.r.t. NDC (pixel = (ndc + 1) * size / 2): 3DGS's 2e-4 threshold applies
    scale = torch.tensor([camera.width / 2.0, camera.height / 2.0], device=grad.device, dtype=grad.dtype)
    visible = (out.radii > 0).reshape(grad.shape[0], -1).all(-1)  # (N,) radii, or gsplat's per-axis (N,2)
    stats.grad_sum += torch.where(visible, (grad * scale).norm(dim=-1), torch.zeros_like(stats.grad_sum))
    stats.count += visible.to(stats.count.dtype)
    if out.pixels_dominated is not None:
        fraction = out.pixels_dominated.to(stats.max_dominated_fraction.dtype) / (camera.width * camera.height)
        torch.maximum(stats.max_dominated_fraction, fraction, out=stats.max_dominated_fraction)


def _cap(mask: torch.Tensor, priority: torch.Tensor, budget: int | None) -> torch.Tensor:
    """`mask` reduced to its `budget` entries of highest priority (all of them if within budget)."""
    if budget is None or int(mask.sum()) <= budget:
        return mask
    idx = torch.where(mask)[0]
    top = idx[torch.topk(priority[idx], max(budget, 0)).indices]
    capped = torch.zeros_like(mask)
    capped[top] = True
    return capped


@torch.no_grad()
def split_children(model: GaussianModel, mask: torch.Tensor, n_children: int = 2,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """3DGS split: children drawn from the parent's Gaussian, scales divided by 0.8 * n_children."""
    p = model.params
    sel = torch.where(mask)[0]
    scales = torch.exp(p["scales"][sel])
    rot = normalized_quat_to_rotmat(torch.nn.functional.normalize(p["quats"][sel], dim=-1))
    noise = torch.randn((n_children, len(sel), 3), device=scales.device, dtype=scales.dtype, generator=generator)
    offsets = torch.einsum("nij,cnj->cni", rot, noise * scales)
    children = {k: v[sel].repeat(n_children, *[1] * (v.dim() - 1)) for k, v in p.items()}
    children["means"] = (p["means"][sel][None] + offsets).reshape(-1, 3)
    children["scales"] = torch.log(scales / (0.8 * n_children)).repeat(n_children, 1)
    return children


@torch.no_grad()
def densify_and_prune(model: GaussianModel, stats: DensifyStats, extent: float, *,
                      grad_threshold: float = 2e-4, percent_dense: float = 0.01,
                      prune_opacity: float = 0.005, blur_area_fraction: float = 1 / 5000,
                      max_world_scale: float | None = None, max_gaussians: int | None = None,
                      generator: torch.Generator | None = None) -> dict[str, int]:
    """One 3DGS/Mini-Splatting densification step; returns counts {"cloned", "split", "pruned"}.

    - clone: mean gradient >= threshold and max scale <= percent_dense * extent (copy in place);
    - split: mean gradient >= threshold and larger, or dominated more than `blur_area_fraction` of
      some view's pixels (Mini-Splatting "blur split", any size): two children replace the parent;
    - prune: opacity < prune_opacity, and (if `max_world_scale` is set) max scale > max_world_scale *
      extent. 3DGS applies the size rule only after its first opacity reset (iteration 3000), i.e.
      never inside MILo's densification window, hence off by default.
    `max_gaussians` caps the growth (clones and splits each add one Gaussian), highest gradients first.
    Reset the stats afterwards: their indices no longer match.
    """
    n = len(model)
    if stats.grad_sum.shape[0] != n:
        raise ValueError(f"densify stats are for {stats.grad_sum.shape[0]} Gaussians, the model has {n}")
    grads = stats.mean_grad()
    big = torch.exp(model.params["scales"]).max(dim=-1).values > percent_dense * extent
    high = grads >= grad_threshold
    clone = high & ~big
    split = (high & big) | (stats.max_dominated_fraction > blur_area_fraction)
    if max_gaussians is not None:
        room = max(0, max_gaussians - n)
        chosen = _cap(clone | split, grads, room)
        clone, split = clone & chosen, split & chosen
    n_clone, n_split = int(clone.sum()), int(split.sum())

    # one append (clones, then split children) and one removal (split parents and pruned): two copies
    # of every parameter and Adam moment instead of one per step
    children = split_children(model, split, generator=generator)
    new = {k: torch.cat([p[clone], children[k]]) for k, p in model.params.items()}
    new_state = {k: torch.cat([v[clone], v[split].repeat(2, *[1] * (v.dim() - 1))]) for k, v in model.state.items()}
    ops.append(model, new, new_state)
    parents = torch.cat([split, torch.zeros(n_clone + 2 * n_split, dtype=torch.bool, device=split.device)])
    prune = torch.sigmoid(model.params["opacities"]) < prune_opacity
    if max_world_scale is not None:
        prune |= torch.exp(model.params["scales"]).max(dim=-1).values > max_world_scale * extent
    n_prune = int((prune & ~parents).sum())
    ops.remove(model, parents | prune)
    return {"cloned": n_clone, "split": n_split, "pruned": n_prune}


# -- aggressive clone (Mini-Splatting2) ----------------------------------------------------------------
def top_mass_mask(values: torch.Tensor, mass: float) -> torch.Tensor:
    """The smallest set of largest `values` whose sum reaches `mass` x the total (zeros never included)."""
    order = torch.argsort(values, descending=True)
    sorted_vals = values[order].double()
    before = torch.cumsum(sorted_vals, 0) - sorted_vals  # mass of the strictly larger ones
    keep_sorted = (before < mass * sorted_vals.sum()) & (sorted_vals > 0)
    mask = torch.zeros_like(values, dtype=torch.bool)
    mask[order[keep_sorted]] = True
    return mask


def split_opacity(opacity: torch.Tensor) -> torch.Tensor:
    """o' with 1 - (1 - o')^2 = o: two coincident copies composite to the original opacity.
    Written o / (1 + sqrt(1 - o)) (= 1 - sqrt(1 - o)) to stay exact for small o."""
    return opacity / (1 + torch.sqrt((1 - opacity).clamp_min(0)))


@torch.no_grad()
def aggressive_clone(model: GaussianModel, weight_sum: torch.Tensor, pixels_dominated: torch.Tensor, *,
                     mass_fraction: float = 0.99, max_gaussians: int | None = None) -> int:
    """Clone the Gaussians that are the max-weight contributor of some pixel and lie in the top
    `mass_fraction` of the blending-weight mass (`weight_sum`, `pixels_dominated`: (N,) summed over
    the training views, see `importance.gather_weight_stats`). Original and copy both get opacity
    1 - sqrt(1 - o), so the pair renders like the original did. Returns the number cloned."""
    n = len(model)
    mask = (pixels_dominated > 0) & top_mass_mask(weight_sum, mass_fraction)
    if max_gaussians is not None:
        mask = _cap(mask, weight_sum, max(0, max_gaussians - n))
    if not bool(mask.any()):
        return 0
    logits = model.params["opacities"]
    new_logits = torch.logit(split_opacity(torch.sigmoid(logits.double()))).to(logits.dtype)
    ops.update_params(model, {"opacities": torch.where(mask, new_logits, logits)})
    ops.duplicate(model, mask)
    return int(mask.sum())


# -- sampling helpers ------------------------------------------------------------------------------------
def weighted_sample_without_replacement(weights: torch.Tensor, k: int,
                                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of `k` distinct entries drawn with probability proportional to `weights` (successive
    draws renormalised), by Efraimidis-Spirakis keys Exp(1) / w. Unlike torch.multinomial it has no
    2^24 size limit. Zero weights are never drawn; k is clipped to the number of positive weights."""
    w = weights.detach().double().flatten()
    positive = w > 0
    k = min(int(k), int(positive.sum()))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=w.device)
    u = torch.rand(w.shape, generator=generator, device=w.device, dtype=torch.float64)
    keys = torch.where(positive, -torch.log1p(-u) / w.clamp_min(1e-300), torch.full_like(w, float("inf")))
    return torch.topk(keys, k, largest=False).indices


# -- depth re-initialisation -----------------------------------------------------------------------------
def pixel_rays(camera: Camera, pixels: torch.Tensor, device, dtype=torch.float32):
    """World origin (3,) and directions (M,3) with unit camera-z component, so the ray parameter is the
    camera depth, for flat pixel indices `pixels` (pixel centres at +0.5)."""
    u = (pixels % camera.width).to(dtype) + 0.5
    v = torch.div(pixels, camera.width, rounding_mode="floor").to(dtype) + 0.5
    d_cam = torch.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, torch.ones_like(u)], dim=1)
    rot = torch.as_tensor(camera.world_to_cam[:3, :3], dtype=dtype, device=device)
    origin = torch.as_tensor(camera.center, dtype=dtype, device=device)
    return origin, d_cam @ rot  # rows: R^T d_cam


def ray_peak_depth(origin: torch.Tensor, dirs: torch.Tensor, means: torch.Tensor, quats: torch.Tensor,
                   scales: torch.Tensor) -> torch.Tensor:
    """Ray parameter t where each ray meets the maximum of its Gaussian's density:
    t = d^T S^-1 (mu - o) / d^T S^-1 d with S = R diag(s^2) R^T (computed in the Gaussian's frame)."""
    rot = normalized_quat_to_rotmat(torch.nn.functional.normalize(quats, dim=-1))
    d_local = torch.einsum("nji,nj->ni", rot, dirs) / scales
    m_local = torch.einsum("nji,nj->ni", rot, means - origin) / scales
    return (d_local * m_local).sum(-1) / (d_local * d_local).sum(-1).clamp_min(1e-30)


@torch.no_grad()
def surface_samples(model: GaussianModel, camera: Camera, out: RenderOutput, image: torch.Tensor, k: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `k` points (and their image colours) on the surfaces seen by `camera`.

    Pixels are drawn without replacement with probability proportional to the rendered alpha; each
    becomes the point where its ray meets the peak of the pixel's max-weight Gaussian. We use that
    Gaussian's hit rather than the median depth because sampling by alpha also draws pixels with
    alpha < 1 - MEDIAN_TRANSMITTANCE, where the median depth does not exist, and the hit is on an actual Gaussian (not
    between two at a depth edge), as in Mini-Splatting's depth re-initialisation.
    """
    if out.max_weight_id is None:
        raise ValueError("depth_reinit needs renders with per-pixel max-weight ids (with_stats=True)")
    if tuple(image.shape[:2]) != (camera.height, camera.width):
        raise ValueError(f"image {tuple(image.shape)} does not match camera {camera.width}x{camera.height}")
    ids = out.max_weight_id.reshape(-1)
    prob = out.alpha.reshape(-1).float() * (ids >= 0)
    pix = weighted_sample_without_replacement(prob, k, generator)
    gid = ids[pix]
    splats = model.splats()
    origin, dirs = pixel_rays(camera, pix, splats.means.device, splats.means.dtype)
    t = ray_peak_depth(origin, dirs, splats.means[gid], splats.quats[gid], splats.scales[gid])
    ok = torch.isfinite(t) & (t > 0)
    points = origin + t[ok, None] * dirs[ok]
    colors = image.reshape(-1, image.shape[-1])[pix[ok].to(image.device), :3].to(points)
    return points, colors


@torch.no_grad()
def depth_reinit(model: GaussianModel, cameras: Sequence[Camera],
                 images: Sequence[torch.Tensor] | Callable[[Camera], torch.Tensor], render_fn: RenderFn, *,
                 n_points: int | None = None, generator: torch.Generator | None = None,
                 opacity: float = 0.1, reporter: Reporter | None = None) -> int:
    """Replace every Gaussian by about `n_points` (default: the current count, as MILo's
    num_depth_factor = 1) points sampled on the rendered surfaces, n_points / len(cameras) per view:
    colour from the photo, kNN scale, opacity 0.1, identity rotation, no higher SH.

    `images`: one (H,W,3) tensor in [0,1] per camera, or a function camera -> image (to load lazily).
    `render_fn(camera)` must render the current model with stats (alpha and max_weight_id).
    Optimiser moments restart (call `make_optimizers` again to also reset the learning rates).
    `generator` (on the model's device) makes the pixel draws reproducible. Returns the number of
    Gaussians now in the model.
    """
    n_points = len(model) if n_points is None else int(n_points)
    per_view = np.full(len(cameras), n_points // len(cameras))
    per_view[: n_points % len(cameras)] += 1
    points, colors = [], []
    for i, (cam, k) in enumerate(zip(cameras, per_view)):
        if k == 0:
            continue
        image = images(cam) if callable(images) else images[i]
        p, c = surface_samples(model, cam, render_fn(cam), image, int(k), generator)
        points.append(p)
        colors.append(c)
        if reporter is not None:
            reporter.progress("depth_reinit", i + 1, len(cameras))
    pts = torch.cat(points) if points else torch.zeros(0, 3, device=model.device)
    if len(pts) == 0:
        raise MiloError("depth re-initialisation found no rendered surface in any training view",
                        "training has diverged or the cameras do not see the scene: resume from an "
                        "earlier checkpoint or check the camera poses")
    scales = torch.as_tensor(knn_scales(pts), dtype=pts.dtype, device=pts.device)
    fresh = GaussianModel.from_points(pts, torch.cat(colors).clamp(0, 1), scales, opacity=opacity,
                                      max_sh_degree=model.max_sh_degree)
    ops.replace_all(model, {k: v.detach() for k, v in fresh.params.items()})
    return len(model)


# -- simplification --------------------------------------------------------------------------------------
@torch.no_grad()
def simplify(model: GaussianModel, scores: torch.Tensor, *, keep_fraction: float | None = None,
             keep_mass: float | None = None, min_keep: int = 0, fallback: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> int:
    """Keep the important Gaussians; returns how many were removed. Exactly one of:

    - `keep_fraction` (base config, 0.6): sample that fraction of the Gaussians with a positive score,
      without replacement, with probability proportional to the score (Mini-Splatting's count);
    - `keep_mass` (dense config and second simplification, 0.99): keep the highest scores that make up
      that fraction of the total score, i.e. drop the bottom 1% of the importance mass.
    Gaussians with score 0 are removed, except that at least `min_keep` survive (fewer only if fewer
    are eligible): the rule alone keeps a share of the Gaussians that dominate some pixel, and after a
    random start most Gaussians are faint layers that dominate none although together they make the
    image (measured: 67,200 -> 2,312, BENCHMARKS.md). Up to `min_keep`, the dropped positive scores
    come back first (highest first), then the Gaussians with a positive `fallback` (highest first).
    """
    if (keep_fraction is None) == (keep_mass is None):
        raise ValueError("give exactly one of keep_fraction or keep_mass")
    scores = scores.to(model.device)
    if scores.shape[0] != len(model):
        raise ValueError(f"{scores.shape[0]} scores for {len(model)} Gaussians")
    positive = int((scores > 0).sum())
    if positive == 0 and (fallback is None or not bool((fallback > 0).any())):
        raise MiloError("simplification found no Gaussian that dominates a pixel in two training views",
                        "training has diverged or the cameras do not see the scene: resume from an "
                        "earlier checkpoint or check the camera poses")
    keep = torch.zeros(len(model), dtype=torch.bool, device=model.device)
    if positive and keep_fraction is not None:
        keep[weighted_sample_without_replacement(scores, round(keep_fraction * positive), generator)] = True
    elif positive:
        keep = top_mass_mask(scores, keep_mass)
    missing = min(int(min_keep), len(model)) - int(keep.sum())
    if missing > 0:
        # rank: positive scores above every fallback-only one (1 + s/max in (1,2], fallback/max in [0,1))
        rank = torch.where(scores > 0, 1 + scores / scores.max().clamp_min(1e-30), torch.zeros_like(scores))
        if fallback is not None:
            fb = fallback.to(scores)
            rank = torch.where(scores > 0, rank, 0.999 * fb / fb.max().clamp_min(1e-30))
        rank = torch.where(keep | (rank <= 0), torch.full_like(rank, -1.0), rank)
        extra = torch.topk(rank, min(missing, int((rank > 0).sum()))).indices
        keep[extra] = True
    removed = int((~keep).sum())
    ops.remove(model, ~keep)
    return removed
