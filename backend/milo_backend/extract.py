"""The final mesh (method section 8): SDF-only refinement with the Gaussians frozen, marching
tetrahedra + edge filter, vertex colours from the photos, optional removal of unseen vertices.

Outputs of `write_mesh_outputs`: `OUT/mesh.ply` (binary PLY, uchar vertex colours, faces
counter-clockwise seen from outside), `OUT/mesh_stats.json` (vertices, faces, boundary edges,
non-manifold edges, connected components) and `OUT/previews/mesh_*.png` (photo | shaded mesh |
vertex colours, from a few training views).

`extract_run(OUT)` does it all for a finished run folder (the `extract` command); training calls
`extract_mesh` + `write_mesh_outputs` directly with its in-memory state.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from milo_backend.atomic import write_json
from milo_backend.config import Schedule, TrainConfig, read_run_config
from milo_backend.data.camera import Camera, camera_extent
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter, Reporter
from milo_backend.gaussians.model import GaussianModel
from milo_backend.mesh_io import write_mesh_ply
from milo_backend.mesh.raster import in_frustum
from milo_backend.mesh.view_space import ray_plane_depth, world_to_view
from milo_backend.mesh_phase import FUSION_TAU, MeshPhase, face_ids, project_points, surface_along_rays
from milo_backend.previews import save_panel, to_uint8
from milo_backend.render import render
from milo_backend.run_folder import RunFolder

# Section 8 at the base schedule (18k iterations): 1000 SDF-only steps, labels every 100; scaled
# with --iterations like every other interval (`Schedule.every`).
REFINE_ITERATIONS = 1000
REFINE_LABELS_EVERY = 100
LOOSE_TAU = 10.0  # x tau: the second colouring pass (vertices no view saw within tau)
UNSEEN_GREY = 0.5
NEIGHBOUR_ROUNDS = 8
# Decision (not in the published method): disconnected pieces with fewer than 1% of the mesh's faces
# are dropped unless the photos support them. Measured on the bunny: of the small pieces' faces inside
# the object's box, 84% lay more than 5% of the diagonal away from the true surface (floaters), against
# 0.2% in the large pieces; they made most of the Chamfer distance. But a small object of its own (a
# ring, a rod) is also a small piece: it is kept when it is the visible surface, on the Gaussians'
# rendered depth (within SUPPORT_TAU x tau), in at least FRAGMENT_MIN_VIEWS of the training views.
# Measured on the suite's `thin` scene (BENCHMARKS.md, "Small pieces of the mesh"): 12 of the 15 pieces
# on the true rods and ring were supported in 11-29 of 42 views, the pieces away from them mostly in 0-4.
# `--keep-fragments` keeps every piece.
FRAGMENT_FRACTION = 0.01
FRAGMENT_MIN_VIEWS = 0.15  # share of the training views (at least 3)
SUPPORT_TAU = 5.0


class ColouredMesh(NamedTuple):
    verts: np.ndarray   # (V,3) float32 world
    faces: np.ndarray   # (F,3) int64, counter-clockwise seen from outside
    colors: np.ndarray  # (V,3) uint8


# -- refinement and extraction ----------------------------------------------------------------------
def extract_mesh(phase: MeshPhase, image_fn: Callable[[Camera], torch.Tensor], *, iterations: int,
                 labels_every: int, remove_unseen: bool = False, keep_fragments: bool = False,
                 seed: int = 0, reporter: Reporter | None = None) -> ColouredMesh:
    """Refine the SDF of `phase` (started, or freshly started on a run trained without mesh) for
    `iterations` steps with its Gaussians frozen, then extract and colour the mesh, without the
    disconnected pieces with under FRAGMENT_FRACTION of its faces (unless `keep_fragments`).

    `image_fn(camera)` -> (H,W,3) photo in [0,1] at the camera's resolution.
    """
    reporter = reporter or NullReporter()
    if phase.started_at is None:
        reporter.warning("this run was trained without the mesh in the loop: the mesh is extracted post hoc "
                         "from the Gaussians alone (usually coarser)",
                         hint="train without --no-mesh for the method's mesh")
        phase.start(0)
    if phase.disabled:
        raise MiloError(f"no mesh can be extracted: {phase.disabled}",
                        hint="the Gaussians are too few or flat; train longer or on more overlapping photos")
    reporter.stage("extract", "Extracting the final mesh")
    phase.freeze_gaussians()
    phase.triangulate()
    depths = {}
    with torch.no_grad():
        for i, cam in enumerate(phase.cameras):
            depths[cam.name] = phase.render_fn(cam, False).depth_median.detach()
            reporter.progress("extract_depths", i + 1, len(phase.cameras))
    labels_every = phase.all_view_interval(labels_every)
    rng = random.Random(seed)
    order: list[int] = []
    for it in range(1, iterations + 1):
        if not order:
            order = rng.sample(range(len(phase.cameras)), len(phase.cameras))
        cam = phase.cameras[order.pop()]
        loss, metrics = phase.loss(cam, depths[cam.name])
        loss.backward()
        phase.step_sdf()
        if it % labels_every == 0 and it != iterations:
            phase.update_labels()
        reporter.progress("extract", it, iterations, loss=float(loss.detach()), faces=metrics["mesh_faces"])
    with torch.no_grad():
        m = phase.mesh()
        verts, faces = m.verts.detach(), m.faces
    if faces.shape[0] == 0:
        reporter.warning("the extracted mesh is empty: every pivot is on the same side of the surface",
                         hint="check that the cameras look at the object; training longer may help")
        return ColouredMesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint8))
    return finish_mesh(verts, faces, phase.cameras, image_fn, phase.tau, remove_unseen=remove_unseen,
                       keep_fragments=keep_fragments, depth_fn=lambda c: depths[c.name],
                       backend=phase.raster_backend, reporter=reporter)


def finish_mesh(verts: torch.Tensor, faces: torch.Tensor, cameras: Sequence[Camera],
                image_fn: Callable[[Camera], torch.Tensor], tau: float, *, remove_unseen: bool = False,
                keep_fragments: bool = False, depth_fn: Callable[[Camera], torch.Tensor] | None = None,
                backend: str = "auto", reporter: Reporter | None = None) -> ColouredMesh:
    """Any extracted surface (MILo's or the TSDF baseline's) to the output: small pieces dropped unless
    the Gaussians' depths `depth_fn(camera)` (H,W,1) support them, optionally unseen vertices too,
    vertex colours from the photos."""
    reporter = reporter or NullReporter()
    if not keep_fragments:
        verts, faces, dropped, kept = drop_fragments(verts, faces, FRAGMENT_FRACTION, cameras, depth_fn,
                                                     SUPPORT_TAU * tau, backend)
        reporter.log(f"removed {dropped} small disconnected pieces (under {FRAGMENT_FRACTION:.0%} of the faces "
                     f"each); kept {kept} that the photos support")
    if remove_unseen:
        keep = seen_by_any_camera(verts, cameras)
        verts, faces = keep_vertices(verts, faces, keep)
        reporter.log(f"removed {int((~keep).sum())} vertices that no camera sees")
    colors = vertex_colors(verts, faces, cameras, image_fn, tau=tau, backend=backend, reporter=reporter)
    return ColouredMesh(verts.cpu().numpy().astype(np.float32), faces.cpu().numpy().astype(np.int64),
                        to_uint8(colors))


def tsdf_baseline(model: GaussianModel, cameras: Sequence[Camera], image_fn: Callable[[Camera], torch.Tensor],
                  resolution: int, renderer: str = "auto", reporter: Reporter | None = None) -> ColouredMesh:
    """The TSDF-fusion baseline (`mesh/tsdf.py`) on the Gaussians' median depths of the training views,
    over the box holding 98% of the Gaussian centres per axis (grown by 5%), coloured like MILo's mesh."""
    from milo_backend.mesh.tsdf import tsdf_mesh

    reporter = reporter or NullReporter()
    means = model.params["means"].detach().double().cpu()
    lo, hi = torch.quantile(means, 0.01, dim=0), torch.quantile(means, 0.99, dim=0)
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    background = torch.zeros(3, device=means.device)

    def depth(cam):
        with torch.no_grad():
            return render(model.splats(), cam, sh_degree=0, background=background.to(model.device),
                          backend=renderer).depth_median
    reporter.stage("tsdf", f"TSDF fusion of {len(cameras)} depth maps ({resolution} voxels across)")
    verts, faces = tsdf_mesh(cameras, depth, lo, hi, resolution,
                             progress=lambda i, n: reporter.progress("tsdf", i, n))
    if len(faces) == 0:
        raise MiloError("the TSDF fusion found no surface", hint="check that the run's Gaussians render depth")
    # every piece is kept: a uniform grid gives a small object few faces beside a large background, and
    # the share rule of MILo's own extraction would drop it (the bunny: 0.6% of the faces)
    return finish_mesh(verts.float(), faces, cameras, image_fn, tau=FUSION_TAU * camera_extent(list(cameras)),
                       keep_fragments=True, backend="torch", reporter=reporter)


