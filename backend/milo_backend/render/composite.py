"""Front-to-back alpha compositing of projected Gaussians over per-tile lists, with a hand-written backward.

Semantics are gsplat 1.5.3's "classic" kernel (so the torch and gsplat renderers agree):
  alpha = min(ALPHA_MAX, o exp(-sigma)), sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, dx = x_mean - pixel centre;
  pairs with alpha < 1/255 (or sigma < 0) are skipped; a pixel stops *before* the Gaussian that would
  bring its transmittance T to <= 1e-4; the weight of a Gaussian is w = alpha T_before.
Extra per-pixel outputs: the Gaussian at which T first drops below MEDIAN_TRANSMITTANCE (the "median"
depth) and the max-weight Gaussian; per Gaussian: weight sums and touched-pixel counts (importance,
densification).

How it is vectorised (no Python loop over pixels or Gaussians): each (tile, Gaussian) entry of the tile
lists covers the rows of its bounding box inside that tile; on each row, the columns where the ellipse
can reach alpha = 1/255 are solved for in closed form, and only those pixels become (pixel, Gaussian)
candidates, so almost every candidate contributes. One stable sort by pixel (entries are already front
to back) makes each pixel's pairs contiguous, and transmittances are an exclusive segmented cumsum of
log(1 - alpha) (float64: the running sum spans many pixels). Pixels are numbered
tile-major (tile * 256 + row-in-tile * 16 + column-in-tile) so a chunk of consecutive tiles owns a
contiguous slice of the output. Chunks hold about `PAIR_BUDGET` candidates, bounding memory. The forward
keeps the few numbers the backward needs per contributing pair (or, past `STORE_BUDGET` bytes, lets the
backward recompute them), and the backward uses the closed form
  dC/da_k = T_k f_k - (sum_{i>k} w_i f_i + T_final bg) / (1 - a_k)
with a segmented suffix sum (the background part enters through the alpha output).
Per-Gaussian and per-pixel tables are kept channel-first ((C, N) / (C, pixels)): on the CPU gathering
and scatter-adding along the last dimension is 3-5x faster than row gathers of (N, C) tables.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from milo_backend import cpu_kernels
from milo_backend.render.composite_cpu import composite_cpu
from milo_backend.render.project import ALPHA_THRESHOLD
from milo_backend.render.tiles import TileLists

ALPHA_MAX = 0.999          # gsplat 1.5.3's clamp (the original 3DGS kernel uses 0.99)
TRANSMITTANCE_MIN = 1e-4   # a pixel is done once T would reach this
# The surface depth is where transmittance crosses this value. The published method uses 0.5, but the 3D
# smoothing filter scales a flat Gaussian's opacity by about s_min / f (surface Gaussians: 0.22 filtered
# vs 0.84 raw on the bunny bench), so T = 0.5 is only reached 1-1.5 px behind the surface, and the mesh
# fitted to it sat 0.37% of the diagonal inside the object. At 0.65 that offset is 0.10% and the Chamfer
# distance 0.43% instead of 0.54% (BENCHMARKS.md); the filter is pixel-relative, so is the bias.
MEDIAN_TRANSMITTANCE = 0.65
PAIR_BUDGET = 1 << 20      # candidate (pixel, Gaussian) pairs per CPU chunk: ~100 MB of temporaries
CUDA_PAIR_BUDGET = 1 << 23  # on a GPU fewer, larger chunks (each costs kernel launches and a sync)
MAX_CHUNK_PIXELS = 1 << 15  # CPU chunks: pixel keys fit int16, the fastest stable sort keys there
STORE_BUDGET = 1 << 30     # bytes of per-pair data kept for the backward before recomputing instead


class CompositeResult(NamedTuple):
    features: torch.Tensor | None        # (H,W,D) sum of w f (no background)
    alpha: torch.Tensor                  # (H,W,1) 1 - final transmittance
    median_id: torch.Tensor              # (H,W) int64 Gaussian where T crosses MEDIAN_TRANSMITTANCE, -1 if none
    max_weight_id: torch.Tensor | None   # (H,W) int64 max-weight Gaussian, -1 if none
    weight_sum: torch.Tensor | None      # (N,) sum of w over pixels
    pixels_touched: torch.Tensor | None  # (N,) number of pixels with w > 0


class _Plan(NamedTuple):
    """Per tile-list entry: the pixel rectangle its Gaussian's box covers inside the tile."""

    gaussian: torch.Tensor  # (E,) int64
    key0: torch.Tensor      # (E,) int64 tile-major pixel index of the rectangle's first pixel
    dx0: torch.Tensor       # (E,) float  mean_x - centre_x of that pixel (dx of later columns: dx0 - col)
    dy0: torch.Tensor       # (E,) float
    w: torch.Tensor         # (E,) int64 columns
    h: torch.Tensor         # (E,) int64 rows
    count: torch.Tensor     # (E,) int64 pixels = columns * rows (an upper bound on the candidates)
    chunks: list            # [(t0, t1, e0, e1)] consecutive tiles and their entries
    tile_size: int
    tile_pixels: int        # tile_size ** 2


