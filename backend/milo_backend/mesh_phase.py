"""The mesh-in-the-loop phase: one object holding its state (method sections 3-5 and 7).

    phase = MeshPhase(model, cameras, render_fn, extent=R_cam, max_pivots=..., schedule=cfg.schedule)
    phase.start(it)                      # at schedule.mesh_from
    loss, metrics = phase.loss(cam, gauss_out.depth_median)   # every iteration, added to the RGB loss
    ...backward, Gaussian optimisers step...
    phase.after_step(it)                 # SDF step + the periodic events below

Timeline (all intervals are the scaled ones of `config.Schedule`, counted from the start):
- start: the surface Gaussians are drawn by importance (frozen from here: the set of Gaussians no
  longer changes after the second simplification), their pivots tetrahedralised, the SDF fused from
  the Gaussians' median depths into a fixed `base` with a learnable `shift` (Adam, lr 0.025), and
  the visibility labels computed;
- every iteration: the mesh is extracted from the current pivots and SDF, rendered in the training
  view and compared with the Gaussians' median depth: depth and normal terms (gradients reach both
  the Gaussians and the SDF), plus the occupancy centre and label regularisers on the SDF;
- Delaunay every `delaunay_every`; fusion reset (blended into `base`) every `sdf_reset_every`
  until `sdf_reset_until`, purely learned after; labels every `labels_every`.

Final extraction (`extract.py`) reuses this object with the Gaussians frozen (`freeze_gaussians`).

The two QUIRKs of the notes: the label BCE is a per-element mean (`losses.occupancy_label_loss`), and
the labels' depth margin is scale-free (`LABEL_MARGIN` below).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from milo_backend import losses
from milo_backend.config import Schedule
from milo_backend.data.camera import Camera
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter, Reporter
from milo_backend.gaussians.importance import importance_scores
from milo_backend.gaussians.model import GaussianModel
from milo_backend.mesh import (PIVOTS_PER_GAUSSIAN, TetMesh, base_from_sdf, cull_to_frustum, delaunay,
                               initial_sdf, marching_tetrahedra, pivots, rasterize_mesh, reset_base,
                               sdf_from_base_shift, surface_gaussians)
from milo_backend.mesh.view_space import project, ray_plane_depth, world_to_view
from milo_backend.render import RenderOutput

SDF_LR = 0.025
FUSION_TAU = 0.002  # x R_cam: truncation of the depth fusion (section 5)
# Decision on the second QUIRK (section 7): the published labels count a pivot up to 1.0 world unit
# behind the visible mesh as "in front", a constant in the units of whatever the SfM produced
# (about a quarter of the camera extent in its scenes, larger than a whole object in ours). We use a
# scale-free margin of one fusion truncation (0.002 R_cam): it absorbs the depth discretisation of
# the mesh render without labelling the shell under the surface as free space, which would erode
# the mesh.
LABEL_MARGIN = FUSION_TAU
DELAUNAY_JITTER = 1e-6  # x R_cam


@dataclass(frozen=True)
class MeshLossWeights:
    """The weights of the four mesh terms of section 7."""

    depth: float = 0.05
    normal: float = 0.05
    centre: float = 0.005
    labels: float = 0.005


RenderFn = Callable[[Camera, bool], RenderOutput]  # (camera, with_stats) -> Gaussian render


class MeshPhase:
    """Frozen Gaussian subset, tetrahedra, SDF (base + learnable shift, its Adam), labels."""

    def __init__(self, model: GaussianModel, cameras: Sequence[Camera], render_fn: RenderFn, *,
                 extent: float, max_pivots: int, schedule: Schedule, scene: str = "outdoor",
                 weights: MeshLossWeights = MeshLossWeights(), reporter: Reporter | None = None,
                 raster_backend: str = "auto", delaunay_backend: str = "auto", seed: int = 0):
        self.model = model
        self.cameras = list(cameras)
        self.render_fn = render_fn
        self.extent = float(extent)
        self.tau = FUSION_TAU * self.extent
        self.max_pivots = int(max_pivots)
        self.schedule = schedule
        self.scene = scene
        self.weights = weights
        self.reporter = reporter or NullReporter()
        self.raster_backend = raster_backend
        self.delaunay_backend = delaunay_backend
        self.seed = seed
        self.started_at: int | None = None
        self.disabled: str | None = None  # why the mesh could not be built (then no mesh terms)
        self.idx: torch.Tensor | None = None
        self.n_gaussians = 0
        self.tets: torch.Tensor | None = None
        self.base: torch.Tensor | None = None
        self.shift: torch.nn.Parameter | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.labels: torch.Tensor | None = None
        self._frozen_pivots: tuple[torch.Tensor, torch.Tensor] | None = None
        self._warned_empty = False

    # -- state ---------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.started_at is not None and self.disabled is None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def pivots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pivots (P,3) and radii (P,) of the frozen subset; differentiable in the Gaussians unless
        they are frozen."""
        if self._frozen_pivots is not None:
            return self._frozen_pivots
        if len(self.model) != self.n_gaussians:  # the subset indexes the Gaussians of the start
            raise RuntimeError(f"the mesh subset was chosen among {self.n_gaussians} Gaussians, the model now "
                               f"has {len(self.model)}: the set of Gaussians must not change in the mesh phase")
        s = self.model.splats()
        return pivots(s.means, s.scales, s.quats, self.idx, n_total=self.n_gaussians)

    def sdf(self) -> torch.Tensor:
        return sdf_from_base_shift(self.base, self.shift)

    def mesh(self, with_edge_filter: bool = True) -> TetMesh:
        """The current mesh (rebuilt from the current pivots and SDF; faces with a non-finite vertex
        are dropped, so a diverging Gaussian cannot poison the loss)."""
        piv, radii = self.pivots()
        m = marching_tetrahedra(piv, self.sdf(), self.tets, radii if with_edge_filter else None)
        finite = torch.isfinite(m.verts.detach()).all(dim=1)
        if not bool(finite.all()):
            m = TetMesh(m.verts, m.faces[finite[m.faces].all(dim=1)], m.vert_edges)
        return m

    # -- schedule events -------------------------------------------------------------------------
    def start(self, it: int) -> None:
        """Choose the surface Gaussians, tetrahedralise, fuse the SDF, label. Builds nothing (and
        warns) if the pivots do not span a volume."""
        self.started_at = it
        self.n_gaussians = len(self.model)
        n = self.n_gaussians
        self.reporter.stage("mesh", "Building the mesh: surface Gaussians, Delaunay, SDF fusion")
        scores, views_seen = importance_scores(lambda c: self.render_fn(c, True), self.cameras, n,
                                               scene=self.scene, reporter=self.reporter)
        budget = self.max_pivots // PIVOTS_PER_GAUSSIAN
        gen = torch.Generator(device=scores.device).manual_seed(self.seed)
        self.idx = surface_gaussians(scores, views_seen, budget, generator=gen).to(self.device)
        eligible = int((views_seen > 1).sum())
        if eligible <= budget:
            self.reporter.log(f"the pivot budget ({self.max_pivots} pivots = {budget} Gaussians) is larger than "
                              f"the scene: the mesh uses all {eligible} Gaussians seen in 2+ views")
        self.reporter.log(f"mesh: {self.idx.numel()} of {n} Gaussians, "
                          f"{self.idx.numel() * PIVOTS_PER_GAUSSIAN} pivots")
        if not self.triangulate():
            return
        self.base = base_from_sdf(self.fused_sdf()).detach()
        self.shift = torch.nn.Parameter(torch.zeros_like(self.base))
        self.optimizer = torch.optim.Adam([self.shift], lr=SDF_LR, eps=1e-15)
        self.update_labels()

    def after_step(self, it: int) -> None:
        """Step the SDF shift, then the periodic events of the schedule."""
        if not self.active:
            return
        self.step_sdf()
        k = it - self.started_at
        if k <= 0:
            return
        sch = self.schedule
        if k % sch.delaunay_every == 0:
            self.triangulate()
        if it <= sch.sdf_reset_until and k % self.all_view_interval(sch.sdf_reset_every) == 0:
            self.reset_sdf()
        if k % self.all_view_interval(sch.labels_every) == 0:
            self.update_labels()

    def all_view_interval(self, interval: int) -> int:
        """Decision: fusion resets and labels render every view; at most once per epoch (as many
        iterations as views). Never binding for the published 18k schedule with up to 200 views; on
        a short CPU run it keeps these passes from costing more than the training itself."""
        return max(interval, len(self.cameras))

    def step_sdf(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def triangulate(self) -> bool:
        """Delaunay of the current pivots (connectivity held until the next call). False, with a
        warning, when the pivots do not span a volume: at the start the phase is then disabled,
        later the previous tetrahedra are kept."""
        with torch.no_grad():
            piv, _ = self.pivots()
            # A negligible deterministic jitter breaks the exact coplanarities of axis-aligned boxes on
            # flat surfaces, which the exact-predicate Delaunay handles hundreds of times slower.
            gen = torch.Generator().manual_seed(self.seed)
            jitter = torch.randn(piv.shape, generator=gen, dtype=torch.float64) * (DELAUNAY_JITTER * self.extent)
            piv = piv.detach().double() + jitter.to(piv.device)
        try:
            self.tets = delaunay(piv, backend=self.delaunay_backend).to(self.device)
        except MiloError as exc:
            if self.tets is None:
                self.disabled = exc.message
                self.reporter.warning(f"no mesh: {exc.message} Training continues without mesh losses.",
                                      hint=exc.hint)
            else:
                self.reporter.warning(f"re-triangulation failed ({exc.message}); keeping the previous "
                                      "tetrahedra", hint=exc.hint)
            return False
        return True

    @torch.no_grad()
    def fused_sdf(self) -> torch.Tensor:
        """Depth-fusion SDF of the current pivots from the Gaussians' median depths (section 5)."""
        piv, _ = self.pivots()
        return initial_sdf(self.cameras, lambda c: self.render_fn(c, False).depth_median, piv.detach(),
                           tau=self.tau, reporter=self.reporter)

    def reset_sdf(self) -> None:
        """Blended fusion reset: occupancy <- clamp(0.4 fused + 0.6 current), shift kept."""
        self.base = reset_base(self.base, self.shift.detach(), self.fused_sdf()).detach()

    @torch.no_grad()
    def update_labels(self) -> None:
        m = self.mesh()
        piv, _ = self.pivots()
        self.labels = visibility_labels(piv.detach(), m.verts.detach(), m.faces, self.cameras,
                                        margin=LABEL_MARGIN * self.extent, backend=self.raster_backend)

    # -- the loss ---------------------------------------------------------------------------------
    def loss(self, camera: Camera, depth_median: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Weighted sum of the mesh terms for one view, and their values (floats) for the log.

        `depth_median` (H,W,1) is the Gaussians' median depth for `camera` (with gradients during
        training; a frozen render during the final refinement).
        """
        w = self.weights
        m = self.mesh()
        faces = cull_to_frustum(m.verts, m.faces, camera)
        metrics = {"mesh_faces": int(m.faces.shape[0])}
        if m.faces.shape[0] == 0 and not self._warned_empty:
            self._warned_empty = True
            self.reporter.warning("the mesh is empty: every pivot is on the same side of the surface",
                                  hint="training continues; the mesh terms are zero until a surface appears "
                                       "(check that the cameras look at the object)")
        logits = self.base + self.shift
        total = w.centre * losses.occupancy_centre_loss(torch.sigmoid(logits[::PIVOTS_PER_GAUSSIAN]))
        total = total + w.labels * losses.occupancy_label_loss(logits, self.labels)
        if faces.shape[0] > 0:
            out = rasterize_mesh(m.verts, faces, camera, backend=self.raster_backend)
            depth = losses.mesh_depth_loss(out.depth, depth_median, out.mask, self.extent)
            normal = losses.mesh_normal_loss(out.normals, losses.depth_to_normals(depth_median, camera),
                                             out.mask)
            total = total + w.depth * depth + w.normal * normal
            metrics.update(mesh_depth=float(depth.detach()), mesh_normal=float(normal.detach()))
        return total, metrics

    # -- final extraction --------------------------------------------------------------------------
    def freeze_gaussians(self) -> None:
        """From here the pivots are constants (the Gaussians no longer move): only the SDF learns."""
        with torch.no_grad():
            self._frozen_pivots = None
            piv, radii = self.pivots()
            self._frozen_pivots = (piv.detach(), radii.detach())

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.started_at is None:
            return {"started_at": None}
        # copies: a snapshot must not follow later in-place updates (Adam steps the shift in place)
        d = {"started_at": self.started_at, "disabled": self.disabled, "n_gaussians": self.n_gaussians,
             "idx": self.idx.cpu().clone()}
        if self.disabled is None:
            d.update(tets=self.tets.to("cpu", torch.int32, copy=True), base=self.base.cpu().clone(),
                     shift=self.shift.detach().cpu().clone(), optimizer=copy.deepcopy(self.optimizer.state_dict()),
                     labels=self.labels.cpu().clone())
        return d

    def load_state_dict(self, d: dict) -> None:
        self.started_at = d["started_at"]
        if self.started_at is None:
            return
        self.disabled = d["disabled"]
        self.n_gaussians = d["n_gaussians"]
        if self.n_gaussians != len(self.model):
            raise MiloError(f"the mesh state was saved for {self.n_gaussians} Gaussians but the model has "
                            f"{len(self.model)}", hint="the checkpoint and the Gaussians come from different runs")
        dev = self.device
        self.idx = d["idx"].to(dev, copy=True)
        if self.disabled is None:
            self.tets = d["tets"].to(dev, torch.int64, copy=True)
            self.base = d["base"].to(dev, copy=True)
            self.shift = torch.nn.Parameter(d["shift"].to(dev, copy=True))
            self.optimizer = torch.optim.Adam([self.shift], lr=SDF_LR, eps=1e-15)
            self.optimizer.load_state_dict(d["optimizer"])
            self.labels = d["labels"].to(dev, copy=True)


@torch.no_grad()
def visibility_labels(points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor,
                      cameras: Sequence[Camera], margin: float, backend: str = "auto") -> torch.Tensor:
    """(P,) float labels: 0 (outside) for points that some camera sees in front of the mesh (or not
    more than `margin` behind its visible surface, or where the mesh is absent), 1 (inside) for the
    rest, including points that no camera sees."""
    outside = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for cam in cameras:
        seen, z, surface, _ = surface_along_rays(points, verts, faces, cam, backend)
        outside |= seen & (z <= surface + margin)
    return (~outside).to(points.dtype)


@torch.no_grad()
def surface_along_rays(points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor, camera: Camera,
                       backend: str = "auto"):
    """Where each point's own camera ray meets the mesh surface visible at its pixel.

    Returns (seen (N,) bool: in front of the camera and inside the image; z (N,) the points' depth;
    surface (N,) depth of the visible face's plane along the point's ray, +inf where no face is
    seen (or the ray grazes it); face (N,3) the vertex indices of the face seen there, -1 for
    none). Exact ray rather than the pixel centre: no half-pixel depth error on slanted surfaces.
    """
    pc, uv, seen = project_points(points, camera)
    z = pc[:, 2]
    face = torch.full((z.shape[0], 3), -1, dtype=torch.int64, device=z.device)
    surface = torch.full_like(z, float("inf"))
    f = cull_to_frustum(verts, faces, camera) if faces.shape[0] else faces
    if f.shape[0] == 0:
        return seen, z, surface, face
    ids = face_ids(verts, f, camera, backend)
    col = uv[:, 0].floor().long().clamp(0, camera.width - 1)
    row = uv[:, 1].floor().long().clamp(0, camera.height - 1)
    local = torch.where(seen, ids[row, col], torch.full_like(col, -1))
    hit = local >= 0
    face = torch.where(hit[:, None], f[local.clamp_min(0)], face)
    corners = world_to_view(verts[f[local.clamp_min(0)].reshape(-1)], camera).reshape(-1, 3, 3)
    ray = pc / torch.where(z > 0, z, torch.ones_like(z))[:, None]              # z = 1 along the ray
    surface = torch.where(hit, ray_plane_depth(corners, ray), surface)
    return seen, z, surface, face


def project_points(points: torch.Tensor, camera: Camera):
    """(view-space points (N,3), pixel coordinates (N,2), seen (N,) bool: in front of the camera and
    inside its image)."""
    pc = world_to_view(points, camera)
    uv = project(pc, camera)
    seen = (pc[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) \
        & (uv[:, 1] < camera.height)
    return pc, uv, seen


@torch.no_grad()
def face_ids(verts: torch.Tensor, faces: torch.Tensor, camera: Camera, backend: str = "auto") -> torch.Tensor:
    """(H,W) row of `faces` (already frustum-culled) seen at each pixel centre, -1 where none.
    On the CPU only the z-buffer pass of the torch rasteriser runs (no depth, normals, antialiasing)."""
    if backend == "torch" or not verts.is_cuda:
        from milo_backend.mesh.raster_torch import visible_faces
        v_cam = world_to_view(verts, camera)
        return visible_faces(project(v_cam, camera), v_cam[:, 2], faces, camera.height, camera.width)
    return rasterize_mesh(verts, faces, camera, backend=backend).face_ids