@torch.no_grad()
def vertex_colors(verts: torch.Tensor, faces: torch.Tensor, cameras: Sequence[Camera],
                  image_fn: Callable[[Camera], torch.Tensor], tau: float, backend: str = "auto",
                  reporter: Reporter | None = None) -> torch.Tensor:
    """(V,3) colours in [0,1]: per view, a vertex is visible when the face seen at its pixel is one of
    its own or lies within `tau` of it in depth; visible vertices average the photo (bilinear). A
    second pass with a loose tolerance (`LOOSE_TAU` x tau) colours the rest; never-seen ones are grey.

    Views are weighted by the cosine between the vertex normal and the direction to the camera: at a
    silhouette the pixel mixes the surface with whatever lies behind it, and gets almost no weight.
    """
    n = verts.shape[0]
    normals = vertex_normals(verts, faces)
    sums = verts.new_zeros(2, n, 3)
    weights = verts.new_zeros(2, n)
    for i, cam in enumerate(cameras):
        img = image_fn(cam).to(verts.device, verts.dtype)
        seen, z, surface, face = surface_along_rays(verts, verts, faces, cam, backend)
        own = (face == torch.arange(n, device=verts.device)[:, None]).any(dim=1)
        rgb = _bilinear(img, project_points(verts, cam)[1])
        to_cam = torch.nn.functional.normalize(torch.as_tensor(cam.center, dtype=verts.dtype, device=verts.device)
                                               - verts, dim=1)
        cos = (normals * to_cam).sum(dim=1).clamp_min(0.0) + 1e-3   # a grazing view still counts a little
        for k, tol in enumerate((tau, LOOSE_TAU * tau)):
            w = (seen & (face[:, 0] >= 0) & (own | ((z - surface).abs() <= tol))) * cos
            sums[k] += rgb * w[:, None]
            weights[k] += w
        if reporter is not None:
            reporter.progress("vertex_colors", i + 1, len(cameras))
    strict = sums[0] / weights[0].clamp_min(1e-12)[:, None]
    loose = sums[1] / weights[1].clamp_min(1e-12)[:, None]
    colors = torch.where(weights[0][:, None] > 0, strict, loose)
    return fill_from_neighbours(colors, (weights[0] > 0) | (weights[1] > 0), faces)


