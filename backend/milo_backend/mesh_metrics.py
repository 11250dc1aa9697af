"""Geometric accuracy of a reconstructed mesh against a ground-truth mesh.

Both surfaces are sampled uniformly by area (a fixed seed: the same mesh always gives the same points,
so a mesh against itself scores exactly 0 / 1), and every sample's distance to the *other surface* is
exact point-to-triangle distance (not to the other samples, which would add the sampling spacing to
every figure):
- accuracy: mean distance of prediction samples to the ground truth;
- completeness: mean distance of ground-truth samples to the prediction;
- Chamfer: their mean; precision / recall: fractions of those distances below `threshold`, F-score
  their harmonic mean;
- outliers: the samples further than `OUTLIER_FACTOR` x threshold from the other surface (prediction
  side: floaters, ground-truth side: holes), their share and the Chamfer distance without them
  (`chamfer_inliers`), which tells a mesh that is off everywhere from a good mesh with a few far pieces.
Distances are in units of the ground truth's bounding-box diagonal. The prediction is cropped to the
ground truth's box grown by the threshold, so background reconstructed around an object is not judged.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

DEFAULT_THRESHOLD = 0.01  # of the ground-truth bbox diagonal
DEFAULT_SAMPLES = 100_000
OUTLIER_FACTOR = 3.0  # outliers: further than this many thresholds from the other surface


def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(n,3) points uniform by area on the triangles (deterministic for a given mesh and seed)."""
    if len(faces) == 0:
        return np.zeros((0, 3))
    a, b, c = (verts[faces[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not area.sum() > 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    f = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    return a[f] + u[:, None] * (b[f] - a[f]) + v[:, None] * (c[f] - a[f])


def point_triangle_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact distances (N,) from points p to triangles (a,b,c), row by row (Ericson, Real-Time
    Collision Detection 5.1.5: the closest point in the Voronoi region of a vertex, edge or face)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v_face, w_face = vb / denom, vc / denom
        q = a + v_face[:, None] * ab + w_face[:, None] * ac                      # inside the face
        t_ab = d1 / (d1 - d3)
        q = np.where(((vc <= 0) & (d1 >= 0) & (d3 <= 0))[:, None], a + t_ab[:, None] * ab, q)
        t_ac = d2 / (d2 - d6)
        q = np.where(((vb <= 0) & (d2 >= 0) & (d6 <= 0))[:, None], a + t_ac[:, None] * ac, q)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        q = np.where(((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0))[:, None], b + t_bc[:, None] * (c - b), q)
    q = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, q)                        # vertex regions
    q = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, q)
    q = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, q)
    # Degenerate (zero-area) triangles: the nearest of their three vertices is exact enough.
    bad = ~np.isfinite(q).all(axis=1)
    if bad.any():
        corners = np.stack([a[bad], b[bad], c[bad]], axis=1)
        nearest = np.argmin(np.linalg.norm(corners - p[bad, None], axis=2), axis=1)
        q[bad] = corners[np.arange(bad.sum()), nearest]
    return np.linalg.norm(p - q, axis=1)


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)


