"""A mesh's quality without ground truth, for real captures (`eval OUT` writes them into
`OUT/mesh_eval.json` under "without_ground_truth", beside what `eval OUT --gt MESH` writes there):

- sparse-point accuracy: distances from the well-measured SfM points that training held out of the
  Gaussians' initialisation (`data/points.py`) to the mesh, in shares of the scene extent;
- the mesh alone rendered from each held-out photo with its vertex colours (the MILo paper's mesh
  rendering protocol): PSNR and SSIM, next to the Gaussians' own;
- surface roughness: per face, the angle between its normal and the area-weighted mean normal of the
  faces around it (within a radius given as a share of the scene extent);
- pictures of the held-out views: photo | shaded mesh | coloured mesh.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from milo_backend.data.camera import Camera
from milo_backend.mesh.raster import cull_to_frustum, rasterize_mesh
from milo_backend.mesh.view_space import world_to_view

ROUGHNESS_RADIUS = 0.01      # share of the scene extent
ROUGHNESS_FACES = 50_000     # faces sampled (the statistic is a median / percentile)
ACCURACY_SHARES = (0.005, 0.01)


def face_normals_areas(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b, c = (verts[faces[:, i]] for i in range(3))
    cross = np.cross(b - a, c - a)
    area2 = np.linalg.norm(cross, axis=1)
    return cross / np.maximum(area2, 1e-30)[:, None], 0.5 * area2


def roughness(verts: np.ndarray, faces: np.ndarray, radius: float, max_faces: int = ROUGHNESS_FACES,
              seed: int = 0) -> dict:
    """Median and 90th percentile, in degrees, of the angle between a face's normal and the
    area-weighted mean normal of the faces whose centroids lie within `radius` of its own."""
    verts, faces = np.asarray(verts, np.float64), np.asarray(faces, np.int64)
    normals, areas = face_normals_areas(verts, faces)
    ok = areas > 0
    normals, areas, centroids = normals[ok], areas[ok], verts[faces[ok]].mean(axis=1)
    if len(centroids) < 2:
        return {"unavailable": "the mesh has fewer than 2 faces with an area"}
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(centroids), min(max_faces, len(centroids)), replace=False)
    tree = cKDTree(centroids)
    weighted = normals * areas[:, None]
    angles = np.empty(len(sample))
    # small chunks of queries: a dense mesh has thousands of faces within the radius, and the k-d
    # tree's answer is Python lists (a 300k-face mesh in chunks of 5,000 once took 17 GB)
    for s in range(0, len(sample), 500):
        rows = sample[s:s + 500]
        near = tree.query_ball_point(centroids[rows], radius)
        lengths = np.fromiter((len(x) for x in near), np.int64, len(near))
        flat = np.fromiter(itertools.chain.from_iterable(near), np.int64, int(lengths.sum()))
        mean = np.add.reduceat(weighted[flat], np.cumsum(lengths) - lengths, axis=0)  # every list holds its own face
        norm = np.linalg.norm(mean, axis=1)
        cos = np.einsum("ij,ij->i", normals[rows], mean) / np.maximum(norm, 1e-30)
        angles[s:s + len(rows)] = np.degrees(np.arccos(np.clip(np.where(norm > 0, cos, 1.0), -1.0, 1.0)))
    return {"median_deg": float(np.median(angles)), "p90_deg": float(np.percentile(angles, 90)),
            "radius": float(radius), "faces_sampled": int(len(sample))}


ACCURACY_REACH = 0.05       # distances are measured up to this share of the extent (beyond: a lower bound)


def point_accuracy(verts: np.ndarray, faces: np.ndarray, points: np.ndarray, extent: float) -> dict:
    """Distances from `points` to the mesh: median, 90th percentile and the shares within 0.5% and 1%
    of `extent`, all also in shares of `extent`.

    Only faces within ACCURACY_REACH x extent of some point are searched: the exact search subdivides
    faces to 0.2% of the extent, and a background of large faces far from every point would cost
    gigabytes. A point farther than the reach from the mesh counts as at the reach (a lower bound,
    reported as `beyond_reach`)."""
    from milo_backend.mesh_metrics import SurfaceDistance, point_triangle_distance

    if len(points) == 0:
        return {"unavailable": "no well-measured sparse points were held out (too few points, or a run "
                               "trained before this measurement existed)"}
    if len(faces) == 0:
        return {"unavailable": "the mesh has no faces"}
    verts, faces = np.asarray(verts, np.float64), np.asarray(faces, np.int64)
    points = np.asarray(points, np.float64)
    reach = ACCURACY_REACH * extent
    tri = verts[faces]
    centre = tri.mean(axis=1)
    circumradius = np.linalg.norm(tri - centre[:, None], axis=2).max(axis=1)
    nearest, _ = cKDTree(points).query(centre)
    large = circumradius > reach   # few; exact distances to every point, no subdivision
    small = faces[~large & (nearest <= circumradius + reach)]
    d = np.full(len(points), reach)
    if len(small):
        d = np.minimum(d, SurfaceDistance(verts, small, resolution=0.002 * extent)(points))
    # chunks of at most ~2M (point, face) pairs
    for f in np.array_split(np.flatnonzero(large), max(1, int(large.sum()) * len(points) // 2_000_000)):
        if len(f):
            a, b, c = (np.repeat(tri[f, i][None], len(points), 0).reshape(-1, 3) for i in range(3))
            p = np.repeat(points, len(f), axis=0)
            d = np.minimum(d, point_triangle_distance(p, a, b, c).reshape(len(points), len(f)).min(axis=1))
    out = {"points": int(len(points)), "median_pct": float(100 * np.median(d) / extent),
           "p90_pct": float(100 * np.percentile(d, 90) / extent),
           "beyond_reach": float(np.mean(d >= reach)), "reach_pct": 100 * ACCURACY_REACH}
    for share in ACCURACY_SHARES:
        out[f"within_{100 * share:g}pct"] = float(np.mean(d <= share * extent))
    return out


@torch.no_grad()
def render_mesh_colors(verts: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor,
                       camera: Camera) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mesh alone from `camera`: (H,W,3) vertex colours interpolated at each pixel centre's hit,
    (H,W,1) headlight shading, (H,W,1) coverage. `colors` (V,3) in [0,1]; empty pixels are 0."""
    visible = cull_to_frustum(verts, faces, camera)
    r = rasterize_mesh(verts, visible, camera, backend="torch")
    covered = (r.face_ids >= 0)[..., None]
    shade = (0.15 + 0.85 * (-r.normals[..., 2:3]).clamp_min(0)) * covered
    height, width = r.face_ids.shape
    image = torch.zeros(height * width, 3, dtype=colors.dtype)
    flat = r.face_ids.reshape(-1)
    pix = torch.nonzero(flat >= 0).squeeze(1)
    if len(pix):
        tri = visible[flat[pix]]
        v = world_to_view(verts, camera)
        a, b, c = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
        px = (pix % width).to(v.dtype) + 0.5
        py = torch.div(pix, width, rounding_mode="floor").to(v.dtype) + 0.5
        ray = torch.stack([(px - camera.cx) / camera.fx, (py - camera.cy) / camera.fy, torch.ones_like(px)], 1)
        n = torch.cross(b - a, c - a, dim=1)
        n_ray = (n * ray).sum(1)
        hit = ray * ((n * a).sum(1) / torch.where(n_ray != 0, n_ray, torch.ones_like(n_ray)))[:, None]
        # barycentric weights of the hit: areas of the sub-triangles opposite each vertex
        wa = (torch.cross(b - hit, c - hit, dim=1) * n).sum(1)
        wb = (torch.cross(c - hit, a - hit, dim=1) * n).sum(1)
        wc = (torch.cross(a - hit, b - hit, dim=1) * n).sum(1)
        w = torch.stack([wa, wb, wc], 1).clamp_min(0)
        w = w / w.sum(1, keepdim=True).clamp_min(1e-30)
        image[pix] = (w[..., None] * colors[tri]).sum(1)
    return image.reshape(height, width, 3), shade, covered.to(colors.dtype)