class _Pairs(NamedTuple):
    """Contributing (pixel, Gaussian) pairs of one chunk: sorted by pixel, then front to back."""

    key: torch.Tensor       # int64 chunk-local tile-major pixel index
    g: torch.Tensor         # int64 Gaussian index
    alpha: torch.Tensor
    t_before: torch.Tensor  # transmittance in front of the Gaussian
    dx: torch.Tensor | None   # mean - pixel centre, and exp(-sigma): only when asked for (backward)
    dy: torch.Tensor | None
    vis: torch.Tensor | None


@torch.no_grad()
def plan_pairs(means2d: torch.Tensor, radii: torch.Tensor, tiles: TileLists, width: int, height: int) -> _Plan:
    """Pixel rectangles of all tile-list entries, and their grouping into bounded chunks of tiles."""
    device = means2d.device
    ts = tiles.tile_size
    on_cpu = device.type == "cpu"
    pair_budget = PAIR_BUDGET if on_cpu else CUDA_PAIR_BUDGET
    n_tiles = tiles.tiles_x * tiles.tiles_y
    per_tile = tiles.offsets[1:] - tiles.offsets[:-1]
    tile = torch.repeat_interleave(torch.arange(n_tiles, device=device), per_tile,
                                   output_size=tiles.flatten_ids.numel())
    g = tiles.flatten_ids
    m = means2d.detach().index_select(0, g)
    r = radii.index_select(0, g).to(torch.float64)
    mx, my = m[:, 0].double(), m[:, 1].double()
    # pixel j is inside the box when its centre j + 0.5 lies within [mean - r, mean + r]
    gx0 = torch.ceil(mx - r[:, 0] - 0.5).long()
    gx1 = torch.floor(mx + r[:, 0] - 0.5).long() + 1
    gy0 = torch.ceil(my - r[:, 1] - 0.5).long()
    gy1 = torch.floor(my + r[:, 1] - 0.5).long() + 1
    tx0 = (tile % tiles.tiles_x) * ts
    ty0 = torch.div(tile, tiles.tiles_x, rounding_mode="floor") * ts
    x0 = torch.maximum(gx0, tx0)
    y0 = torch.maximum(gy0, ty0)
    w = (torch.minimum(gx1, (tx0 + ts).clamp_max(width)) - x0).clamp_min(0)
    h = (torch.minimum(gy1, (ty0 + ts).clamp_max(height)) - y0).clamp_min(0)
    count = w * h
    key0 = tile * ts * ts + (y0 - ty0) * ts + (x0 - tx0)
    dx0 = (m[:, 0] - (x0.to(m.dtype) + 0.5))
    dy0 = (m[:, 1] - (y0.to(m.dtype) + 0.5))

    # chunks: consecutive tiles (on the CPU at most MAX_CHUNK_PIXELS pixels), closed once the pair
    # budget is reached
    max_tiles = max(1, MAX_CHUNK_PIXELS // (ts * ts)) if on_cpu else n_tiles
    cum = torch.zeros(len(count) + 1, dtype=torch.int64, device=device)
    cum[1:] = torch.cumsum(count, 0)
    offsets = tiles.offsets.tolist()
    pairs_before_tile = cum[tiles.offsets].tolist()
    chunks, t0 = [], 0
    for t in range(1, n_tiles + 1):
        if (t == n_tiles or t - t0 == max_tiles
                or pairs_before_tile[t + 1] - pairs_before_tile[t0] > pair_budget):
            if pairs_before_tile[t] > pairs_before_tile[t0]:
                chunks.append((t0, t, offsets[t0], offsets[t]))
            t0 = t
    return _Plan(g, key0, dx0, dy0, w, h, count, chunks, ts, ts * ts)


def _chunk_pairs(plan: _Plan, chunk: tuple, table: torch.Tensor, geometry: bool) -> _Pairs | None:
    """Expand a chunk's entries to pixels, keep the contributing pairs, order them, get T.

    `table` (6, N) holds per Gaussian the rows x, y, conic a, b, c, opacity. Two levels, so that no division or
    wasted candidate is needed: every rectangle row first gets the exact column span where its ellipse
    can reach alpha = 1/255 (enlarged by a hair against rounding), then only those pixels are expanded."""
    t0, _, e0, e1 = chunk
    device, dtype = table.device, table.dtype
    h = plan.h[e0:e1]
    n_rows = int(h.sum())
    if n_rows == 0:
        return None
    g_entry = plan.gaussian[e0:e1]
    conic = table[2:].index_select(1, g_entry)  # a, b, c, opacity
    row_ent = torch.repeat_interleave(torch.arange(e1 - e0, device=device), h, output_size=n_rows)
    r = torch.arange(n_rows, device=device) - (torch.cumsum(h, 0) - h).index_select(0, row_ent)
    per_entry = torch.cat([torch.stack([plan.dx0[e0:e1], plan.dy0[e0:e1], plan.w[e0:e1].to(dtype)]), conic])
    dx0, dy, w, a, b, c, o = per_entry.index_select(1, row_ent)
    dy = dy - r.to(dtype)
    # alpha >= 1/255  <=>  sigma <= ln(255 o)  <=>  a dx^2 + 2 b dy dx + c dy^2 <= 2 ln(255 o)
    bdy = b * dy
    disc = bdy * bdy - a * (c * dy * dy - (2.0 * torch.log(o * 255.0) + 1e-4))
    half = torch.sqrt(disc.clamp_min(0)) / a
    col_lo = torch.ceil(dx0 + bdy / a - half - 1e-3).clamp_min(0)  # dx = dx0 - col
    col_hi = torch.floor(dx0 + bdy / a + half + 1e-3).clamp_max(w - 1)
    count = torch.where(disc >= 0, col_hi - col_lo + 1, torch.zeros_like(col_lo)).clamp_min(0).long()
    total = int(count.sum())
    if total == 0:
        return None

    cand_row = torch.repeat_interleave(torch.arange(n_rows, device=device), count, output_size=total)
    local = torch.arange(total, device=device) - (torch.cumsum(count, 0) - count).index_select(0, cand_row)
    # sigma = 0.5 a dx^2 + b dy dx + 0.5 c dy^2 = dx (0.5 a dx + b dy) + 0.5 c dy^2
    dx_first, half_a, b_dy, c_term, opacity = torch.stack(
        [dx0 - col_lo, 0.5 * a, bdy, 0.5 * c * dy * dy, o]).index_select(1, cand_row)
    dx = dx_first - local.to(dtype)
    sigma = dx * (half_a * dx + b_dy) + c_term
    vis = torch.exp(-sigma)
    alpha = (opacity * vis).clamp_max(ALPHA_MAX)
    del dx_first, half_a, b_dy, c_term, opacity
    idx = ((alpha >= ALPHA_THRESHOLD) & (sigma >= 0)).nonzero().squeeze(1)
    del sigma
    row_key = (plan.key0[e0:e1] - t0 * plan.tile_pixels).index_select(0, row_ent) + r * plan.tile_size + col_lo.long()
    key = row_key.index_select(0, cand_row.index_select(0, idx)) + local.index_select(0, idx)
    # one stable sort by pixel keeps each pixel's Gaussians front to back (small keys sort fastest)
    n_pixels = (chunk[1] - t0) * plan.tile_pixels
    key, perm = torch.sort(key.to(torch.int16 if n_pixels <= 1 << 15 else torch.int32), stable=True)
    sel = idx.index_select(0, perm)
    key = key.long()
    alpha_v = alpha.index_select(0, sel)

    first = _first_of_pixel(key, n_pixels)
    log1m = torch.log1p(-alpha_v).double()
    excl = torch.cumsum(log1m, 0) - log1m
    t_before = torch.exp(excl - excl.index_select(0, first)).to(dtype)
    # a pixel stops before the Gaussian that would bring T to <= 1e-4: a prefix of each run survives
    kept = (t_before * (1.0 - alpha_v) > TRANSMITTANCE_MIN).nonzero().squeeze(1)
    src = sel.index_select(0, kept)
    src_row = cand_row.index_select(0, src)
    g = g_entry.index_select(0, row_ent.index_select(0, src_row))
    out = [key.index_select(0, kept), g, alpha_v.index_select(0, kept), t_before.index_select(0, kept)]
    if geometry:
        out += [dx.index_select(0, src), dy.index_select(0, src_row), vis.index_select(0, src)]
    else:
        out += [None, None, None]
    return _Pairs(*out)


def _first_of_pixel(key: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Per pair, the index of its pixel's first pair (pairs sorted by pixel key < n_pixels)."""
    counts = torch.bincount(key, minlength=n_pixels)
    return (torch.cumsum(counts, 0) - counts).index_select(0, key)


def composite_forward(plan: _Plan, table: torch.Tensor, features: torch.Tensor | None, n_pixels: int,
                      with_stats: bool, store: bool):
    """Forward pass on tile-major pixels, channel-first: `table` (6, N), `features` (D, N).

    Returns (features (D, pixels), alpha, median_id, max_id, weight_sum, touched, t_final, stored pairs)."""
    device, dtype, n = table.device, table.dtype, table.shape[1]
    feat = None if features is None else torch.zeros(features.shape[0], n_pixels, dtype=dtype, device=device)
    t_final = torch.ones(n_pixels, dtype=dtype, device=device)
    median_id = torch.full((n_pixels,), -1, dtype=torch.int64, device=device)
    max_id = torch.full((n_pixels,), -1, dtype=torch.int64, device=device) if with_stats else None
    weight_sum = torch.zeros(n, dtype=dtype, device=device) if with_stats else None
    touched = torch.zeros(n, dtype=torch.int64, device=device) if with_stats else None
    stored, stored_bytes = [], 0
    for chunk in plan.chunks:
        t0, t1 = chunk[0] * plan.tile_pixels, chunk[1] * plan.tile_pixels
        keep_this = store and stored_bytes < STORE_BUDGET
        p = _chunk_pairs(plan, chunk, table, geometry=keep_this)
        stored.append(p if keep_this else None)
        if p is None:
            continue
        stored_bytes += len(p.key) * 7 * 8 if keep_this else 0
        weight = p.alpha * p.t_before
        if feat is not None:
            feat[:, t0:t1].index_add_(1, p.key, features.index_select(1, p.g) * weight)
        log_t = torch.zeros(t1 - t0, dtype=torch.float64, device=device)
        log_t.index_add_(0, p.key, torch.log1p(-p.alpha).double())
        t_final[t0:t1] = torch.exp(log_t).to(dtype)
        t_after = p.t_before * (1.0 - p.alpha)
        crossing = ((p.t_before >= MEDIAN_TRANSMITTANCE) & (t_after < MEDIAN_TRANSMITTANCE)).nonzero().squeeze(1)
        median_id[t0:t1].index_copy_(0, p.key.index_select(0, crossing), p.g.index_select(0, crossing))
        if with_stats:
            w_max = torch.zeros(t1 - t0, dtype=dtype, device=device).scatter_reduce_(0, p.key, weight, "amax")
            is_max = ((weight > 0) & (weight == w_max.index_select(0, p.key))).nonzero().squeeze(1)
            # on exact ties the front-most Gaussian wins
            first = torch.full((t1 - t0,), len(weight), dtype=torch.int64, device=device)
            first.scatter_reduce_(0, p.key.index_select(0, is_max), is_max, "amin")
            has = (first < len(weight)).nonzero().squeeze(1)
            max_id[t0:t1].index_copy_(0, has, p.g.index_select(0, first.index_select(0, has)))
            weight_sum.index_add_(0, p.g, weight)
            touched.index_add_(0, p.g, torch.ones_like(p.g))
    return feat, 1.0 - t_final, median_id, max_id, weight_sum, touched, t_final, stored


def composite_backward(plan: _Plan, table: torch.Tensor, features: torch.Tensor, t_final: torch.Tensor,
                       grad_feat: torch.Tensor, grad_alpha: torch.Tensor, stored: list) -> torch.Tensor:
    """Gradients (D + 6, N): w.r.t. the features (D, N), then the table rows x, y, a, b, c, opacity.

    `grad_feat` is (D, pixels), `grad_alpha` (pixels,)."""
    n_feat = features.shape[0]
    grads = torch.zeros(n_feat + 6, table.shape[1], dtype=table.dtype, device=table.device)
    for chunk, p in zip(plan.chunks, stored):
        p = p if p is not None else _chunk_pairs(plan, chunk, table, geometry=True)
        if p is None:
            continue
        t0, t1 = chunk[0] * plan.tile_pixels, chunk[1] * plan.tile_pixels
        g_pix = grad_feat[:, t0:t1].index_select(1, p.key)
        dot = (features.index_select(1, p.g) * g_pix).sum(0)
        weight = p.alpha * p.t_before
        # sum over the pixel's later Gaussians of w <f, dL/dC>: the pixel's total minus the inclusive prefix
        q = (weight * dot).double()
        prefix = torch.cumsum(q, 0)
        prefix = prefix - (prefix - q).index_select(0, _first_of_pixel(p.key, t1 - t0))
        total = torch.zeros(t1 - t0, dtype=torch.float64, device=q.device).index_add_(0, p.key, q)
        behind = (total.index_select(0, p.key) - prefix).to(dot.dtype)
        from_alpha = (grad_alpha[t0:t1] * t_final[t0:t1]).index_select(0, p.key)
        d_alpha = p.t_before * dot + (from_alpha - behind) / (1.0 - p.alpha)
        ca, cb, cc, opacity = table[2:].index_select(1, p.g)
        # the clamp at ALPHA_MAX cuts the gradient, as in gsplat
        d_alpha = torch.where(opacity * p.vis <= ALPHA_MAX, d_alpha, torch.zeros_like(d_alpha))
        v_sigma = -p.alpha * d_alpha
        dx, dy = p.dx, p.dy
        per_pair = torch.cat([g_pix * weight, torch.stack([
            v_sigma * (ca * dx + cb * dy), v_sigma * (cb * dx + cc * dy),
            0.5 * v_sigma * dx * dx, v_sigma * dx * dy, 0.5 * v_sigma * dy * dy, p.vis * d_alpha])])
        grads.index_add_(1, p.g, per_pair)
    return grads


def _channel_first_table(means2d, conics, opacities) -> torch.Tensor:
    return torch.cat([means2d.detach().T, conics.detach().T, opacities.detach()[None]]).contiguous()


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, plan, n_pixels, with_stats):
        table = _channel_first_table(means2d, conics, opacities)
        feats = features.detach().T.contiguous()
        feat, alpha, median_id, max_id, weight_sum, touched, t_final, stored = composite_forward(
            plan, table, feats, n_pixels, with_stats, store=True)
        ctx.save_for_backward(table, feats, t_final)
        ctx.plan, ctx.stored = plan, stored
        outs = (feat.T, alpha, median_id) + ((max_id, weight_sum, touched) if with_stats else ())
        ctx.mark_non_differentiable(*outs[2:])
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_feat, grad_alpha, *_):
        table, features, t_final = ctx.saved_tensors
        grads = composite_backward(ctx.plan, table, features, t_final, grad_feat.T.contiguous(),
                                   grad_alpha.contiguous(), ctx.stored)
        d = features.shape[0]
        return grads[d:d + 2].T, grads[d + 2:d + 5].T, grads[d + 5], grads[:d].T, None, None, None


