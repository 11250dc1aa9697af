"""Initial Gaussians: from a point cloud (SfM points, depth samples) or random points the cameras see."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from milo_backend.data.camera import Camera, camera_extent
from milo_backend.errors import MiloError
from milo_backend.gaussians.model import GaussianModel
from milo_backend.gaussians.visibility import visibility


def knn_scales(points: np.ndarray | torch.Tensor, k: int = 3) -> np.ndarray:
    """3DGS initial size: sqrt of the mean squared distance to the k nearest other points (N,).

    Squared distances are clamped at 1e-7 as in 3DGS, so duplicated points still get a positive size.
    """
    pts = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    pts = pts.astype(np.float64, copy=False)
    n = len(pts)
    if n < 2:
        return np.ones(n)  # no neighbour to measure: unit size, densification and the optimiser adapt it
    k = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=k + 1, workers=-1)  # first neighbour is the point itself
    return np.sqrt(np.maximum((dist[:, 1:] ** 2).mean(axis=1), 1e-7))


def init_from_points(points: np.ndarray | torch.Tensor, colors: np.ndarray | torch.Tensor,
                     opacity: float = 0.1, max_sh_degree: int = 3,
                     device: torch.device | str | None = None) -> GaussianModel:
    """Isotropic Gaussians at `points` (N,3) with RGB `colors` (N,3) in [0,1] (uint8 accepted),
    kNN scales and opacity 0.1 (3DGS). Tensors stay on their device unless `device` is given."""
    if device is None:
        device = points.device if isinstance(points, torch.Tensor) else "cpu"
    pts = torch.as_tensor(points, dtype=torch.float32).to(device).reshape(-1, 3)
    cols = torch.as_tensor(colors).to(device).reshape(-1, 3)
    cols = cols.float() / 255.0 if not torch.is_floating_point(cols) else cols.float()
    if len(pts) == 0:
        raise MiloError("no points to initialise the Gaussians from",
                        "the sparse reconstruction is empty: check that the photos overlap, or start "
                        "from random points (no point cloud)")
    if len(cols) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(cols)} colours")
    scales = torch.as_tensor(knn_scales(pts), dtype=torch.float32, device=device)
    return GaussianModel.from_points(pts, cols.clamp(0, 1), scales, opacity=opacity, max_sh_degree=max_sh_degree)


# A random start has at most this many points per pixel of one full-resolution view: a volume start is seen
# whole by most views, so more points than pixels only stack up (48 px views: 1,152 points, not 20k).
# Its Gaussians keep their kNN sizes, as in 3DGS: wide ones are seen, and so constrained, by many views.
# Capping them at 2 half-resolution pixels (to save render time) made each one fit a few training views and
# float in front of the others: 18.4 against 21.2 dB held out on the suite's `ground` (BENCHMARKS.md).
RANDOM_START_PER_PIXEL = 0.5


def random_start_count(cameras: list[Camera], requested: int) -> int:
    """How many random points to start from: `requested`, at most RANDOM_START_PER_PIXEL per pixel of
    the largest view."""
    pixels = max(c.width * c.height for c in cameras)
    return max(1, min(int(requested), int(RANDOM_START_PER_PIXEL * pixels)))


def init_random(cameras: list[Camera], n: int, rng: np.random.Generator, min_views: int = 2,
                depth_range: tuple[float, float] | None = None, seed_points: np.ndarray | None = None,
                seed_colors: np.ndarray | None = None, device: torch.device | str = "cpu") -> GaussianModel:
    """Grey Gaussians at `n` random points the cameras see (`random_points_in_view`), plus the
    `seed_points` (e.g. the few that triangulation found, with `seed_colors` in [0,1]), with kNN sizes."""
    pts = random_points_in_view(cameras, n, rng, min_views=min_views, depth_range=depth_range)
    cols = np.full_like(pts, 0.5)
    if seed_points is not None and len(seed_points):
        pts = np.concatenate([np.asarray(seed_points, np.float32), pts])
        cols = np.concatenate([np.asarray(seed_colors, np.float32).reshape(-1, 3), cols])
    return init_from_points(torch.as_tensor(pts).to(device), torch.as_tensor(cols).to(device))


def sparse_depth_range(points: np.ndarray, cameras: list[Camera], margin: float = 0.25) -> tuple[float, float] | None:
    """Depths (2nd-98th percentile over the cameras that see them, widened by `margin`) at which a few
    triangulated points say the scene lies; None for fewer than 20 points in view."""
    pts = np.asarray(points, np.float64)
    depths, seen = [], np.zeros(len(pts), bool)
    for c in cameras:
        uv, z = c.project(pts)
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < c.width) & (uv[:, 1] >= 0) & (uv[:, 1] < c.height)
        depths.append(z[inside])
        seen |= inside
    if seen.sum() < 20:
        return None
    d = np.concatenate(depths)
    lo, hi = np.percentile(d, [2, 98])
    return float(lo * (1 - margin)), float(hi * (1 + margin))


def view_focus_depth(cameras: list[Camera]) -> float:
    """Median depth, in the cameras, of the point closest (least squares) to all optical axes: where they
    look. Parallel or diverging axes: one camera extent."""
    centers = np.stack([c.center for c in cameras])
    axes = np.stack([c.world_to_cam[2, :3] for c in cameras])  # camera z axis in world coordinates
    # sum_i (I - a_i a_i^T) (x - c_i) = 0; ill-conditioned when all axes are parallel
    proj = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    a, b = proj.sum(0), np.einsum("nij,nj->i", proj, centers)
    depth = -1.0
    if np.linalg.cond(a) < 1e6:
        focus = np.linalg.solve(a, b)
        depth = float(np.median(np.einsum("ni,ni->n", focus[None] - centers, axes)))
    if not np.isfinite(depth) or depth <= 0:
        depth = camera_extent(cameras)  # parallel or diverging axes: assume the scene is about one extent away
    return depth


def view_depth_range(cameras: list[Camera]) -> tuple[float, float]:
    """Near/far depths that bracket the region the cameras look at, from their layout only.

    The focus depth D (`view_focus_depth`) and the camera extent R give [max(D - R, 0.05 D), D + R]: for
    cameras on a ring around an object that covers the whole inside of the ring, for a forward-facing
    capture a slab around D.
    """
    depth, extent = view_focus_depth(cameras), camera_extent(cameras)
    return max(depth - extent, 0.05 * depth), depth + extent


def random_points_in_view(cameras: list[Camera], n: int, rng: np.random.Generator,
                          min_views: int = 2, max_rounds: int = 50,
                          depth_range: tuple[float, float] | None = None) -> np.ndarray:
    """`n` random points (float32, (n,3)) inside the cameras' frusta between `depth_range` (default:
    `view_depth_range`), each seen by at least `min_views` cameras (fewer if there are fewer cameras).

    Each point is a uniformly random pixel of a random camera back-projected to a uniform depth.
    """
    near, far = depth_range or view_depth_range(cameras)
    min_views = min(min_views, len(cameras))
    c2w = np.stack([c.cam_to_world for c in cameras])
    intr = np.array([[c.fx, c.fy, c.cx, c.cy, c.width, c.height] for c in cameras], dtype=np.float64)
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(max_rounds):
        m = max(2 * (n - total), 1024)
        cam = rng.integers(0, len(cameras), m)
        fx, fy, cx, cy, w, h = intr[cam].T
        u, v = rng.random(m) * w, rng.random(m) * h
        z = near + rng.random(m) * (far - near)
        pc = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], axis=1)
        pts = np.einsum("nij,nj->ni", c2w[cam, :3, :3], pc) + c2w[cam, :3, 3]
        seen = visibility(torch.from_numpy(pts), cameras).n_views.numpy()
        pts = pts[seen >= min_views]
        kept.append(pts)
        total += len(pts)
        if total >= n:
            break
    points = np.concatenate(kept)[:n]
    if len(points) < n:
        raise MiloError(f"could not place {n} random points seen by {min_views} cameras",
                        "the cameras do not look at a common region: check the camera poses")
    return points.astype(np.float32)