class SurfaceDistance:
    """Distances from points to a triangle mesh, exact up to `resolution`.

    Candidate triangles come from a k-d tree over the centroids of a subdivision of the mesh in
    which no edge exceeds `resolution` (longest-edge bisection; the pieces only index their parent
    triangle, whose exact distance is then computed). The nearest candidate is never farther than
    the true distance + `resolution`, and is the true nearest triangle in practice.
    """

    def __init__(self, verts: np.ndarray, faces: np.ndarray, resolution: float, k: int = 8):
        self.verts = np.asarray(verts, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        self.k = k
        centroids, parent = _subdivided_centroids(self.verts, self.faces, resolution)
        self.parent = parent
        self.tree = cKDTree(centroids) if len(centroids) else None

    def __call__(self, points: np.ndarray, chunk: int = 50_000) -> np.ndarray:
        return self.nearest(points, chunk)[0]

    def signed(self, points: np.ndarray) -> np.ndarray:
        """Distances with the sign of the side of the nearest triangle (> 0 in front of its
        counter-clockwise face: outside a closed, outward-oriented mesh)."""
        points = np.asarray(points, dtype=np.float64)
        d, tri = self.nearest(points)
        if self.tree is None:
            return d
        a, b, c = (self.verts[self.faces[tri, i]] for i in range(3))
        side = np.einsum("ij,ij->i", np.cross(b - a, c - a), points - a)
        return np.where(side < 0, -d, d)

    def nearest(self, points: np.ndarray, chunk: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
        """(distances (N,), index of the nearest triangle (N,))."""
        points = np.asarray(points, dtype=np.float64)
        if self.tree is None:
            return np.full(len(points), np.inf), np.full(len(points), -1)
        k = min(self.k, self.tree.n)
        out = np.empty(len(points))
        which = np.empty(len(points), dtype=np.int64)
        for s in range(0, len(points), chunk):
            p = points[s:s + chunk]
            _, nn = self.tree.query(p, k=k)
            cand = self.parent[nn.reshape(len(p), k)]                              # (n,k)
            tri = self.faces[cand]                                                # (n,k,3)
            pk = np.repeat(p, k, axis=0)
            d = point_triangle_distance(pk, *(self.verts[tri[..., i].reshape(-1)] for i in range(3)))
            d = d.reshape(len(p), k)
            best = d.argmin(axis=1)
            out[s:s + chunk] = d[np.arange(len(p)), best]
            which[s:s + chunk] = cand[np.arange(len(p)), best]
        return out, which


def _subdivided_centroids(verts: np.ndarray, faces: np.ndarray, max_edge: float):
    tri = verts[faces]                                                            # (F,3,3)
    parent = np.arange(len(faces))
    done_c, done_p = [], []
    for _ in range(64):  # each round halves the longest edge of the pieces still too long
        edges = np.linalg.norm(tri - np.roll(tri, -1, axis=1), axis=2)            # edge i: v_i -> v_{i+1}
        longest = edges.argmax(axis=1)
        small = edges.max(axis=1) <= max_edge
        done_c.append(tri[small].mean(axis=1))
        done_p.append(parent[small])
        tri, parent, longest = tri[~small], parent[~small], longest[~small]
        if len(tri) == 0:
            break
        # rotate so that the longest edge is v0 -> v1, then split it at its midpoint
        order = (longest[:, None] + np.arange(3)[None]) % 3
        t = np.take_along_axis(tri, order[..., None], axis=1)
        mid = 0.5 * (t[:, 0] + t[:, 1])
        tri = np.concatenate([np.stack([t[:, 0], mid, t[:, 2]], 1), np.stack([mid, t[:, 1], t[:, 2]], 1)])
        parent = np.concatenate([parent, parent])
    if len(tri):  # pathological slivers: keep what is left as it is
        done_c.append(tri.mean(axis=1))
        done_p.append(parent)
    return np.concatenate(done_c), np.concatenate(done_p)


def bbox_diagonal(verts: np.ndarray) -> float:
    return float(np.linalg.norm(verts.max(axis=0) - verts.min(axis=0)))


def mesh_metrics(pred_verts: np.ndarray, pred_faces: np.ndarray, gt_verts: np.ndarray, gt_faces: np.ndarray,
                 threshold: float = DEFAULT_THRESHOLD, n_samples: int = DEFAULT_SAMPLES, seed: int = 0,
                 crop: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Accuracy, completeness, Chamfer, precision, recall, F-score (see the module docstring).

    `crop` (lo, hi): judge both surfaces inside this box only, instead of the ground truth's box grown by
    the threshold (e.g. objects standing on a ground that is not scored: the box starts above it)."""
    pred_verts, gt_verts = np.asarray(pred_verts, np.float64), np.asarray(gt_verts, np.float64)
    pred_faces, gt_faces = np.asarray(pred_faces, np.int64), np.asarray(gt_faces, np.int64)
    diag = bbox_diagonal(gt_verts)
    tol = threshold * diag
    lo, hi = (gt_verts.min(axis=0) - tol, gt_verts.max(axis=0) + tol) if crop is None else \
        (np.asarray(crop[0], np.float64), np.asarray(crop[1], np.float64))
    in_box = (pred_verts >= lo).all(axis=1) & (pred_verts <= hi).all(axis=1) if len(pred_verts) else \
        np.zeros(0, dtype=bool)
    # Faces whose bounding box meets the grown box: the part of the prediction that is judged.
    if len(pred_faces):
        tri = pred_verts[pred_faces]
        meets = (tri.max(axis=1) >= lo).all(axis=1) & (tri.min(axis=1) <= hi).all(axis=1)
        judged = pred_faces[meets]
    else:
        judged = pred_faces
    resolution = 0.5 * tol

    pred_pts = sample_surface(pred_verts, judged, n_samples, seed)
    pred_pts = pred_pts[(pred_pts >= lo).all(axis=1) & (pred_pts <= hi).all(axis=1)]
    gt_pts = sample_surface(gt_verts, gt_faces, n_samples, seed)
    if crop is not None:
        gt_pts = gt_pts[(gt_pts >= lo).all(axis=1) & (gt_pts <= hi).all(axis=1)]
    acc_signed = SurfaceDistance(gt_verts, gt_faces, resolution).signed(pred_pts) / diag
    acc = np.abs(acc_signed)
    comp = SurfaceDistance(pred_verts, judged, resolution)(gt_pts) / diag

    precision = float((acc < threshold).mean()) if len(acc) else 0.0
    recall = float((comp < threshold).mean()) if len(comp) else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    accuracy = float(acc.mean()) if len(acc) else float("inf")
    completeness = float(comp.mean()) if len(comp) else float("inf")
    far = OUTLIER_FACTOR * threshold
    acc_in, comp_in = acc[acc <= far], comp[comp <= far]
    chamfer_inliers = 0.5 * float(acc_in.mean() + comp_in.mean()) if len(acc_in) and len(comp_in) else float("inf")
    return {"accuracy": accuracy, "completeness": completeness, "chamfer": 0.5 * (accuracy + completeness),
            "precision": precision, "recall": recall, "fscore": fscore, "threshold": threshold,
            # median signed distance of the prediction to the ground truth (< 0: inside it): a mesh
            # that is shrunk or inflated as a whole shows here, noise does not
            "offset": float(np.median(acc_signed)) if len(acc_signed) else float("nan"),
            "outlier_distance": far, "chamfer_inliers": chamfer_inliers,
            "outliers_prediction": float((acc > far).mean()) if len(acc) else 0.0,
            "outliers_gt": float((comp > far).mean()) if len(comp) else 0.0,
            "vertices": int(len(pred_verts)), "vertices_in_box": int(in_box.sum()),
            "faces": int(len(pred_faces)), "gt_diagonal": diag, "samples": n_samples,
            "units": "fraction of the ground-truth bounding-box diagonal"}


def read_crop(path) -> tuple[np.ndarray, np.ndarray]:
    """A crop box file: JSON {"lo": [x, y, z], "hi": [x, y, z]} (the scene suite writes one per scene)."""
    import json
    from pathlib import Path

    from milo_backend.errors import MiloError

    try:
        box = json.loads(Path(path).read_text(encoding="utf-8"))
        lo, hi = np.asarray(box["lo"], np.float64), np.asarray(box["hi"], np.float64)
    except FileNotFoundError:
        raise MiloError(f"crop box file not found: {path}", hint="pass a JSON file with lo and hi corners",
                        path=path) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise MiloError(f"{path} is not a crop box ({exc})",
                        hint='write {"lo": [x, y, z], "hi": [x, y, z]}', path=path) from None
    if lo.shape != (3,) or hi.shape != (3,) or not (hi > lo).all():
        raise MiloError(f"{path}: the crop box needs 3 coordinates per corner with hi > lo", path=path,
                        hint='write {"lo": [x, y, z], "hi": [x, y, z]}')
    return lo, hi


def evaluate_mesh(source, gt, threshold: float = DEFAULT_THRESHOLD, n_samples: int = DEFAULT_SAMPLES,
                  reporter=None, crop=None) -> dict:
    """`eval OUT --gt MESH [--crop BOX.json]`: metrics of OUT/mesh.ply (or a mesh file) against the
    ground-truth mesh file `gt`, optionally judged inside the box `crop` ((lo, hi) or a box file);
    written to OUT/mesh_eval.json when OUT is a run folder."""
    from pathlib import Path

    from milo_backend.atomic import merge_json
    from milo_backend.errors import MiloError
    from milo_backend.mesh_io import read_mesh
    from milo_backend.run_folder import RunFolder

    source = Path(source)
    mesh_path = RunFolder(source).mesh if source.is_dir() else source
    if source.is_dir() and not mesh_path.exists():
        raise MiloError(f"no mesh in {source}", hint="run `extract` on the run first (or train without --no-extract)",
                        path=mesh_path)
    if not threshold > 0:
        raise MiloError(f"the threshold must be positive, got {threshold}",
                        hint="pass --threshold as a fraction of the ground truth's bbox diagonal, e.g. 0.01")
    pred_v, pred_f = read_mesh(mesh_path)
    if crop is not None and not isinstance(crop, tuple):
        crop = read_crop(crop)
    gt_v, gt_f = read_mesh(gt)
    if len(gt_f) == 0 or not bbox_diagonal(gt_v) > 0:
        raise MiloError(f"the ground truth {gt} has no surface", hint="pass a triangle mesh with faces", path=gt)
    if reporter is not None:
        reporter.stage("eval_mesh", f"Comparing {mesh_path.name} with {Path(gt).name}")
    metrics = {"mesh": str(mesh_path.resolve()), "gt": str(Path(gt).resolve()),
               **mesh_metrics(pred_v, pred_f, gt_v, gt_f, threshold=threshold, n_samples=n_samples, crop=crop)}
    if source.is_dir():
        merge_json(RunFolder(source).mesh_eval, metrics)  # keeps `eval OUT`'s "without_ground_truth"
        if reporter is not None:
            reporter.artifact("mesh_eval", RunFolder(source).mesh_eval)
    return metrics