def tiles_to_image(x: torch.Tensor, tiles: TileLists, width: int, height: int) -> torch.Tensor:
    """Tile-major pixels (n_tiles * ts^2, ...) -> row-major image (H, W, ...)."""
    ts = tiles.tile_size
    rest = x.shape[1:]
    img = x.reshape(tiles.tiles_y, tiles.tiles_x, ts, ts, *rest).transpose(1, 2)
    return img.reshape(tiles.tiles_y * ts, tiles.tiles_x * ts, *rest)[:height, :width]


def composite(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
              features: torch.Tensor | None, radii: torch.Tensor, tiles: TileLists, width: int,
              height: int, with_stats: bool = False) -> CompositeResult:
    """Composite N projected Gaussians carrying `features` (N,D) into an image (see the module notes).

    Differentiable w.r.t. means2d, conics, opacities and features when gradients are enabled;
    `features=None` computes only alpha, the median ids and the statistics. On the CPU the compiled
    compositor runs when it is available (`composite_cpu.py`), this module's torch code otherwise.
    """
    if means2d.device.type == "cpu" and cpu_kernels.available():
        constants = (ALPHA_MAX, ALPHA_THRESHOLD, TRANSMITTANCE_MIN, MEDIAN_TRANSMITTANCE)
        return CompositeResult(*composite_cpu(means2d, conics, opacities, features, radii, tiles, width, height,
                                              with_stats, constants))
    plan = plan_pairs(means2d, radii, tiles, width, height)
    n_pixels = tiles.tiles_x * tiles.tiles_y * tiles.tile_size ** 2
    if features is None or not torch.is_grad_enabled():
        table = _channel_first_table(means2d, conics, opacities)
        feats = None if features is None else features.detach().T.contiguous()
        outs = composite_forward(plan, table, feats, n_pixels, with_stats, store=False)[:6]
        outs = (None if feats is None else outs[0].T,) + outs[1:]
    else:
        outs = _Composite.apply(means2d, conics, opacities, features, plan, n_pixels, with_stats)
        outs = tuple(outs) + ((None, None, None) if not with_stats else ())
    feat, alpha, median_id, max_id, weight_sum, touched = outs

    def image(x):
        return None if x is None else tiles_to_image(x, tiles, width, height)
    return CompositeResult(image(feat), image(alpha[:, None]), image(median_id), image(max_id),
                           weight_sum, touched)
