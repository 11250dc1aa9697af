"""Photos of a textured triangle mesh with exact ground truth (the mesh benchmark's object scenes).

The mesh (e.g. the Stanford bunny) is centred, scaled into the unit ball and turned z-up; it gets a
procedural 3D texture (the multi-octave value noise of `synthetic.py`, so photos have the detail
that training needs) and smooth Lambertian shading, and is rendered from cameras spread over the
upper part of a sphere (a Fibonacci spiral), with 2x2 supersampling, as RGBA photos (transparent
background: training composites them on its background colour). Writes a NeRF-style
`transforms.json` (every `test_every`-th view held out) + `images/*.png` and the normalised mesh
as `ground_truth.obj`, in the same world frame as the cameras.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.data.synthetic import LIGHT, PALETTES, texture, write_posed_scene
from milo_backend.mesh import rasterize_mesh
from milo_backend.mesh_io import read_mesh

Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def normalised_mesh(path: str | Path, y_up: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The mesh centred on its bounding box, scaled to a bounding sphere of radius 1, z up."""
    verts, faces = read_mesh(path)
    if y_up:
        verts = verts @ Y_UP_TO_Z_UP.T
    verts = verts - 0.5 * (verts.min(axis=0) + verts.max(axis=0))
    return verts / np.linalg.norm(verts, axis=1).max(), faces


def sphere_cameras(n_views: int, size: int, distance: float = 3.0, fov_deg: float = 45.0,
                   elevation_deg: tuple[float, float] = (-15.0, 70.0)) -> list[Camera]:
    """Cameras on a Fibonacci spiral between two elevations, looking at the origin."""
    f = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    lo, hi = np.sin(np.radians(elevation_deg[0])), np.sin(np.radians(elevation_deg[1]))
    cams = []
    for i in range(n_views):
        z = lo + (hi - lo) * (i + 0.5) / n_views
        a = i * np.pi * (3 - np.sqrt(5))  # golden angle
        r = np.sqrt(1 - z * z)
        eye = distance * np.array([r * np.cos(a), r * np.sin(a), z])
        cams.append(Camera(name=f"{i + 1:04d}.png", width=size, height=size, fx=f, fy=f, cx=size / 2,
                           cy=size / 2, world_to_cam=look_at(eye, (0.0, 0.0, 0.0))))
    return cams


@torch.no_grad()
def render_mesh_photo(verts: np.ndarray, faces: np.ndarray, camera: Camera, supersample: int = 2,
                      palette: np.ndarray = PALETTES[1], seed: int = 5) -> np.ndarray:
    """(H,W,4) photo in [0,1]: textured, smoothly shaded mesh, premultiplied on black, and its coverage
    (alpha), so training can composite it on any background."""
    s = supersample
    cam = camera.scaled(camera.width * s, camera.height * s)
    v = torch.as_tensor(verts, dtype=torch.float64)
    f = torch.as_tensor(faces, dtype=torch.int64)
    out = rasterize_mesh(v, f, cam, backend="torch")
    hit = out.face_ids.reshape(-1) >= 0
    img = np.zeros((cam.height * cam.width, 4))
    img[:, 3] = hit.numpy()
    if hit.any():
        # the surface point of each covered pixel: back-projected depth through the pixel centre
        idx = torch.nonzero(hit).squeeze(1)
        px = (idx % cam.width).double() + 0.5
        py = (idx // cam.width).double() + 0.5
        z = out.depth.reshape(-1)[idx]
        p_cam = torch.stack([(px - cam.cx) / cam.fx * z, (py - cam.cy) / cam.fy * z, z], dim=1).numpy()
        c2w = cam.cam_to_world
        p = p_cam @ c2w[:3, :3].T + c2w[:3, 3]
        tri = faces[out.face_ids.reshape(-1)[idx].numpy()]
        normal = _smooth_normals(verts, faces, tri, p)
        albedo = texture(p * 1.5, palette, seed)
        shade = 0.35 + 0.65 * np.clip(normal @ LIGHT, 0, 1)
        img[idx.numpy(), :3] = albedo * shade[:, None]
    img = img.reshape(camera.height, s, camera.width, s, 4).mean(axis=(1, 3))
    # straight (not premultiplied) colour in the PNG, as image files store it
    img[..., :3] /= np.maximum(img[..., 3:], 1e-6)
    return np.clip(img, 0, 1)


def _smooth_normals(verts, faces, tri, p) -> np.ndarray:
    """Vertex normals interpolated with the barycentric coordinates of p in its triangle."""
    a, b, c = (verts[faces[:, i]] for i in range(3))
    fn = np.cross(b - a, c - a)
    vn = np.zeros_like(verts)
    for i in range(3):
        np.add.at(vn, faces[:, i], fn)
    vn /= np.linalg.norm(vn, axis=1, keepdims=True).clip(1e-12)
    A, B, C = verts[tri[:, 0]], verts[tri[:, 1]], verts[tri[:, 2]]
    n = np.cross(B - A, C - A)
    area = (n * n).sum(1).clip(1e-30)
    wa = (np.cross(C - B, p - B) * n).sum(1) / area
    wb = (np.cross(A - C, p - C) * n).sum(1) / area
    wc = 1 - wa - wb
    out = wa[:, None] * vn[tri[:, 0]] + wb[:, None] * vn[tri[:, 1]] + wc[:, None] * vn[tri[:, 2]]
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)


def make_mesh_scene(mesh_path: str | Path, out_dir: str | Path, n_views: int = 48, size: int = 160,
                    test_every: int = 8, y_up: bool = True, reporter=None) -> Path:
    """Write the scene to `out_dir` (images/, transforms.json, ground_truth.obj). Idempotent."""
    verts, faces = normalised_mesh(mesh_path, y_up)
    return write_posed_scene(out_dir, sphere_cameras(n_views, size), lambda cam: render_mesh_photo(verts, faces, cam),
                             (verts, faces), test_every, reporter, stage="scene")