def fill_from_neighbours(colors: torch.Tensor, known: torch.Tensor, faces: torch.Tensor,
                         rounds: int = NEIGHBOUR_ROUNDS) -> torch.Tensor:
    """Vertices no photo colours (hidden in creases) take the mean of their coloured neighbours,
    spreading up to `rounds` edges; the rest stay grey."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    src, dst = torch.cat([e[:, 0], e[:, 1]]), torch.cat([e[:, 1], e[:, 0]])
    colors = torch.where(known[:, None], colors, torch.full_like(colors, UNSEEN_GREY))
    known = known.clone()
    for _ in range(rounds):
        if bool(known.all()):
            break
        ok = known[src]
        total = torch.zeros_like(colors).index_add_(0, dst[ok], colors[src[ok]])
        count = torch.zeros_like(colors[:, 0]).index_add_(0, dst[ok], torch.ones_like(dst[ok], dtype=colors.dtype))
        newly = ~known & (count > 0)
        colors = torch.where(newly[:, None], total / count.clamp_min(1)[:, None], colors)
        known |= newly
    return colors


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(V,3) unit area-weighted vertex normals (outwards for outward faces)."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    fn = torch.cross(b - a, c - a, dim=1)
    n = torch.zeros_like(verts).index_add_(0, faces.reshape(-1), fn.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(n, dim=1)


def _bilinear(img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """(N,3) image values at pixel coordinates uv (pixel centres at +0.5), edges clamped."""
    h, w = img.shape[:2]
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], dim=1)[None, None]
    out = torch.nn.functional.grid_sample(img.permute(2, 0, 1)[None], grid, mode="bilinear",
                                          padding_mode="border", align_corners=False)
    return out[0, :, 0].T


@torch.no_grad()
def seen_by_any_camera(verts: torch.Tensor, cameras: Sequence[Camera]) -> torch.Tensor:
    """(V,) bool: the vertex projects inside the image of at least one camera (in front of it)."""
    seen = torch.zeros(verts.shape[0], dtype=torch.bool, device=verts.device)
    for cam in cameras:
        seen |= project_points(verts, cam)[2]
    return seen


def keep_vertices(verts: torch.Tensor, faces: torch.Tensor, keep: torch.Tensor):
    """Drop the vertices not in `keep`, every face touching one, and vertices left without a face."""
    return compact(verts, faces[keep[faces].all(dim=1)])


def drop_fragments(verts: torch.Tensor, faces: torch.Tensor, fraction: float, cameras: Sequence[Camera] = (),
                   depth_fn: Callable[[Camera], torch.Tensor] | None = None, tol: float = 0.0,
                   backend: str = "auto"):
    """Drop the connected pieces with fewer than `fraction` of all faces, except those that
    `supported_views` finds in at least FRAGMENT_MIN_VIEWS of `cameras` (none without `depth_fn`).
    Returns (verts, faces, number of pieces dropped, number of small pieces kept)."""
    label, sizes = face_components(verts.shape[0], faces.cpu().numpy())
    small = sizes < fraction * faces.shape[0]
    supported = np.zeros_like(small)
    if depth_fn is not None and small.any() and len(cameras):
        views = supported_views(verts, faces, label, cameras, depth_fn, tol, backend)
        supported = small & (views >= max(3, math.ceil(FRAGMENT_MIN_VIEWS * len(cameras))))
    drop = small & ~supported
    keep = torch.as_tensor(~drop[label], device=faces.device)
    verts, faces = compact(verts, faces[keep])
    return verts, faces, int(drop.sum()), int(supported.sum())


@torch.no_grad()
def supported_views(verts: torch.Tensor, faces: torch.Tensor, piece: np.ndarray, cameras: Sequence[Camera],
                    depth_fn: Callable[[Camera], torch.Tensor], tol: float, backend: str = "auto") -> np.ndarray:
    """(pieces,) in how many views each piece (`piece`: the piece of each face) is the visible surface
    at some pixel where it lies within `tol` of the Gaussians' depth there: floaters are hidden or
    off the rendered surface, a real object is on it from many sides."""
    piece_t = torch.as_tensor(piece, device=faces.device)
    count = np.zeros(int(piece.max()) + 1, dtype=np.int64)
    for cam in cameras:
        rows = torch.nonzero(in_frustum(verts, faces, cam)).squeeze(1)
        if rows.numel() == 0:
            continue
        culled = faces[rows]
        ids = face_ids(verts, culled, cam, backend)
        hit = ids >= 0
        if not bool(hit.any()):
            continue
        r, c = torch.nonzero(hit, as_tuple=True)
        corners = world_to_view(verts, cam)[culled[ids[hit]]]                        # (N,3,3)
        ray = torch.stack([(c.to(verts) + 0.5 - cam.cx) / cam.fx, (r.to(verts) + 0.5 - cam.cy) / cam.fy,
                           torch.ones_like(c, dtype=verts.dtype)], dim=1)           # pixel centres, z = 1
        z = ray_plane_depth(corners, ray)
        gauss = depth_fn(cam).reshape(cam.height, cam.width).to(z)[r, c]
        on_surface = (gauss > 0) & ((z - gauss).abs() <= tol)
        seen = torch.unique(piece_t[rows[ids[hit]][on_surface]]).cpu().numpy()
        count[seen] += 1
    return count


def compact(verts: torch.Tensor, faces: torch.Tensor):
    """Remove the vertices no face uses and renumber the faces."""
    used = torch.zeros(verts.shape[0], dtype=torch.bool, device=verts.device)
    used[faces.reshape(-1)] = True
    remap = torch.cumsum(used.long(), 0) - 1
    return verts[used], remap[faces]


# -- statistics and files ---------------------------------------------------------------------------
def mesh_stats(n_verts: int, faces: np.ndarray) -> dict:
    """Counts a user checks before editing a mesh: vertices, faces, boundary edges (used by one face),
    non-manifold edges (three or more faces), connected components (of faces sharing vertices)."""
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    stats = {"vertices": int(n_verts), "faces": int(len(faces)), "boundary_edges": 0, "non_manifold_edges": 0,
             "connected_components": 0}
    if len(faces) == 0:
        return stats
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, uses = np.unique(e[:, 0] * n_verts + e[:, 1], return_counts=True)
    stats["boundary_edges"] = int((uses == 1).sum())
    stats["non_manifold_edges"] = int((uses > 2).sum())
    stats["connected_components"] = len(face_components(n_verts, faces)[1])
    return stats


def face_components(n_verts: int, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected pieces of a triangle mesh (faces sharing a vertex): (piece of each face (F,),
    faces per piece)."""
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_verts, n_verts))
    _, vertex_label = connected_components(adj, directed=False)
    _, face_label = np.unique(vertex_label[faces[:, 0]], return_inverse=True)
    return face_label.reshape(-1), np.bincount(face_label.reshape(-1))


