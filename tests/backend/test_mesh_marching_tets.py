"""Marching tetrahedra: the case table, a sphere (closed, outward, accurate), edge filter, gradients."""
import math

import pytest
import torch

from milo_backend.mesh import delaunay, marching_tetrahedra, pivots
from milo_backend.mesh.marching_tets import EDGES


def edge_use_counts(faces: torch.Tensor, n_verts: int) -> torch.Tensor:
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = torch.minimum(e[:, 0], e[:, 1]) * n_verts + torch.maximum(e[:, 0], e[:, 1])
    return torch.unique(key, return_counts=True)[1]


def face_normals(verts, faces):
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return torch.cross(b - a, c - a, dim=1), (a + b + c) / 3


@pytest.mark.parametrize("case", range(1, 15))
def test_every_case_on_one_tetrahedron_points_faces_outside(case):
    g = torch.Generator().manual_seed(case)
    p = torch.randn(4, 3, generator=g, dtype=torch.float64)
    tet = torch.tensor([[0, 1, 2, 3]])
    a = p[0]
    if torch.linalg.det(torch.stack([p[1] - a, p[2] - a, p[3] - a])) < 0:
        tet = torch.tensor([[0, 1, 3, 2]])
    outside = torch.tensor([(case >> i) & 1 for i in range(4)], dtype=torch.bool)
    sdf = torch.rand(4, generator=g, dtype=torch.float64) + 0.1
    sdf = torch.where(outside, sdf, -sdf)
    mesh = marching_tetrahedra(p, sdf, tet)
    n_out = int(outside.sum())
    assert mesh.faces.shape[0] == (2 if n_out == 2 else 1)
    assert mesh.verts.shape[0] == (4 if n_out == 2 else 3)
    # Vertices sit where linear interpolation of the SDF along their edge is zero.
    ea, eb = mesh.vert_edges[:, 0], mesh.vert_edges[:, 1]
    t = ((mesh.verts - p[ea]).norm(dim=1) / (p[eb] - p[ea]).norm(dim=1))
    assert torch.allclose(sdf[ea] + t * (sdf[eb] - sdf[ea]), torch.zeros_like(t), atol=1e-12)
    assert (outside[ea] != outside[eb]).all()
    # Each face normal points from the inside vertices towards the outside ones.
    n, centre = face_normals(mesh.verts, mesh.faces)
    for i in range(4):
        side = ((p[i] - centre) * n).sum(1)
        assert (side > 0).all() if outside[i] else (side < 0).all()


def sphere_case(n_points=6000, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n_points, 3, generator=g, dtype=torch.float64) * 2.6 - 1.3
    return p, p.norm(dim=1) - 1.0


def test_sphere_is_closed_outward_and_close_to_the_sphere():
    p, sdf = sphere_case()
    tets = delaunay(p)
    mesh = marching_tetrahedra(p, sdf, tets)
    v, f = mesh.verts, mesh.faces
    assert f.shape[0] > 1000
    counts = edge_use_counts(f, v.shape[0])
    assert (counts == 2).all()                                     # closed, manifold
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    assert torch.unique(directed[:, 0] * v.shape[0] + directed[:, 1]).numel() == directed.shape[0]
    n, centre = face_normals(v, f)
    assert ((n * centre).sum(1) > 0).all()                         # normals point away from the centre
    signed_volume = (v[f[:, 0]] * torch.cross(v[f[:, 1]], v[f[:, 2]], dim=1)).sum() / 6
    assert abs(signed_volume.item() - 4 / 3 * math.pi) < 0.05 * 4 / 3 * math.pi
    assert (v.norm(dim=1) - 1).abs().max() < 0.02
    # One vertex per crossing edge: de-duplicated across the tetrahedra sharing it.
    assert torch.unique(mesh.vert_edges, dim=0).shape[0] == v.shape[0]
    assert ((sdf[mesh.vert_edges[:, 0]] > 0) != (sdf[mesh.vert_edges[:, 1]] > 0)).all()


def test_edge_filter_drops_faces_on_long_edges_only():
    p, sdf = sphere_case(3000, seed=1)
    tets = delaunay(p)
    full = marching_tetrahedra(p, sdf, tets)
    big = marching_tetrahedra(p, sdf, tets, radii=torch.full((p.shape[0],), 10.0, dtype=p.dtype))
    assert torch.equal(big.faces, full.faces) and torch.equal(big.verts, full.verts)
    length = (p[full.vert_edges[:, 0]] - p[full.vert_edges[:, 1]]).norm(dim=1)
    radius = float(length.median()) / 2                      # about half the edges become invalid
    filtered = marching_tetrahedra(p, sdf, tets, radii=torch.full((p.shape[0],), radius, dtype=p.dtype))
    kept_len = (p[filtered.vert_edges[:, 0]] - p[filtered.vert_edges[:, 1]]).norm(dim=1)
    assert (kept_len <= 2 * radius).all()
    valid = length <= 2 * radius
    expected = int(valid[full.faces].all(dim=1).sum())
    assert 0 < filtered.faces.shape[0] == expected < full.faces.shape[0]
    used = torch.zeros(filtered.verts.shape[0], dtype=torch.bool)
    used[filtered.faces.reshape(-1)] = True
    assert used.all()                                         # no dangling vertices left


def test_vertices_are_differentiable_in_gaussians_and_sdf():
    g = torch.Generator().manual_seed(2)
    n = 6
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    scales = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.1 + 0.05).requires_grad_()
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.arange(n)
    p0, _ = pivots(means, scales, quats, idx)
    tets = delaunay(p0.detach())
    sdf = (p0.detach().norm(dim=1) - 0.6).requires_grad_()
    assert marching_tetrahedra(p0, sdf, tets).verts.shape[0] > 10

    def verts(m, s, q, d):
        piv, _ = pivots(m, s, q, idx)
        return marching_tetrahedra(piv, d, tets).verts

    assert torch.autograd.gradcheck(verts, (means, scales, quats, sdf), fast_mode=True)


def test_no_sign_change_gives_an_empty_mesh():
    p, _ = sphere_case(100)
    mesh = marching_tetrahedra(p, torch.ones(100, dtype=p.dtype), delaunay(p))
    assert mesh.verts.shape == (0, 3) and mesh.faces.shape == (0, 3)


def test_edge_order_is_the_methods():
    assert EDGES.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
