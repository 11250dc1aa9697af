"""Differentiable marching tetrahedra on the Delaunay tetrahedra of the pivots.

A vertex sits at the linear zero crossing of the SDF on every tetrahedron edge whose end points
have opposite signs; an edge shared by several tetrahedra yields one vertex. Vertex positions are
differentiable in the pivots and in the SDF; which edges cross (the connectivity) is not.
Convention: sdf > 0 is outside; with positively oriented tetrahedra every face normal
(b-a) x (c-a) points towards sdf > 0.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

# Tetrahedron edge order of the method: slot e joins local vertices EDGES[e].
EDGES = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])

# For each case (bit i set = vertex i outside), up to two triangles as edge slots, -1 = none.
# Derived on the reference tetrahedron (0,0,0),(1,0,0),(0,1,0),(0,0,1) with each triangle's normal
# turned towards the outside vertices; positive-determinant maps keep that orientation.
TRIANGLES = torch.tensor([
    [[-1, -1, -1], [-1, -1, -1]],
    [[0, 2, 1], [-1, -1, -1]],
    [[0, 3, 4], [-1, -1, -1]],
    [[1, 4, 2], [1, 3, 4]],
    [[1, 5, 3], [-1, -1, -1]],
    [[0, 2, 5], [0, 5, 3]],
    [[0, 1, 5], [0, 5, 4]],
    [[2, 5, 4], [-1, -1, -1]],
    [[2, 4, 5], [-1, -1, -1]],
    [[0, 5, 1], [0, 4, 5]],
    [[0, 5, 2], [0, 3, 5]],
    [[1, 3, 5], [-1, -1, -1]],
    [[1, 2, 4], [1, 4, 3]],
    [[0, 4, 3], [-1, -1, -1]],
    [[0, 1, 2], [-1, -1, -1]],
    [[-1, -1, -1], [-1, -1, -1]],
])


class TetMesh(NamedTuple):
    verts: torch.Tensor       # (V,3) positions, differentiable in pivots and sdf
    faces: torch.Tensor       # (F,3) int64, counter-clockwise seen from outside (sdf > 0)
    vert_edges: torch.Tensor  # (V,2) int64 pivot indices (a < b) of the edge each vertex lies on


def marching_tetrahedra(pivots: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor,
                        radii: torch.Tensor | None = None) -> TetMesh:
    """Extract the sdf = 0 surface from the tetrahedra `tets` (T,4) over `pivots` (P,3), sdf (P,).

    With `radii` (P,), the edge filter of the method is applied: a vertex on an edge (a,b) longer
    than r_a + r_b is invalid and every face touching one is dropped (then unused vertices too).
    Without it the surface is closed: every edge is shared by exactly two faces.
    """
    n_pivots = pivots.shape[0]
    tets = tets.to(pivots.device)
    with torch.no_grad():
        # uint8 throughout the per-tetrahedron pass: it touches all T rows, so bytes matter.
        outside = (sdf.detach() > 0).to(torch.uint8)
        occ = outside[tets]                                                     # (T,4)
        n_out = occ.sum(1, dtype=torch.uint8)
        mixed = torch.nonzero((n_out > 0) & (n_out < 4)).squeeze(1)
        tets, occ = tets[mixed], occ[mixed]
        case = (occ[:, 0] | (occ[:, 1] << 1) | (occ[:, 2] << 2) | (occ[:, 3] << 3)).long()

        edges_local = EDGES.to(tets.device)
        ends_a, ends_b = tets[:, edges_local[:, 0]], tets[:, edges_local[:, 1]]   # (Tm,6)
        crossing = occ[:, edges_local[:, 0]] != occ[:, edges_local[:, 1]]
        # One int64 key per undirected edge: 1-D unique is several times faster than unique(dim=0).
        keys = (torch.minimum(ends_a, ends_b) * n_pivots + torch.maximum(ends_a, ends_b))[crossing]
        unique_keys, vert_of_crossing = torch.unique(keys, return_inverse=True)
        vert_of_slot = torch.full_like(ends_a, -1)
        vert_of_slot[crossing] = vert_of_crossing

        table = TRIANGLES.to(tets.device)[case]                                 # (Tm,2,3)
        has_tri = table[:, :, 0] >= 0
        slots = table.clamp_min(0).reshape(len(case), 6)
        faces = torch.gather(vert_of_slot, 1, slots).reshape(-1, 2, 3)[has_tri]  # (F,3)
        vert_edges = torch.stack([unique_keys // n_pivots, unique_keys % n_pivots], dim=1)
        if radii is not None:
            a, b = vert_edges[:, 0], vert_edges[:, 1]
            length = torch.linalg.vector_norm(pivots.detach()[a] - pivots.detach()[b], dim=1)
            valid_vert = length <= radii[a] + radii[b]
            faces = faces[valid_vert[faces].all(dim=1)]
            # dropped before the positions are computed: the filter removes many crossings, and the
            # differentiable part (forward and backward) then touches only the vertices kept
            faces, vert_edges = _drop_unused(faces, vert_edges)

    verts = _zero_crossings(pivots, sdf, vert_edges)
    return TetMesh(verts, faces, vert_edges)


def _zero_crossings(pivots: torch.Tensor, sdf: torch.Tensor, vert_edges: torch.Tensor) -> torch.Tensor:
    """v = p_a + s_a / (s_a - s_b) (p_b - p_a): the linear zero crossing of the SDF on each edge.

    Signs differ on every edge here (one side > 0, the other <= 0), so s_a - s_b != 0.
    """
    a, b = vert_edges[:, 0], vert_edges[:, 1]
    s_a, s_b = sdf[a], sdf[b]
    t = (s_a / (s_a - s_b))[:, None]
    return pivots[a] + t * (pivots[b] - pivots[a])


def _drop_unused(faces, vert_edges):
    used = torch.zeros(vert_edges.shape[0], dtype=torch.bool, device=vert_edges.device)
    used[faces.reshape(-1)] = True
    remap = torch.cumsum(used.long(), 0) - 1
    return remap[faces], vert_edges[used]