def write_mesh_outputs(out: Path, mesh: ColouredMesh, preview_cameras: Sequence[Camera],
                       image_fn: Callable[[Camera], torch.Tensor], reporter: Reporter | None = None) -> dict:
    """mesh.ply, mesh_stats.json and previews/mesh_*.png; returns {"mesh": path, "mesh_stats": path}."""
    reporter = reporter or NullReporter()
    out = Path(out)
    run = RunFolder(out)
    ply = write_mesh_ply(run.mesh, mesh.verts, mesh.faces, mesh.colors)
    reporter.artifact("mesh", ply)
    stats = write_json(run.mesh_stats, mesh_stats(len(mesh.verts), mesh.faces))
    reporter.artifact("mesh_stats", stats)
    for path in mesh_previews(run.previews, mesh, preview_cameras, image_fn):
        reporter.artifact("mesh_preview", path)
    return {"mesh": str(ply.resolve()), "mesh_stats": str(stats.resolve())}


def mesh_previews(folder: Path, mesh: ColouredMesh, cameras: Sequence[Camera],
                  image_fn: Callable[[Camera], torch.Tensor], n: int = 3) -> list[Path]:
    """photo | mesh shaded (headlight) | mesh with its vertex colours, for `n` spread-out views."""
    if len(mesh.faces) == 0 or not cameras:
        return []
    from milo_backend.mesh_quality import render_mesh_colors

    verts = torch.from_numpy(mesh.verts).float()
    faces = torch.from_numpy(mesh.faces).long()
    vert_rgb = torch.from_numpy(mesh.colors).float().div(255)
    paths = []
    for k in sorted({round(i * len(cameras) / n) for i in range(n)}):
        cam = cameras[k]
        coloured, shade, _ = render_mesh_colors(verts, faces, vert_rgb, cam)
        tiles = [to_uint8(image_fn(cam)), to_uint8(shade.expand(-1, -1, 3)), to_uint8(coloured)]
        paths.append(save_panel(folder / f"mesh_{Path(cam.name).stem}.png", tiles))
    return paths


