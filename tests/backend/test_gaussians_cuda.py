"""The gaussians/ functions on CUDA tensors give the CPU results (skipped without a GPU)."""
import math

import pytest
import torch

from milo_backend.gaussians import ops
from milo_backend.gaussians.densify import (DensifyStats, aggressive_clone, densify_and_prune, depth_reinit,
                                            simplify)
from milo_backend.gaussians.filter3d import compute_filter_3d
from milo_backend.gaussians.importance import importance_scores
from milo_backend.gaussians.init import init_from_points
from milo_backend.gaussians.optim import make_optimizers
from milo_backend.gaussians.ply import read_ply, write_ply
from test_gaussians_densify import plane_model, uv_image
from test_gaussians_toy_renderer import make_camera, toy_render

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_filter_ops_densify_simplify_and_ply_on_cuda(tmp_path):
    cams = [make_camera((4 * math.cos(a), 4 * math.sin(a), 1.0)) for a in (0.0, 1.0, 2.0)]
    pts = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    m = init_from_points(pts.cuda(), torch.rand(200, 3).cuda())
    assert m.device.type == "cuda"
    f = compute_filter_3d(m.params["means"], cams)
    assert f.device.type == "cuda" and torch.allclose(f.cpu(), compute_filter_3d(pts, cams), rtol=1e-5)
    m.state["filter_3d"] = f
    make_optimizers(m, 4.4)
    (m.splats().means.sum() + m.splats().opacities.sum()).backward()
    for o in m.optimizers.values():
        o.step()
    g = torch.Generator(device="cuda").manual_seed(0)
    stats = DensifyStats.empty(len(m), "cuda")
    stats.grad_sum[:50] = 1.0
    stats.count[:] = 1
    counts = densify_and_prune(m, stats, 4.4, generator=g)
    assert counts["cloned"] + counts["split"] == 50
    assert aggressive_clone(m, torch.rand(len(m), device="cuda"), torch.ones(len(m), device="cuda")) > 0
    simplify(m, torch.rand(len(m), device="cuda"), keep_fraction=0.5, generator=g)
    ops.remove(m, torch.arange(len(m), device="cuda") < 3)
    for o in m.optimizers.values():
        o.step()
    back = read_ply(write_ply(m, tmp_path / "g.ply"), device="cuda")
    assert torch.allclose(back.splats().scales, m.splats().scales, rtol=1e-5)


def test_depth_reinit_and_importance_on_cuda():
    m = plane_model()
    for k in list(m.params.keys()):
        m.params[k] = torch.nn.Parameter(m.params[k].detach().cuda())
    m.state = {k: v.cuda() for k, v in m.state.items()}
    make_optimizers(m, 1.0)
    cams = [make_camera((0.3, -2.0, 3.0)), make_camera((-1.5, 1.0, 2.5))]
    render_fn = lambda c: toy_render(m.splats(), c)  # noqa: E731
    scores, seen = importance_scores(render_fn, cams, len(m))
    assert scores.device.type == "cuda" and (scores > 0).any()
    depth_reinit(m, cams, [uv_image(c).cuda() for c in cams], render_fn, n_points=100,
                 generator=torch.Generator(device="cuda").manual_seed(0))
    assert m.params["means"][:, 2].abs().max() < 1e-3
