"""The mesh-in-the-loop phase on a scene whose answer is known: flat Gaussians tiling a sphere."""
from __future__ import annotations

import math

import pytest
import torch

from milo_backend.config import Schedule
from milo_backend.data.camera import Camera, camera_extent, look_at
from milo_backend.events import NullReporter
from milo_backend.gaussians.model import GaussianModel
from milo_backend.mesh import PIVOTS_PER_GAUSSIAN, occupancy_from_sdf
from milo_backend.mesh_phase import MeshPhase, visibility_labels
from milo_backend.render import render

RADIUS = 0.8
EYES = [(3, 0, 0.6), (0, 3, -0.6), (-3, 0, 0.6), (0, -3, -0.6), (0.4, 0.3, 3), (0.3, -0.4, -3)]


pytestmark = pytest.mark.usefixtures("one_thread")


def sphere_model(n: int = 500, seed: int = 0) -> GaussianModel:
    """Opaque flat Gaussians tangent to a sphere of radius RADIUS (their thin axis is the normal)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    colors = 0.5 + 0.4 * d  # position-coded colours
    model = GaussianModel.from_points(d * RADIUS, colors, torch.full((n,), 0.07), opacity=0.95)
    with torch.no_grad():
        model.params["scales"][:, 2] = math.log(0.008)
        # rotation taking the z axis onto d: axis z x d, w = 1 + z.d (half-angle form)
        q = torch.stack([1 + d[:, 2], -d[:, 1], d[:, 0], torch.zeros(n)], dim=1)
        model.params["quats"].copy_(torch.nn.functional.normalize(q, dim=1))
    for p in model.params.values():
        p.requires_grad_(True)
    return model


def sphere_cameras(size: int = 32, eyes=EYES) -> list[Camera]:
    return [Camera(f"c{i}.png", size, size, 0.9 * size, 0.9 * size, size / 2, size / 2,
                   look_at(e, (0, 0, 0), up=(0, 0, 1) if abs(e[2]) < 2 else (0, 1, 0)), split="train")
            for i, e in enumerate(eyes)]


def make_phase(model, cams, schedule=Schedule(3600), max_pivots=9 * 10_000, reporter=None) -> MeshPhase:
    def render_fn(cam, with_stats):
        return render(model.splats(), cam, sh_degree=0, backend="torch", with_stats=with_stats)
    return MeshPhase(model, cams, render_fn, extent=camera_extent(cams), max_pivots=max_pivots,
                     schedule=schedule, reporter=reporter or NullReporter(), raster_backend="torch")


@pytest.fixture(scope="module")
def started():
    torch.set_num_threads(1)
    model, cams = sphere_model(), sphere_cameras()
    reporter = NullReporter()
    phase = make_phase(model, cams, max_pivots=9 * 300, reporter=reporter)
    phase.start(1601)
    return model, cams, phase, reporter


def test_start_freezes_a_subset_fuses_the_sdf_and_labels_the_pivots(started):
    model, _, phase, reporter = started
    assert phase.active and phase.idx.numel() == 300 and phase.idx.unique().numel() == 300
    piv, _ = phase.pivots()
    assert piv.shape == (300 * PIVOTS_PER_GAUSSIAN, 3)
    sdf = phase.sdf().detach()
    centre = torch.zeros(len(sdf), dtype=torch.bool)
    centre[::PIVOTS_PER_GAUSSIAN] = True
    # depth fusion: the box corners (all off the sphere, outside it) are outside (sdf > 0); most
    # Gaussian centres (on it) are inside, so the surface runs between them. The corners are only
    # 0.02 outside and the tangent discs overhang the sphere as much, so where discs overlap the
    # rendered surface (T = MEDIAN_TRANSMITTANCE) can lie level with a few corners.
    assert (sdf[~centre] > 0).float().mean() > 0.9 and (sdf[centre] < 0).float().mean() > 0.6
    assert set(phase.labels.unique().tolist()) <= {0.0, 1.0}
    assert phase.labels[~centre].mean() < 0.05                  # seen in front of the mesh: outside
    # the extracted surface is the sphere, within a fraction of a Gaussian's size (0.07)
    verts = phase.mesh().verts.detach()
    assert verts.shape[0] > 200 and (verts.norm(dim=1) - RADIUS).abs().mean() < 0.035
    assert any("300 of 500 Gaussians" in e["message"] for e in reporter.of("log"))


def test_mesh_terms_send_gradients_both_ways(started):
    model, cams, phase, _ = started
    out = render(model.splats(), cams[0], sh_degree=0, backend="torch")
    depth = out.depth_median
    depth.retain_grad()
    loss, metrics = phase.loss(cams[0], depth)
    loss.backward()
    try:
        assert metrics["mesh_faces"] > 0 and metrics["mesh_depth"] > 0 and metrics["mesh_normal"] > 0
        # mesh -> Gaussians (pivots) and SDF, and the Gaussians' depth -> towards the mesh
        for key in ("means", "scales", "quats"):
            assert model.params[key].grad.abs().sum() > 0, key
        assert phase.shift.grad.abs().sum() > 0
        assert depth.grad.abs().sum() > 0
    finally:
        for p in model.params.values():
            p.grad = None
        phase.optimizer.zero_grad(set_to_none=True)


def test_schedule_events_follow_the_scaled_intervals(monkeypatch):
    model, cams = sphere_model(60), sphere_cameras(16)
    sched = Schedule(3600)  # mesh from 1601; Delaunay/resets every 100 until 2600; labels every 40
    phase = make_phase(model, cams, schedule=sched)
    phase.start(sched.mesh_from)
    calls = {"triangulate": [], "reset_sdf": [], "update_labels": []}
    for name in calls:
        monkeypatch.setattr(phase, name, lambda name=name, it=None: calls[name].append(current[0]))
    current = [0]
    for it in range(sched.mesh_from, 3601):
        current[0] = it
        phase.after_step(it)
    assert calls["triangulate"] == list(range(1701, 3601, 100))
    assert calls["reset_sdf"] == list(range(1701, 2601, 100))      # blended resets stop at 13k/18k
    assert calls["update_labels"] == list(range(1641, 3601, 40))
    # fewer iterations than views between label passes: at most one all-view pass per epoch
    assert make_phase(model, cams * 10, schedule=sched).all_view_interval(sched.labels_every) == 60


def test_resets_blend_towards_the_fusion_and_keep_the_shift(started):
    _, _, phase, _ = started
    base, shift = phase.base.clone(), phase.shift.detach().clone()
    with torch.no_grad():
        phase.shift.add_(0.3)  # as if learned
    before = torch.sigmoid(phase.base + phase.shift).detach()
    phase.reset_sdf()
    after = torch.sigmoid(phase.base + phase.shift).detach()
    target = (0.4 * occupancy_from_sdf(phase.fused_sdf()) + 0.6 * before).clamp(0.005, 0.995)
    assert torch.allclose(after, target, atol=1e-4)
    assert torch.allclose(phase.shift.detach(), shift + 0.3)
    with torch.no_grad():  # restore for the other tests of this module
        phase.base.copy_(base)
        phase.shift.copy_(shift)


def test_state_dict_round_trip_gives_the_same_loss(started):
    model, cams, phase, _ = started
    twin = make_phase(model, cams)
    twin.load_state_dict(phase.state_dict())
    with torch.no_grad():
        d = render(model.splats(), cams[2], sh_degree=0, backend="torch").depth_median
        assert twin.loss(cams[2], d)[0].item() == pytest.approx(phase.loss(cams[2], d)[0].item(), rel=1e-6)
    assert twin.state_dict()["tets"].dtype == torch.int32  # halves checkpoint size


def test_a_preset_larger_than_the_scene_uses_every_gaussian():
    model, cams = sphere_model(80), sphere_cameras(16)
    reporter = NullReporter()
    phase = make_phase(model, cams, max_pivots=13_500_000, reporter=reporter)
    phase.start(1)
    assert phase.active and phase.idx.numel() == 80
    assert any("larger than the scene" in e["message"] for e in reporter.of("log"))


def test_all_pivots_on_one_side_warns_and_training_continues(started):
    model, cams, phase, _ = started
    reporter = NullReporter()
    twin = make_phase(model, cams, reporter=reporter)
    twin.load_state_dict(phase.state_dict())
    with torch.no_grad():
        twin.base.fill_(4.0)  # every pivot inside: no surface
    d = render(model.splats(), cams[0], sh_degree=0, backend="torch").depth_median.detach()
    for it in range(2):
        loss, metrics = twin.loss(cams[0], d)
        assert metrics["mesh_faces"] == 0 and torch.isfinite(loss)
        loss.backward()
        twin.after_step(1601 + it)
    assert len([w for w in reporter.of("warning") if "empty" in w["message"]]) == 1  # once
    for p in model.params.values():
        p.grad = None


def test_nan_pivots_are_left_out_of_the_mesh():
    model, cams = sphere_model(120), sphere_cameras(16)
    with torch.no_grad():
        model.params["means"][:7] = float("nan")
    phase = make_phase(model, cams)
    phase.start(1)
    assert phase.active
    loss, metrics = phase.loss(cams[1], render(model.splats(), cams[1], sh_degree=0, backend="torch").depth_median)
    assert torch.isfinite(loss) and metrics["mesh_faces"] > 0
    nan_rows = torch.nonzero(~torch.isfinite(phase.pivots()[0]).all(1)).squeeze(1)
    assert nan_rows.numel() == 0 or not torch.isin(phase.tets, nan_rows).any()
    # a Gaussian that diverges after the triangulation: its faces are dropped, the loss stays finite
    with torch.no_grad():
        model.params["means"][phase.idx[0]] = float("nan")
    assert torch.isfinite(phase.mesh().verts[phase.mesh().faces].sum())
    assert torch.isfinite(phase.loss(cams[1], render(model.splats(), cams[1], sh_degree=0,
                                                     backend="torch").depth_median.nan_to_num())[0])


def test_degenerate_pivots_disable_the_mesh_with_a_warning():
    """No Gaussian seen in two views: nothing spans a volume; training goes on without mesh terms."""
    model, cams = sphere_model(50), sphere_cameras(16, eyes=[(3, 0, 0)])
    cams = cams + [Camera("away.png", 16, 16, 14.0, 14.0, 8.0, 8.0, look_at((0, 0, 5), (0, 0, 10)))]
    reporter = NullReporter()
    phase = make_phase(model, cams, reporter=reporter)
    phase.start(1)
    assert not phase.active and phase.disabled
    assert any("no mesh" in w["message"] for w in reporter.of("warning"))
    phase.after_step(2)  # a no-op, no exception
    assert phase.state_dict()["disabled"] == phase.disabled


def test_degenerate_tetrahedra_keep_the_loss_finite(started):
    """Flat (zero-volume) and repeated tetrahedra next to the real ones: no NaN anywhere."""
    model, cams, phase, _ = started
    twin = make_phase(model, cams)
    twin.load_state_dict(phase.state_dict())
    t = twin.tets
    flat = torch.stack([t[:, 0], t[:, 0], t[:, 1], t[:, 2]], dim=1)[:500]
    twin.tets = torch.cat([t, flat, t[:500]])
    d = render(model.splats(), cams[3], sh_degree=0, backend="torch").depth_median
    loss, metrics = twin.loss(cams[3], d)
    loss.backward()
    assert metrics["mesh_faces"] > 0, metrics
    assert torch.isfinite(loss) and torch.isfinite(model.params["means"].grad).all()
    for p in model.params.values():
        p.grad = None


def test_visibility_labels_of_a_wall():
    """A square wall at z=0 facing a camera above it: points above are seen (outside), points under
    it are hidden (inside), points no camera sees are inside."""
    verts = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    cam = Camera("top", 32, 32, 20.0, 20.0, 16.0, 16.0, look_at((0, 0, 3), (0, 0, 0), up=(0, 1, 0)))
    pts = torch.tensor([[0.1, 0.2, 0.5], [0.1, 0.2, -0.5], [0.3, -0.2, 0.0005], [0.1, 0.1, -0.01],
                        [9.0, 9.0, 0.0], [0.0, 0.0, 4.0]])
    labels = visibility_labels(pts, verts, faces, [cam], margin=0.001, backend="torch")
    assert labels.tolist() == [0, 1, 0, 1, 1, 1]
    # without any face every point the camera sees is free space
    empty = visibility_labels(pts, verts, faces[:0], [cam], margin=0.001)
    assert empty.tolist() == [0, 0, 0, 0, 1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_mesh_step_on_cuda_sends_gradients_both_ways():
    """The GPU path end to end: gsplat's depth and nvdiffrast's mesh when their kernels load (else the
    torch paths on CUDA), the same gradients as on the CPU: mesh -> Gaussians, SDF, and depth -> mesh."""
    model, cams = sphere_model(), sphere_cameras()
    for key in list(model.params.keys()):
        model.params[key] = torch.nn.Parameter(model.params[key].detach().cuda())
    model.state = {k: v.cuda() for k, v in model.state.items()}

    def render_fn(cam, with_stats):
        return render(model.splats(), cam, sh_degree=0, backend="auto", with_stats=with_stats)
    phase = MeshPhase(model, cams, render_fn, extent=camera_extent(cams), max_pivots=9 * 300,
                      schedule=Schedule(3600), reporter=NullReporter(), raster_backend="auto")
    phase.start(1601)
    depth = render(model.splats(), cams[0], sh_degree=0, backend="auto").depth_median
    depth.retain_grad()
    loss, metrics = phase.loss(cams[0], depth)
    loss.backward()
    assert torch.isfinite(loss) and metrics["mesh_faces"] > 0 and metrics["mesh_depth"] > 0
    for key in ("means", "scales", "quats"):
        grad = model.params[key].grad
        assert grad.is_cuda and torch.isfinite(grad).all() and grad.abs().sum() > 0, key
    assert phase.shift.grad.abs().sum() > 0 and depth.grad.abs().sum() > 0
