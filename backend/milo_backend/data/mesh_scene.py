"""Photos of a textured triangle mesh with exact ground truth (the mesh benchmark's object scenes).

The mesh (e.g. the Stanford bunny) is centred, scaled into the unit ball and turned z-up; it gets a
procedural 3D texture (the multi-octave value noise of `synthetic.py`, so photos have the detail
that training needs) and smooth Lambertian shading, and is rendered from cameras spread over the
upper part of a sphere (a Fibonacci spiral), with 2x2 supersampling.

Background: by default a textured dome (a sphere of radius `DOME_RADIUS` around the object), as real
photos always have one. On a void (uniform) background, Gaussians of the background colour can float
anywhere without changing a pixel, and every one of them becomes surface in the mesh; a textured
background makes free space observable. `background="none"` writes RGBA photos instead (alpha =
coverage) for trainers that use masks. Only the object is ground truth; evaluation crops to its box.

Writes a NeRF-style `transforms.json` (every `test_every`-th view held out) + `images/*.png` and the
normalised mesh as `ground_truth.obj`, in the same world frame as the cameras.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.data.synthetic import LIGHT, PALETTES, texture, write_posed_scene
from milo_backend.mesh import rasterize_mesh
from milo_backend.mesh_io import read_mesh

DOME_RADIUS = 8.0
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
                      background: str = "dome", palette: np.ndarray = PALETTES[1], seed: int = 5) -> np.ndarray:
    """Photo in [0,1] of the textured, smoothly shaded mesh: (H,W,3) in front of the dome, or with
    `background="none"` (H,W,4) with straight colour and coverage as alpha."""
    s = supersample
    cam = camera.scaled(camera.width * s, camera.height * s)
    v = torch.as_tensor(verts, dtype=torch.float64)
    f = torch.as_tensor(faces, dtype=torch.int64)
    out = rasterize_mesh(v, f, cam, backend="torch")
    hit = out.face_ids.reshape(-1) >= 0
    rays = _pixel_rays(cam)                                             # (H*W,3) world, unit
    c2w = cam.cam_to_world
    img = np.zeros((cam.height * cam.width, 4))
    img[:, 3] = hit.numpy()
    if hit.any():
        idx = torch.nonzero(hit).squeeze(1).numpy()
        z = out.depth.reshape(-1).numpy()[idx]
        # the surface point of each covered pixel: depth z along the ray through the pixel centre
        z_dir = rays[idx] @ c2w[:3, 2]
        p = c2w[:3, 3] + rays[idx] * (z / z_dir)[:, None]
        tri = faces[out.face_ids.reshape(-1)[idx].numpy()]
        normal = _smooth_normals(verts, faces, tri, p)
        albedo = texture(p * 1.5, palette, seed)
        shade = 0.35 + 0.65 * np.clip(normal @ LIGHT, 0, 1)
        img[idx, :3] = albedo * shade[:, None]
    if background == "dome":
        sky = np.nonzero(~hit.numpy())[0]
        o = c2w[:3, 3]
        b = rays[sky] @ o
        t = -b + np.sqrt(b * b - (o @ o - DOME_RADIUS ** 2))           # camera inside the dome
        img[sky, :3] = texture((o + t[:, None] * rays[sky]) * 0.8, PALETTES[2], seed + 2) * 0.8
        img[sky, 3] = 1.0
    elif background != "none":
        raise ValueError(f"background must be 'dome' or 'none', got {background!r}")
    img = img.reshape(camera.height, s, camera.width, s, 4).mean(axis=(1, 3))
    if background == "dome":
        return np.clip(img[..., :3], 0, 1)
    img[..., :3] /= np.maximum(img[..., 3:], 1e-6)   # straight (not premultiplied) colour, as files store it
    return np.clip(img, 0, 1)


def _pixel_rays(cam: Camera) -> np.ndarray:
    """(H*W,3) unit world directions through the pixel centres."""
    ys, xs = np.meshgrid(np.arange(cam.height) + 0.5, np.arange(cam.width) + 0.5, indexing="ij")
    d = np.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, np.ones_like(xs)], -1).reshape(-1, 3)
    d = d @ cam.cam_to_world[:3, :3].T
    return d / np.linalg.norm(d, axis=1, keepdims=True)


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
                    test_every: int = 8, y_up: bool = True, background: str = "dome", reporter=None) -> Path:
    """Write the scene to `out_dir` (images/, transforms.json, ground_truth.obj). Idempotent."""
    verts, faces = normalised_mesh(mesh_path, y_up)
    return write_posed_scene(out_dir, sphere_cameras(n_views, size),
                             lambda cam: render_mesh_photo(verts, faces, cam, background=background),
                             (verts, faces), test_every, reporter, stage="scene")
