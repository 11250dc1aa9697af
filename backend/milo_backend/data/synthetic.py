"""A synthetic scene with exact ground truth: the project's bundled sample and test fixture.

An analytic scene (textured sphere, box and floor disk against a black background) is ray-traced with numpy from
cameras on two rings. Textures are multi-octave value noise, so the images have the detail that feature
matching (SfM) and photometric training need; shading is Lambertian, so colours are view-independent.
Writes a NeRF-style `transforms.json` (OpenGL axes) + `images/*.png`, and the ground-truth surface as
`ground_truth.obj`, so poses, images and geometry can all be checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from milo_backend.atomic import atomic_path, write_json
from milo_backend.data.camera import Camera, look_at

SKY = np.zeros(3)  # black: matches the default training background (a sky is not reconstructible)
LIGHT = np.array([0.4, -0.5, 0.77]) / np.linalg.norm([0.4, -0.5, 0.77])


@dataclass(frozen=True)
class Scene:
    sphere_center: tuple = (0.0, 0.0, 0.6)
    sphere_radius: float = 0.6
    box_center: tuple = (1.05, -0.55, 0.35)
    box_half: float = 0.35
    floor_radius: float = 2.6
    target: tuple = (0.2, -0.15, 0.35)


def _hash(ijk: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random values in [0,1) on integer lattice points (N,3) int64."""
    h = (ijk[..., 0] * 73856093) ^ (ijk[..., 1] * 19349663) ^ (ijk[..., 2] * 83492791) ^ (seed * 2654435761)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFFFF) / float(0x1000000)


def value_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0,1] at points p (N,3)."""
    base = np.floor(p).astype(np.int64)
    f = p - base
    f = f * f * (3 - 2 * f)  # smoothstep: C1-continuous texture
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * (f[:, 2] if dz else 1 - f[:, 2])
                out += w * _hash(base + np.array([dx, dy, dz]), seed)
    return out


def texture(p: np.ndarray, palette: np.ndarray, seed: int) -> np.ndarray:
    """Multi-octave noise mapped through a 3-colour palette (N,3)."""
    n = sum(value_noise(p * (3.0 * 2 ** o), seed + o) * 0.5 ** o for o in range(4)) / 1.875
    # sharp-ish bands so corners exist at several scales (good for SIFT)
    t = np.clip((n - 0.25) * 2.0, 0, 1)
    t2 = (value_noise(p * 11.0, seed + 17) > 0.55).astype(float)
    col = palette[0] * (1 - t)[:, None] + palette[1] * t[:, None]
    return col * (1 - 0.5 * t2[:, None]) + palette[2] * 0.5 * t2[:, None]


def _intersect(origins, dirs, scene: Scene):
    """Nearest hit of each ray: t (N,), normal (N,3), material id (N,) (-1 = sky)."""
    n = len(origins)
    t_best = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    mat = np.full(n, -1)
    # floor disk z = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origins[:, 2] / dirs[:, 2]
    hit = origins + t[:, None] * dirs
    ok = (t > 1e-6) & (np.linalg.norm(hit[:, :2], axis=1) < scene.floor_radius)
    upd = ok & (t < t_best)
    t_best[upd], normal[upd], mat[upd] = t[upd], (0, 0, 1), 0
    # sphere
    c = np.asarray(scene.sphere_center)
    oc = origins - c
    b = (oc * dirs).sum(1)
    disc = b * b - ((oc * oc).sum(1) - scene.sphere_radius ** 2)
    t = -b - np.sqrt(np.maximum(disc, 0))
    upd = (disc > 0) & (t > 1e-6) & (t < t_best)
    t_best[upd], mat[upd] = t[upd], 1
    normal[upd] = (origins[upd] + t[upd, None] * dirs[upd] - c) / scene.sphere_radius
    # axis-aligned box (slab method)
    lo = np.asarray(scene.box_center) - scene.box_half
    hi = np.asarray(scene.box_center) + scene.box_half
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - origins) / dirs, (hi - origins) / dirs
    tmin = np.minimum(t0, t1)
    t_near = tmin.max(1)
    t_far = np.maximum(t0, t1).min(1)
    upd = (t_near <= t_far) & (t_near > 1e-6) & (t_near < t_best)
    axis = tmin.argmax(1)
    t_best[upd], mat[upd] = t_near[upd], 2
    nb = np.zeros((n, 3))
    nb[np.arange(n), axis] = -np.sign(dirs[np.arange(n), axis])
    normal[upd] = nb[upd]
    return t_best, normal, mat


PALETTES = [np.array([[0.55, 0.42, 0.30], [0.85, 0.78, 0.62], [0.10, 0.10, 0.12]]),   # floor
            np.array([[0.75, 0.20, 0.15], [0.95, 0.75, 0.25], [0.15, 0.05, 0.30]]),   # sphere
            np.array([[0.15, 0.35, 0.70], [0.55, 0.85, 0.80], [0.95, 0.95, 0.90]])]   # box


def render_view(camera: Camera, scene: Scene = Scene(), supersample: int = 2) -> np.ndarray:
    """Ray-trace one view -> (H,W,3) float in [0,1]."""
    s = supersample
    h, w = camera.height * s, camera.width * s
    u = (np.arange(w) + 0.5) / s
    v = (np.arange(h) + 0.5) / s
    uu, vv = np.meshgrid(u, v)
    d_cam = np.stack([(uu - camera.cx) / camera.fx, (vv - camera.cy) / camera.fy, np.ones_like(uu)], -1).reshape(-1, 3)
    c2w = camera.cam_to_world
    dirs = d_cam @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape).copy()
    t, normal, mat = _intersect(origins, dirs, scene)
    img = np.broadcast_to(SKY, dirs.shape).copy()
    hit = mat >= 0
    pts = origins[hit] + t[hit, None] * dirs[hit]
    shade = 0.45 + 0.55 * np.clip(normal[hit] @ LIGHT, 0, 1)
    albedo = np.zeros((hit.sum(), 3))
    for m, pal in enumerate(PALETTES):
        sel = mat[hit] == m
        albedo[sel] = texture(pts[sel], pal, seed=11 * m + 1)
    img[hit] = albedo * shade[:, None]
    img = img.reshape(camera.height, s, camera.width, s, 3).mean((1, 3))
    return np.clip(img, 0, 1)


def ring_cameras(n_views: int, size: int, scene: Scene = Scene(), fov_deg: float = 50.0) -> list[Camera]:
    """Cameras on two rings around the scene (alternating heights), looking at its centre."""
    f = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    cams = []
    for i in range(n_views):
        a = 2 * np.pi * i / n_views
        r, z = (3.4, 1.5) if i % 2 == 0 else (3.0, 2.4)
        eye = np.array([r * np.cos(a), r * np.sin(a), z])
        cams.append(Camera(name=f"{i + 1:04d}.png", width=size, height=size, fx=f, fy=f, cx=size / 2,
                           cy=size / 2, world_to_cam=look_at(eye, scene.target)))
    return cams


def ground_truth_mesh(scene: Scene = Scene(), resolution: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Triangle mesh of the scene's surfaces (sphere, box, floor disk) for geometry evaluation."""
    verts, faces = [], []

    def add(v, f):
        faces.append(np.asarray(f) + sum(len(x) for x in verts))
        verts.append(np.asarray(v, dtype=np.float64))

    # sphere (UV)
    th, ph = np.meshgrid(np.linspace(0, np.pi, resolution + 1), np.linspace(0, 2 * np.pi, 2 * resolution + 1), indexing="ij")
    v = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    idx = np.arange(v.shape[0]).reshape(th.shape)
    f = [(idx[i, j], idx[i + 1, j], idx[i + 1, j + 1]) for i in range(resolution) for j in range(2 * resolution)]
    f += [(idx[i, j], idx[i + 1, j + 1], idx[i, j + 1]) for i in range(resolution) for j in range(2 * resolution)]
    add(v * scene.sphere_radius + scene.sphere_center, f)
    # box
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    add(corners * scene.box_half + scene.box_center, [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    # floor disk (fan)
    ang = np.linspace(0, 2 * np.pi, 4 * resolution, endpoint=False)
    rim = np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], -1) * scene.floor_radius
    add(np.vstack([[0, 0, 0], rim]), [(0, 1 + i, 1 + (i + 1) % len(ang)) for i in range(len(ang))])
    return np.vstack(verts), np.vstack(faces).astype(np.int64)


