"""One mesh rasteriser interface with two implementations behind it.

    out = rasterize_mesh(verts, faces, camera, backend="auto")

- `backend="torch"`: pure PyTorch (`raster_torch.py`), CPU or CUDA, differentiable.
- `backend="nvdiffrast"`: nvdiffrast's CUDA rasteriser (`raster_nvdiffrast.py`), CUDA tensors only;
  its plugin is JIT-compiled on first use (never at import).
- `backend="auto"`: nvdiffrast when the tensors are on CUDA and it builds, else torch.

Both return the same `MeshRender`: depth is the view-space z of the surface at each pixel centre,
antialiased at silhouettes (nvdiffrast's analytic scheme: a pixel next to a silhouette edge is
blended with its neighbour by how far the edge lies from the midpoint between the two centres),
so a loss on depth moves silhouette edges; 0 where nothing is hit before antialiasing. Normals are
the flat unit face normals in view space (OpenCV axes: a face seen from its front side has z < 0).
Faces with a vertex closer than `near` to the camera plane are clipped by nvdiffrast but dropped by
the torch rasteriser: pass faces through `cull_to_frustum` first and both agree.
"""
from __future__ import annotations

import torch

from milo_backend.data.camera import Camera
from milo_backend.mesh.view_space import MeshRender, project, world_to_view

NEAR = 0.01  # world units, as gsplat's default near plane


def rasterize_mesh(verts: torch.Tensor, faces: torch.Tensor, camera: Camera, backend: str = "auto",
                   near: float = NEAR) -> MeshRender:
    """Render depth, normals and coverage of the mesh (verts (V,3) world, faces (F,3)) for `camera`."""
    if backend == "auto":
        backend = "nvdiffrast" if verts.is_cuda and nvdiffrast_available(verts.device) else "torch"
    if backend == "torch":
        from milo_backend.mesh.raster_torch import rasterize_mesh_torch
        return rasterize_mesh_torch(verts, faces, camera, near=near)
    if backend == "nvdiffrast":
        from milo_backend.mesh.raster_nvdiffrast import rasterize_mesh_nvdiffrast
        return rasterize_mesh_nvdiffrast(verts, faces, camera, near=near)
    raise ValueError(f"unknown mesh raster backend {backend!r} (use auto, torch or nvdiffrast)")


def nvdiffrast_available(device: torch.device | str = "cuda") -> bool:
    """True when CUDA is present and nvdiffrast's CUDA plugin builds/loads (cached per device)."""
    from milo_backend.mesh import raster_nvdiffrast
    return raster_nvdiffrast.available(device)


@torch.no_grad()
def cull_to_frustum(verts: torch.Tensor, faces: torch.Tensor, camera: Camera,
                    near: float = NEAR) -> torch.Tensor:
    """The rows of `faces` worth rasterising for `camera` (see `in_frustum`). Vertices stay as they are."""
    return faces[in_frustum(verts, faces, camera, near)]


@torch.no_grad()
def in_frustum(verts: torch.Tensor, faces: torch.Tensor, camera: Camera, near: float = NEAR) -> torch.Tensor:
    """(F,) bool: every vertex of the face in front of the near plane and not all three beyond the
    same side of the image."""
    v_cam = world_to_view(verts.detach(), camera)
    uv = project(v_cam, camera)
    # one byte of flags per vertex (5x less gathering than per-face coordinates), then per face: bit 0
    # "not in front of the near plane" (NaN too) clear for all three vertices, and no side bit (left,
    # right, above, below) set for all three
    flags = ((~(v_cam[:, 2] > near)).to(torch.uint8) | ((uv[:, 0] < 0).to(torch.uint8) << 1)
             | ((uv[:, 0] > camera.width).to(torch.uint8) << 2) | ((uv[:, 1] < 0).to(torch.uint8) << 3)
             | ((uv[:, 1] > camera.height).to(torch.uint8) << 4))
    f = flags[faces]                                                           # (F,3)
    any_flag = f[:, 0] | f[:, 1] | f[:, 2]
    all_flags = f[:, 0] & f[:, 1] & f[:, 2]
    return ((any_flag & 1) == 0) & ((all_flags >> 1) == 0)
