"""Gaussians -> mesh, differentiably: pivots, Delaunay, SDF, marching tetrahedra, mesh rasteriser.

Plain functions on tensors, usable with any Gaussian model. Once (when the mesh losses start, and
every 500 iterations after) pick the Gaussians that span the mesh and tetrahedralise their pivots;
then, every iteration, rebuild the pivots from the current Gaussians, extract the mesh with the
fixed tetrahedra and render it. Gradients of a loss on the mesh render reach the Gaussians' means,
scales and rotations (through the pivots) and the learnable SDF shift.

    import torch
    from milo_backend.losses import mesh_depth_loss
    from milo_backend.mesh import (base_from_sdf, cull_to_frustum, delaunay, initial_sdf,
                                   marching_tetrahedra, pivots, rasterize_mesh,
                                   sdf_from_base_shift, surface_gaussians)

    # Once: choose <= max_pivots / 9 Gaussians, tetrahedralise their pivots, fuse an initial SDF.
    idx = surface_gaussians(scores, views_seen, budget=max_pivots // 9)
    s = model.splats()                      # activated means, quats (wxyz), scales (filter applied)
    piv, radii = pivots(s.means, s.scales, s.quats, idx, n_total=len(model))
    tets = delaunay(piv)                    # (T,4) int64, positively oriented; held fixed
    sdf0 = initial_sdf(cameras, lambda cam: render(s, cam, sh_degree=0).depth_median[..., 0],
                       piv, tau=0.002 * camera_extent(cameras))
    base = base_from_sdf(sdf0)              # fixed occupancy logits
    shift = torch.zeros_like(base, requires_grad=True)   # learnable (Adam, lr 0.025)

    # Every iteration, for the training camera `cam`:
    s = model.splats()
    piv, radii = pivots(s.means, s.scales, s.quats, idx, n_total=len(model))
    mesh = marching_tetrahedra(piv, sdf_from_base_shift(base, shift), tets, radii)
    faces = cull_to_frustum(mesh.verts, mesh.faces, cam)
    out = rasterize_mesh(mesh.verts, faces, cam)     # nvdiffrast on CUDA, PyTorch on the CPU
    loss = mesh_depth_loss(out.depth, gauss_out.depth_median, out.mask, extent)
    loss.backward()                                  # -> means, scales, quats and shift

Conventions: sdf > 0 is outside; faces are counter-clockwise seen from outside, so their normals
point out; the mesh render is in OpenCV view space (x right, y down, z forward) like every
`Camera`. Pivot layout: see `pivots.py`. Delaunay backends and their costs: see `delaunay.py`.
"""
from milo_backend.mesh.delaunay import delaunay
from milo_backend.mesh.marching_tets import TetMesh, marching_tetrahedra
from milo_backend.mesh.pivots import (PIVOTS_PER_GAUSSIAN, pivot_gaussian, pivots, quat_to_rotmat,
                                      surface_gaussians)
from milo_backend.mesh.raster import MeshRender, cull_to_frustum, rasterize_mesh
from milo_backend.mesh.sdf import (base_from_sdf, blended_occupancy, initial_sdf, occupancy,
                                   occupancy_from_sdf, reset_base, sdf_from_base_shift,
                                   sdf_from_occupancy)

__all__ = [
    "PIVOTS_PER_GAUSSIAN", "MeshRender", "TetMesh", "base_from_sdf", "blended_occupancy",
    "cull_to_frustum", "delaunay", "initial_sdf", "marching_tetrahedra", "occupancy",
    "occupancy_from_sdf", "pivot_gaussian", "pivots", "quat_to_rotmat", "rasterize_mesh",
    "reset_base", "sdf_from_base_shift", "sdf_from_occupancy", "surface_gaussians",
]