def write_obj(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in verts)
            fh.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces)


def write_posed_scene(out_dir: str | Path, cameras: list[Camera], render_image, ground_truth,
                      test_every: int = 8, reporter=None, stage: str = "sample") -> Path:
    """Write `images/` (rendered by `render_image(camera)` -> (H,W,3) in [0,1], skipped when present),
    a NeRF `transforms.json` (OpenGL axes; every `test_every`-th view in the test split) and the
    ground-truth surface `ground_truth.obj` from `(verts, faces)`. Shared by every synthetic scene."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    gl_from_cv = np.diag([1.0, -1.0, -1.0, 1.0])
    for i, cam in enumerate(cameras):
        path = out / "images" / cam.name
        if not path.exists():
            img = (render_image(cam) * 255 + 0.5).astype(np.uint8)
            with atomic_path(path) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
        split = "test" if test_every and i % test_every == test_every - 1 else "train"
        frames.append({"file_path": f"images/{cam.name}", "split": split,
                       "transform_matrix": (cam.cam_to_world @ gl_from_cv).tolist()})
        if reporter is not None:
            reporter.progress(stage, i + 1, len(cameras))
    c = cameras[0]
    write_json(out / "transforms.json", {
        "camera_angle_x": float(2 * np.arctan(c.width / (2 * c.fx))), "fl_x": c.fx, "fl_y": c.fy,
        "cx": c.cx, "cy": c.cy, "w": c.width, "h": c.height, "frames": frames})
    write_obj(out / "ground_truth.obj", *ground_truth)
    return out


def make_synthetic_scene(out_dir: str | Path, n_views: int = 32, size: int = 128, test_every: int = 8,
                         reporter=None) -> Path:
    """Write the sample scene to `out_dir` (images/, transforms.json, ground_truth.obj). Idempotent."""
    scene = Scene()
    return write_posed_scene(out_dir, ring_cameras(n_views, size, scene), lambda cam: render_view(cam, scene),
                             ground_truth_mesh(scene), test_every, reporter)