def final_mesh(phase: MeshPhase, out: Path, image_fn: Callable[[Camera], torch.Tensor], schedule: Schedule, *,
               remove_unseen: bool = False, keep_fragments: bool = False, seed: int = 0,
               reporter: Reporter | None = None) -> dict:
    """The end of `train`: extract and write the mesh. A mesh that cannot be built is a warning
    there (the Gaussians are already written); `extract OUT` reports it as an error."""
    reporter = reporter or NullReporter()
    try:
        mesh = extract_mesh(phase, image_fn, iterations=schedule.every(REFINE_ITERATIONS),
                            labels_every=schedule.every(REFINE_LABELS_EVERY), remove_unseen=remove_unseen,
                            keep_fragments=keep_fragments, seed=seed, reporter=reporter)
    except MiloError as exc:
        reporter.warning(f"no mesh was written: {exc.message}", hint=exc.hint)
        return {}
    return write_mesh_outputs(out, mesh, phase.cameras, image_fn, reporter)


# -- the `extract` command ----------------------------------------------------------------------------
def extract_run(run: str | Path, reporter: Reporter, device: str = "auto", iterations: int | None = None,
                remove_unseen: bool = False, renderer: str = "auto", keep_fragments: bool = False,
                tsdf: int | None = None) -> dict:
    """Extract the final mesh of a finished training run folder; returns the output paths. With `tsdf`
    (voxels across), the TSDF-fusion baseline instead, into mesh_tsdf.ply."""
    from milo_backend.run_folder import locked_run_folder

    if not Path(run).is_dir():
        raise MiloError(f"no training run at {run}", hint="pass the output folder of train", path=run)
    with locked_run_folder(run):
        return _extract_run(Path(run), reporter, device, iterations, remove_unseen, renderer, keep_fragments, tsdf)


