"""A tiny brute-force Gaussian renderer for the gaussians/ tests (every Gaussian x every pixel), so they
do not depend on the real renderer. It follows the same `RenderOutput` contract: EWA projection with a
0.3 px^2 low-pass, alpha = min(0.99, o exp(-q/2)) cut at 1/255, front-to-back by centre depth.
The tests at the bottom check the toy itself on cases worked out by hand.
"""
import math

import numpy as np
import pytest
import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.render import RenderOutput, Splats


def quat_to_rotmat(q):
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(*q.shape[:-1], 3, 3)


def toy_render(splats: Splats, cam: Camera) -> RenderOutput:
    dt, dev = splats.means.dtype, splats.means.device
    R = torch.as_tensor(cam.world_to_cam[:3, :3], dtype=dt, device=dev)
    t = torch.as_tensor(cam.world_to_cam[:3, 3], dtype=dt, device=dev)
    pc = splats.means @ R.T + t
    z = pc[:, 2]
    means2d = torch.stack([cam.fx * pc[:, 0] / z + cam.cx, cam.fy * pc[:, 1] / z + cam.cy], -1)
    rot = quat_to_rotmat(splats.quats)
    cov = rot @ torch.diag_embed(splats.scales ** 2) @ rot.transpose(1, 2)
    J = torch.zeros(len(z), 2, 3, dtype=dt, device=dev)
    J[:, 0, 0] = cam.fx / z
    J[:, 0, 2] = -cam.fx * pc[:, 0] / z ** 2
    J[:, 1, 1] = cam.fy / z
    J[:, 1, 2] = -cam.fy * pc[:, 1] / z ** 2
    cov2d = J @ R @ cov @ R.T @ J.transpose(1, 2) + 0.3 * torch.eye(2, dtype=dt, device=dev)
    conic = torch.linalg.inv(cov2d)
    ys, xs = torch.meshgrid(torch.arange(cam.height, dtype=dt, device=dev) + 0.5,
                            torch.arange(cam.width, dtype=dt, device=dev) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2)                 # (P,2)
    d = pix[None] - means2d[:, None]                              # (N,P,2)
    q = torch.einsum("npi,nij,npj->np", d, conic, d)
    alpha = (splats.opacities[:, None] * torch.exp(-0.5 * q)).clamp(max=0.99)
    alpha = torch.where((alpha >= 1 / 255) & (z[:, None] > 0.01), alpha, torch.zeros_like(alpha))
    order = torch.argsort(z)
    a = alpha[order]
    T = torch.cumprod(torch.cat([torch.ones_like(a[:1]), 1 - a[:-1]]), 0)
    w_sorted = a * T
    w = torch.zeros_like(w_sorted).index_copy(0, order, w_sorted)  # (N,P) in original order
    colors = (splats.sh[:, 0] * 0.28209479177387814 + 0.5).clamp_min(0)
    h, wd = cam.height, cam.width
    acc = w.sum(0)
    best = w.max(0)
    max_id = torch.where(best.values > 0, best.indices, torch.full_like(best.indices, -1))
    dominated = torch.bincount(max_id[max_id >= 0], minlength=len(z))
    zeros = torch.zeros(h, wd, 1, dtype=dt, device=dev)
    return RenderOutput(
        color=(w.T @ colors).reshape(h, wd, 3), alpha=acc.reshape(h, wd, 1), depth_median=zeros,
        depth_expected=zeros, normals=torch.zeros(h, wd, 3, dtype=dt, device=dev), means2d=means2d,
        radii=((alpha > 0).any(1)).long() * 3,
        weight_sum=w.sum(1).detach(), pixels_touched=(w > 0).sum(1).detach(),
        pixels_dominated=dominated.detach(), max_weight_id=max_id.reshape(h, wd).detach())


def make_camera(eye, target=(0, 0, 0), up=(0, 0, 1), width=32, height=24, focal=30.0, name="cam"):
    return Camera(name=name, width=width, height=height, fx=focal, fy=focal, cx=width / 2, cy=height / 2,
                  world_to_cam=look_at(eye, target, up))


def splats_of(means, scales, opacities, colors=None, quats=None):
    n = len(means)
    means = torch.as_tensor(means, dtype=torch.float32)
    scales = torch.as_tensor(scales, dtype=torch.float32).expand(n, 3) if np.ndim(scales) < 2 else \
        torch.as_tensor(scales, dtype=torch.float32)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1) if quats is None else torch.as_tensor(quats, dtype=torch.float32)
    colors = torch.full((n, 3), 0.5) if colors is None else torch.as_tensor(colors, dtype=torch.float32)
    sh = ((colors - 0.5) / 0.28209479177387814)[:, None]
    return Splats(means, quats, scales, torch.as_tensor(opacities, dtype=torch.float32), sh)


def test_toy_single_opaque_gaussian_dominates_its_centre_pixel():
    cam = make_camera((0, 0, 5), up=(0, 1, 0))
    out = toy_render(splats_of([[0.0, 0, 0]], 0.2, [0.9]), cam)
    assert out.max_weight_id[12, 16] == 0
    # projected centre (16, 12) is half a pixel from the centre of pixel (16, 12); 2D variance
    # (0.2 * 30 / 5)^2 + 0.3 low-pass
    assert out.alpha[12, 16, 0] == pytest.approx(0.9 * math.exp(-0.5 * 0.5 / (1.2 ** 2 + 0.3)), rel=1e-4)
    assert out.max_weight_id[0, 0] == -1  # 0.2 world = 1.2 px std: corners untouched
    assert out.pixels_dominated[0] == out.pixels_touched[0] == int((out.alpha > 0).sum())


def test_toy_front_gaussian_hides_back_one():
    cam = make_camera((0, 0, 5), up=(0, 1, 0))
    out = toy_render(splats_of([[0.0, 0, -1], [0.0, 0, 1]], 0.3, [0.9, 0.9]), cam)
    assert out.max_weight_id[12, 16] == 1  # z=1 is closer to the camera at z=5
    a_front = 0.9 * math.exp(-0.5 * 0.5 / ((0.3 * 30 / 4) ** 2 + 0.3))
    a_back = 0.9 * math.exp(-0.5 * 0.5 / ((0.3 * 30 / 6) ** 2 + 0.3))
    assert out.alpha[12, 16, 0] == pytest.approx(a_front + (1 - a_front) * a_back, rel=1e-4)
    assert out.pixels_dominated[0] == 0 and out.pixels_touched[0] > 0
