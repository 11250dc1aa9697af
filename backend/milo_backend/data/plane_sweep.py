"""Dense points from posed photos: plane-sweep stereo with a multi-view consistency check.

Where feature matching finds few points (repeated or fine texture, small photos), the random start leaves
distant textured surfaces to densification, which does not find their depth in a short run (BENCHMARKS.md,
issue 12). Plane sweep uses the known poses instead of matches: for each photo, every pixel's depth is the
one at which its neighbours' photos agree best (normalised cross-correlation of small windows, warped by
fronto-parallel planes sampled uniformly in inverse depth). A depth is kept only where the window has
texture, the correlation is clear, and at least `min_consistent` neighbours' own depth maps agree with it
(reprojection within 1 px and depth within `depth_tolerance`): on repeated texture a wrong match agrees with
one view by chance, rarely with two.

Plain torch on the photos' grey levels; no learned prior.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from milo_backend.data.camera import Camera


@dataclass(frozen=True)
class SweepOptions:
    neighbours: int = 4          # photos compared with each photo
    best_of: int = 2             # the correlation of a depth is the mean of the best `best_of` neighbours
    refine: int = 9              # full-resolution depths per pixel around the coarse sweep's best
    window: int = 5              # correlation window (pixels, odd)
    min_ncc: float = 0.5         # a depth is a match only above this correlation
    min_std: float = 0.02        # grey-level standard deviation a window needs (textureless: no depth)
    min_angle_deg: float = 2.0   # neighbours see the reference's focus at this angle or more...
    max_angle_deg: float = 40.0  # ...and at most this one
    min_consistent: int = 2      # neighbours whose depth maps must agree with a kept depth
    depth_tolerance: float = 0.01  # relative depth difference allowed by that check


def _grey(image: torch.Tensor) -> torch.Tensor:
    return (image[..., :3] * image.new_tensor([0.299, 0.587, 0.114])).sum(-1)


def _rays(cam: Camera) -> torch.Tensor:
    """Camera-space directions with z = 1 through every pixel centre, (H, W, 3) float64."""
    v, u = torch.meshgrid(torch.arange(cam.height, dtype=torch.float64) + 0.5,
                          torch.arange(cam.width, dtype=torch.float64) + 0.5, indexing="ij")
    return torch.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, torch.ones_like(u)], -1)


def _to_cam(cam: Camera, world: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(cam.world_to_cam, dtype=torch.float64)
    return world @ m[:3, :3].T + m[:3, 3]


def _to_world(cam: Camera, points_cam: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(cam.cam_to_world, dtype=torch.float64)
    return points_cam @ m[:3, :3].T + m[:3, 3]


def _project(cam: Camera, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (..., 2) of camera-space points, and their depth (...)."""
    z = points_cam[..., 2]
    zs = z.clamp_min(1e-9)
    return torch.stack([cam.fx * points_cam[..., 0] / zs + cam.cx, cam.fy * points_cam[..., 1] / zs + cam.cy], -1), z


def _grid(cam: Camera, pixels: torch.Tensor) -> torch.Tensor:
    """grid_sample coordinates (align_corners=False) of pixel coordinates."""
    return pixels / pixels.new_tensor([cam.width, cam.height]) * 2 - 1


def choose_neighbours(cameras: list[Camera], depth: float, opts: SweepOptions) -> list[list[int]]:
    """For each camera, the `opts.neighbours` others that see its focus point (on its axis at `depth`)
    under a triangulation angle in [min_angle, max_angle], the closest to 15 degrees first."""
    centers = np.stack([c.center for c in cameras])
    out = []
    for i, cam in enumerate(cameras):
        p = cam.center + cam.cam_to_world[:3, 2] * depth  # on its optical axis
        a = cam.center - p
        b = centers - p
        cos = (b @ a) / (np.linalg.norm(b, axis=1) * np.linalg.norm(a) + 1e-12)
        angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        uv, z = zip(*[c.project(p[None]) for c in cameras])
        seen = np.array([(zz[0] > 0 and 0 <= q[0, 0] < c.width and 0 <= q[0, 1] < c.height)
                         for q, zz, c in zip(uv, z, cameras)])
        ok = seen & (angle >= opts.min_angle_deg) & (angle <= opts.max_angle_deg)
        ok[i] = False
        idx = np.flatnonzero(ok)
        out.append([int(j) for j in idx[np.argsort(np.abs(angle[idx] - 15.0))][: opts.neighbours]])
    return out