def _extract_run(run: Path, reporter: Reporter, device: str, iterations: int | None, remove_unseen: bool,
                 renderer: str, keep_fragments: bool, tsdf: int | None = None) -> dict:
    from milo_backend.checkpoint import checkpoint_mesh_state, checkpoint_model, latest_checkpoint, load_checkpoint
    from milo_backend.data.images import ImageCache, training_image
    from milo_backend.device import select_device
    from milo_backend.evaluate import load_gaussians, read_cameras

    dev = select_device(device)
    if dev.type == "cuda":
        from milo_backend import gpu_kernels
        gpu_kernels.announce(reporter, ("gsplat", "nvdiffrast") if renderer != "torch" else ("nvdiffrast",))
    folder = RunFolder(run)
    cfg = read_run_config(folder.config)
    cameras = [c for c in read_cameras(folder.cameras) if c.split == "train"]
    if len(cameras) < 2:
        raise MiloError(f"{folder.cameras} has {len(cameras)} training view(s)",
                        hint="extraction needs the training cameras of the run (at least 2)", path=folder.cameras)
    state = None
    model = load_gaussians(run, reporter, dev)  # also repairs a damaged gaussians.ply, as render and eval do
    if latest_checkpoint(run) is not None:  # the unbaked state and the mesh phase's, to continue exactly
        ckpt = load_checkpoint(run)
        model, state = checkpoint_model(ckpt, dev), checkpoint_mesh_state(ckpt)
    sched = cfg.schedule
    background = torch.full((3,), 1.0 if cfg.white_background else 0.0, device=dev)
    images = ImageCache()
    if tsdf:
        mesh = tsdf_baseline(model, cameras, lambda c: training_image(images, c, background), tsdf, renderer, reporter)
        ply = write_mesh_ply(folder.mesh_tsdf, mesh.verts, mesh.faces, mesh.colors)
        reporter.artifact("mesh_tsdf", ply)
        return {"mesh_tsdf": str(ply.resolve()), **mesh_stats(len(mesh.verts), mesh.faces)}
    phase = make_phase(model, cameras, dev, cfg, sched, reporter, renderer)
    if state is not None and state.get("started_at") is not None:
        phase.load_state_dict(state)
    mesh = extract_mesh(phase, lambda c: training_image(images, c, background),
                        iterations=sched.every(REFINE_ITERATIONS) if iterations is None else iterations,
                        labels_every=sched.every(REFINE_LABELS_EVERY), remove_unseen=remove_unseen,
                        keep_fragments=keep_fragments, seed=cfg.seed, reporter=reporter)
    return write_mesh_outputs(run, mesh, cameras, lambda c: training_image(images, c, background), reporter)


def make_phase(model: GaussianModel, cameras: Sequence[Camera], device, cfg: TrainConfig, schedule: Schedule,
               reporter: Reporter, renderer: str = "auto") -> MeshPhase:
    """A MeshPhase over `model` rendering depth with the Gaussian renderer (colour is not needed)."""
    background = torch.zeros(3, device=device)

    def render_fn(cam: Camera, with_stats: bool):
        with torch.no_grad():
            return render(model.splats(), cam, sh_degree=0, background=background, backend=renderer,
                          with_stats=with_stats)

    return MeshPhase(model, cameras, render_fn, extent=camera_extent(list(cameras)),
                     max_pivots=cfg.pivot_budget(cameras), schedule=schedule,
                     scene=cfg.scene, reporter=reporter, seed=cfg.seed)