def evaluate_mesh_quality(run: Path, cameras: list[Camera], extent: float, gaussian_psnr: float | None,
                          image_fn, reporter) -> dict:
    """Everything above for the run's `mesh.ply` and held-out `cameras` (photos from `image_fn`);
    writes them into `mesh_eval.json` and pictures to previews/eval_mesh_<view>.png; returns them."""
    from milo_backend import losses
    from milo_backend.atomic import merge_json
    from milo_backend.data.points import SparsePoints
    from milo_backend.mesh_io import read_mesh, read_vertex_colors
    from milo_backend.previews import save_panel, to_uint8
    from milo_backend.run_folder import RunFolder

    folder = RunFolder(run)
    verts, faces = read_mesh(folder.mesh)
    colors = read_vertex_colors(folder.mesh)
    reporter.stage("mesh-eval", f"Scoring the mesh ({len(faces):,} faces) without ground truth")
    scored = SparsePoints.load(folder.scored_points).xyz if folder.scored_points.is_file() else np.zeros((0, 3))
    metrics = {"faces": int(len(faces)), "vertices": int(len(verts)), "extent": float(extent),
               "sparse_point_accuracy": point_accuracy(verts, faces, scored, extent),
               "roughness": roughness(verts, faces, ROUGHNESS_RADIUS * extent)}
    v, f = torch.from_numpy(verts).float(), torch.from_numpy(faces)
    rgb = (torch.from_numpy(colors).float() / 255 if colors is not None else torch.full((len(verts), 3), 0.5))
    per_view, pictures = [], []
    for i, cam in enumerate(cameras):
        image, shade, covered = render_mesh_colors(v, f, rgb, cam)
        photo = image_fn(cam)
        per_view.append({"name": cam.name, "psnr": float(losses.psnr(image, photo)),
                         "ssim": float(losses.ssim(image, photo)), "coverage": float(covered.mean())})
        path = save_panel(folder.previews / f"eval_mesh_{Path(cam.name).stem}.png",
                          [to_uint8(photo), to_uint8(shade.expand(-1, -1, 3)), to_uint8(image)])
        pictures.append(str(path))
        reporter.artifact("mesh_eval_picture", path)
        reporter.progress("mesh-eval", i + 1, len(cameras))
    metrics["mesh_views"] = ({"views": len(per_view),
                              "psnr": float(np.mean([p["psnr"] for p in per_view])),
                              "ssim": float(np.mean([p["ssim"] for p in per_view])),
                              "gaussians_psnr": gaussian_psnr, "per_view": per_view}
                             if per_view else {"unavailable": "the run has no held-out views"})
    metrics["pictures"] = pictures
    merge_json(folder.mesh_eval, {"without_ground_truth": metrics})
    reporter.artifact("mesh_eval", folder.mesh_eval)
    return metrics
