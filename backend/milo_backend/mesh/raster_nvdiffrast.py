"""nvdiffrast mesh rasteriser (CUDA only): `dr.RasterizeCudaContext`, never the OpenGL context.

Importing this module loads nothing: nvdiffrast is imported, and its CUDA plugin JIT-compiled
(needs nvcc, ninja and a CUDA build of torch), on the first render. nvdiffrast is under the NVIDIA
Source Code License (non-commercial use); PyPI package `diffrp-nvdiffrast`.
"""
from __future__ import annotations

import torch

from milo_backend.data.camera import Camera
from milo_backend.mesh.view_space import MeshRender, gather_normals, world_to_view

_CONTEXTS: dict[str, object] = {}
_AVAILABLE: dict[str, bool] = {}


def available(device: torch.device | str = "cuda") -> bool:
    """True when a RasterizeCudaContext can be created on `device` (cached)."""
    key = str(torch.device(device))
    if key not in _AVAILABLE:
        _AVAILABLE[key] = False
        if torch.cuda.is_available() and torch.device(device).type == "cuda":
            from milo_backend import gpu_kernels
            if gpu_kernels.active("nvdiffrast").active != "nvdiffrast":  # never a silent build
                return False
            try:
                _context(torch.device(device))
                _AVAILABLE[key] = True
            except Exception:  # noqa: BLE001 - missing package, nvcc or a failed build: use torch
                _AVAILABLE[key] = False
    return _AVAILABLE[key]


def _context(device: torch.device):
    key = str(device)
    if key not in _CONTEXTS:
        import nvdiffrast.torch as dr
        _CONTEXTS[key] = dr.RasterizeCudaContext(device=device)
    return _CONTEXTS[key]


def clip_space(v_cam: torch.Tensor, camera: Camera, near: float, far: float) -> torch.Tensor:
    """(V,4) homogeneous clip coordinates such that nvdiffrast's pixel (col, row) is the camera's
    pixel (u, v): ndc x = 2u/W - 1, ndc y = 2v/H - 1 (row 0 at ndc y = -1), w = view z."""
    x, y, z = v_cam.unbind(1)
    w_img, h_img = camera.width, camera.height
    cx = 2.0 * camera.fx / w_img * x + (2.0 * camera.cx / w_img - 1.0) * z
    cy = 2.0 * camera.fy / h_img * y + (2.0 * camera.cy / h_img - 1.0) * z
    cz = (far + near) / (far - near) * z - 2.0 * far * near / (far - near)
    return torch.stack([cx, cy, cz, z], dim=1)


def rasterize_mesh_nvdiffrast(verts: torch.Tensor, faces: torch.Tensor, camera: Camera,
                              near: float) -> MeshRender:
    if not verts.is_cuda:
        raise ValueError("the nvdiffrast mesh rasteriser needs CUDA tensors (use backend='torch')")
    import nvdiffrast.torch as dr

    ctx = _context(verts.device)
    v_cam = world_to_view(verts, camera)
    # Far plane just beyond the mesh keeps the float32 depth buffer precise where the mesh is.
    far = max(float(v_cam[:, 2].detach().max()) * 2.0, near * 10.0) if len(v_cam) else near * 10.0
    pos = clip_space(v_cam.float(), camera, near, far)[None].contiguous()
    tri = faces.to(device=verts.device, dtype=torch.int32).contiguous()
    rast, _ = dr.rasterize(ctx, pos, tri, resolution=(camera.height, camera.width))
    depth, _ = dr.interpolate(v_cam[None, :, 2:3].float().contiguous(), rast, tri)
    depth = dr.antialias(depth.contiguous(), rast, pos, tri)[0].to(verts.dtype)
    face_ids = rast[0, ..., 3].long() - 1
    normals = gather_normals(v_cam, faces.to(verts.device, torch.int64), face_ids)
    mask = (face_ids >= 0).to(verts.dtype)[..., None]
    return MeshRender(depth, normals, mask, face_ids)