def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over window x window (zero outside; divided by the full window) of (..., H, W)."""
    shape = x.shape
    y = F.avg_pool2d(x.reshape(-1, 1, *shape[-2:]), window, stride=1, padding=window // 2,
                     count_include_pad=True)
    return y.reshape(shape)


class _Matcher:
    """Correlation of a reference photo with its neighbours' photos warped to it at given inverse depths.

    At inverse depth q a reference pixel x maps to the neighbour's homogeneous pixel A x + q b, with
    A = K_j R K_r^-1 and b = K_j t for the pose (R, t) from the reference to the neighbour camera: one
    multiply-add per hypothesis, for planes and per-pixel depths alike.
    """

    def __init__(self, ref: Camera, ref_grey: torch.Tensor, others: list[Camera], other_greys: list[torch.Tensor],
                 opts: SweepOptions):
        self.opts, self.others = opts, others
        k = opts.window
        self.ref = ref_grey.float()
        self.mu = _box(self.ref, k)
        self.var = (_box(self.ref * self.ref, k) - self.mu * self.mu).clamp_min(0)
        rays = _rays(ref)                                                  # K_r^-1 x, (H, W, 3)
        self.ax, self.b = [], []
        for cam in others:
            rel = cam.world_to_cam @ ref.cam_to_world
            kr = torch.as_tensor(cam.K @ rel[:3, :3])
            self.ax.append((rays @ kr.T).float())
            self.b.append(torch.as_tensor(cam.K @ rel[:3, 3]).float())
        self.ax, self.b = torch.stack(self.ax), torch.stack(self.b)           # (K, H, W, 3), (K, 3)
        self.size = torch.tensor([[c.width, c.height] for c in others], dtype=torch.float32)[:, None, None]
        self.imgs = [g.float()[None, None] for g in other_greys]

    def score(self, inv_depth: torch.Tensor) -> torch.Tensor:
        """Mean of the best `best_of` neighbours' correlations at inverse depths (H, W)."""
        k = self.opts.window
        p = self.ax + inv_depth[None, ..., None] * self.b[:, None, None]
        z = p[..., 2]
        grid = p[..., :2] / z.clamp_min(1e-9)[..., None] / self.size * 2 - 1
        bad = (z <= 0) | (grid.abs() > 1).any(-1)
        sampled = torch.cat([F.grid_sample(img, g[None], mode="bilinear", padding_mode="zeros",
                                           align_corners=False)[0] for img, g in zip(self.imgs, grid)])
        mu_o = _box(sampled, k)
        var_o = (_box(sampled * sampled, k) - mu_o * mu_o).clamp_min(0)
        ncc = (_box(sampled * self.ref, k) - mu_o * self.mu) / (var_o * self.var + 1e-8).sqrt()
        ncc = ncc.masked_fill(bad | (var_o.sqrt() < self.opts.min_std), -1.0)
        return ncc.topk(min(self.opts.best_of, len(self.others)), dim=0).values.mean(0)

    def best(self, hypotheses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hypotheses (P, H, W) of inverse depth, ordered -> best score and its inverse depth, refined by a
        parabola through the best three."""
        scores = torch.stack([self.score(q) for q in hypotheses])
        top, i = scores.max(0)
        i0 = i.clamp(1, len(hypotheses) - 2)
        s_m, s_0, s_p = (scores.gather(0, (i0 + o)[None])[0] for o in (-1, 0, 1))
        denom = s_m - 2 * s_0 + s_p
        t = torch.where((denom < -1e-6) & (i == i0), 0.5 * (s_m - s_p) / denom, torch.zeros_like(denom))
        t = t.clamp(-0.5, 0.5)
        q = hypotheses.gather(0, i[None])[0]
        neighbour = hypotheses.gather(0, (i0 + torch.where(t >= 0, 1, -1))[None])[0]
        return top, q + t.abs() * (neighbour - q)


def _half(grey: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(grey[None, None], 2, ceil_mode=True)[0, 0]


def plane_count(ref: Camera, others: list[Camera], near: float, far: float) -> int:
    """Planes at half resolution for steps of at most one (half-resolution) pixel of disparity in the
    widest-baseline neighbour, within [32, 256]."""
    base = max(np.linalg.norm(c.center - ref.center) for c in others)
    disparity = 0.5 * max(ref.fx, ref.fy) * base * (1.0 / near - 1.0 / far)
    return int(np.clip(np.ceil(disparity), 32, 256))


def sweep_depth(ref: Camera, ref_grey: torch.Tensor, others: list[Camera], other_greys: list[torch.Tensor],
                near: float, far: float, opts: SweepOptions) -> torch.Tensor:
    """Depth (H, W) of `ref`'s pixels where its neighbours agree (0 elsewhere).

    Coarse to fine: fronto-parallel planes uniform in inverse depth over [near, far] on half-resolution
    photos (`plane_count`), then per full-resolution pixel `opts.refine` depths across two plane steps
    around the coarse one."""
    h, w = ref_grey.shape
    if not others:
        return torch.zeros(h, w)
    coarse = _Matcher(ref.scaled((w + 1) // 2, (h + 1) // 2), _half(ref_grey),
                      [c.scaled((c.width + 1) // 2, (c.height + 1) // 2) for c in others],
                      [_half(g) for g in other_greys], opts)
    planes = torch.linspace(1.0 / near, 1.0 / far, plane_count(ref, others, near, far))
    _, q = coarse.best(planes[:, None, None].expand(-1, *coarse.ref.shape).contiguous())
    q = F.interpolate(q[None, None], size=(h, w), mode="nearest")[0, 0]
    step = float(planes[0] - planes[1])
    fine = torch.linspace(-step, step, opts.refine)
    hyp = (q[None] + fine[:, None, None]).clamp_min(0.25 / far)
    full = _Matcher(ref, ref_grey, others, other_greys, opts)
    top, q = full.best(hyp)
    keep = (top >= opts.min_ncc) & (full.var.sqrt() >= opts.min_std)  # textureless windows match anywhere
    r = opts.window // 2  # a window across the border correlates on the zeros both sides are padded with
    keep[:r], keep[h - r:], keep[:, :r], keep[:, w - r:] = False, False, False, False
    depth = 1.0 / q
    return torch.where(keep, depth, torch.zeros_like(depth))


def consistent(depths: list[torch.Tensor], cameras: list[Camera], neighbours: list[list[int]],
               opts: SweepOptions) -> list[torch.Tensor]:
    """Masks of the depths that at least `min_consistent` neighbours' depth maps confirm: the pixel's point,
    seen from the neighbour, lands where the neighbour's depth puts a point that reprojects within 1 px of
    the pixel and at a depth within `depth_tolerance`."""
    masks = []
    for i, cam in enumerate(cameras):
        d = depths[i].double()
        votes = torch.zeros(d.shape, dtype=torch.int32)
        rays = _rays(cam)
        pts = _to_world(cam, rays * d[..., None])
        pixel = rays[..., :2] * d.new_tensor([cam.fx, cam.fy]) + d.new_tensor([cam.cx, cam.cy])
        for j in neighbours[i]:
            other = cameras[j]
            px, z = _project(other, _to_cam(other, pts))
            dj = F.grid_sample(depths[j][None, None].double(), _grid(other, px)[None], mode="nearest",
                               padding_mode="zeros", align_corners=False)[0, 0]
            # the neighbour's own point at that pixel, seen back from this camera
            ray_j = torch.cat([(px - px.new_tensor([other.cx, other.cy])) / px.new_tensor([other.fx, other.fy]),
                               torch.ones_like(dj)[..., None]], -1)
            back_px, back_z = _project(cam, _to_cam(cam, _to_world(other, ray_j * dj[..., None])))
            ok = ((d > 0) & (z > 0) & (dj > 0) & ((back_px - pixel).norm(dim=-1) <= 1.0)
                  & ((back_z - d).abs() <= opts.depth_tolerance * d))
            votes += ok.int()
        masks.append(votes >= min(opts.min_consistent, max(1, len(neighbours[i]))))
    return masks


def plane_sweep_points(cameras: list[Camera], images: list[torch.Tensor], near: float, far: float,
                       focus_depth: float, masks: list[torch.Tensor | None] | None = None,
                       opts: SweepOptions = SweepOptions(), progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 3) float32 and their colours (N, 3) in [0, 1] where the photos agree on a depth.

    `images`: (H, W, 3) float photos at their camera's size; `masks`: optional (H, W) bool, pixels that
    may be used (e.g. opaque ones of RGBA photos). `near`, `far`: the depths swept; `focus_depth`: where
    the cameras look (neighbours are chosen by their angle there). `progress(i, n)` is called after each
    depth map.
    """
    greys = [_grey(im.float()) for im in images]
    if masks is not None:
        greys = [g if m is None else g.masked_fill(~m, 0.0) for g, m in zip(greys, masks)]
    neighbours = choose_neighbours(cameras, focus_depth, opts)
    depths = []
    n = len(cameras)
    for i, cam in enumerate(cameras):
        d = sweep_depth(cam, greys[i], [cameras[j] for j in neighbours[i]], [greys[j] for j in neighbours[i]],
                           near, far, opts)
        if masks is not None and masks[i] is not None:
            d = d.masked_fill(~masks[i], 0.0)
        depths.append(d)
        if progress:
            progress(i + 1, 2 * n)
    keep = consistent(depths, cameras, neighbours, opts)
    pts, cols = [], []
    for i, cam in enumerate(cameras):
        m = keep[i]
        p = _to_world(cam, _rays(cam)[m] * depths[i][m].double()[:, None])
        pts.append(p.float().numpy())
        cols.append(images[i][..., :3][m].float().clamp(0, 1).numpy())
        if progress:
            progress(n + i + 1, 2 * n)
    return np.concatenate(pts), np.concatenate(cols)
