"""TSDF fusion baseline: depth maps of a known sphere fuse into a mesh of that sphere."""
import math

import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.mesh.tsdf import tsdf_mesh

RADIUS = 0.8


def sphere_depth(cam: Camera) -> torch.Tensor:
    """Camera z of the nearest hit of each pixel-centre ray with the sphere, 0 where it misses."""
    w2c = torch.as_tensor(cam.world_to_cam, dtype=torch.float64)
    centre = w2c[:3, 3]  # the world origin in camera coordinates
    ys, xs = torch.meshgrid(torch.arange(cam.height) + 0.5, torch.arange(cam.width) + 0.5, indexing="ij")
    d = torch.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, torch.ones_like(xs)], -1).double()
    a = (d * d).sum(-1)
    b = -2 * (d * centre).sum(-1)
    c = (centre * centre).sum() - RADIUS ** 2
    disc = b * b - 4 * a * c
    t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
    return torch.where(disc > 0, t, torch.zeros_like(t))  # z of d is 1: t is the depth


def test_fused_depth_maps_of_a_sphere_give_the_sphere_outward_facing():
    eyes = [(3 * math.cos(a) * math.cos(e), 3 * math.sin(a) * math.cos(e), 3 * math.sin(e))
            for a in torch.linspace(0, 2 * math.pi, 9)[:-1].tolist() for e in (-0.6, 0.0, 0.6)]
    eyes += [(0.01, 0.0, 3.0), (0.01, 0.0, -3.0)]
    cams = [Camera(f"c{i}", 64, 64, 70.0, 70.0, 32.0, 32.0, look_at(e, (0, 0, 0))) for i, e in enumerate(eyes)]
    verts, faces = tsdf_mesh(cams, sphere_depth, torch.full((3,), -1.0), torch.full((3,), 1.0), resolution=48)
    voxel = 2.0 / 48
    r = verts.norm(dim=1)
    assert len(faces) > 1000 and (r - RADIUS).abs().max() < voxel and (r - RADIUS).abs().mean() < 0.15 * voxel
    a, b, c = (verts[faces[:, i]] for i in range(3))
    outward = (torch.cross(b - a, c - a, dim=1) * (a + b + c)).sum(1) > 0
    assert outward.float().mean() > 0.99
    # closed: every edge shared by two faces
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    _, counts = torch.unique(edges, dim=0, return_counts=True)
    assert (counts == 2).all()


def test_nothing_measured_gives_an_empty_mesh():
    cam = Camera("c", 16, 16, 20.0, 20.0, 8.0, 8.0, look_at((0, 0, 3.0), (0, 0, 0)))
    verts, faces = tsdf_mesh([cam], lambda c: torch.zeros(16, 16), torch.full((3,), -1.0), torch.ones(3), 16)
    assert len(verts) == 0 and len(faces) == 0
