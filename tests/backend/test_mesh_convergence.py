"""End to end: Gaussians trained only through the mesh depth loss pull the extracted mesh onto a
known shape (a unit sphere seen in depth maps from six views)."""
import math

import pytest
import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.losses import mesh_depth_loss
from milo_backend.mesh import delaunay, marching_tetrahedra, pivots, rasterize_mesh



pytestmark = pytest.mark.usefixtures("one_thread")


EYES = [(4, 0, 0), (-4, 0, 0), (0, 4, 0), (0, -4, 0), (0.5, 0.3, 4), (0.3, -0.5, -4)]


def target_views():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5000, 3, generator=g, dtype=torch.float64) * 2.6 - 1.3
    sphere = marching_tetrahedra(p, p.norm(dim=1) - 1.0, delaunay(p))
    cams = [Camera(f"c{i}", 64, 64, 64.0, 64.0, 32.0, 32.0,
                   look_at(e, (0, 0, 0), up=(0, 0, 1) if abs(e[2]) < 1 else (0, 1, 0)))
            for i, e in enumerate(EYES)]
    return cams, [rasterize_mesh(sphere.verts, sphere.faces, c, backend="torch").depth for c in cams]


@pytest.mark.parametrize("learn_sdf", [False, True], ids=["gaussians", "gaussians+sdf"])
def test_mesh_depth_loss_alone_pulls_the_mesh_onto_the_target(learn_sdf):
    cams, targets = target_views()
    g = torch.Generator().manual_seed(1)
    n = 80
    # Gaussians on a shell of radius ~0.7: the initial mesh is a sphere 30% too small.
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1)
    means = (d * (0.6 + 0.2 * torch.rand(n, 1, generator=g, dtype=torch.float64))).requires_grad_()
    log_scales = torch.full((n, 3), math.log(0.12), dtype=torch.float64, requires_grad=True)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.arange(n)
    piv0, _ = pivots(means, log_scales.exp(), quats, idx)
    tets = delaunay(piv0.detach())                       # connectivity fixed, as between re-triangulations
    sdf = (piv0.detach().norm(dim=1) - 0.7).requires_grad_(learn_sdf)
    params = [means, log_scales, quats] + ([sdf] if learn_sdf else [])
    opt = torch.optim.Adam(params, lr=0.01)

    def mesh():
        piv, _ = pivots(means, log_scales.exp(), quats, idx)
        return marching_tetrahedra(piv, sdf, tets)

    def radial_error():
        with torch.no_grad():
            return (mesh().verts.norm(dim=1) - 1.0).abs().mean().item()

    start = radial_error()
    for it in range(120):
        view = it % len(cams)
        m = mesh()
        out = rasterize_mesh(m.verts, m.faces, cams[view], backend="torch")
        loss = mesh_depth_loss(out.depth, targets[view], out.mask, extent=4.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = radial_error()
    assert start > 0.25
    # A pixel is ~0.05 units at the sphere: the mesh ends within about a pixel of the target.
    assert end < 0.06 and end < start / 5
