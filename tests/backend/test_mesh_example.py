"""The usage example in `milo_backend.mesh`'s docstring (copied to the README) runs as written."""
import textwrap
from types import SimpleNamespace

import numpy as np
import torch

import milo_backend.mesh as mesh_module
from milo_backend.data.camera import Camera, camera_extent, look_at
from milo_backend.gaussians.model import GaussianModel


def docstring_example() -> str:
    lines = mesh_module.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    import torch"))
    block = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def test_readme_example_runs_and_its_loss_reaches_the_gaussians_and_the_sdf():
    g = torch.Generator().manual_seed(0)
    n = 300
    points = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1) * 0.8
    model = GaussianModel.from_points(points, torch.rand(n, 3, generator=g), torch.full((n,), 0.05))
    for p in model.params.values():
        p.requires_grad_()
    cameras = [Camera(f"c{i}", 32, 24, 30.0, 30.0, 16.0, 12.0, look_at(eye, (0, 0, 0)))
               for i, eye in enumerate([(3, 0, 0.5), (0, 3, 0.5), (-3, 0, 0.5), (0, -3, 0.5)])]

    def render(splats, cam, sh_degree):
        # Stand-in for the Gaussian renderer: the median depth of a sphere of radius 0.8.
        c2w = torch.tensor(cam.cam_to_world, dtype=torch.float32)
        ys, xs = torch.meshgrid(torch.arange(cam.height) + 0.5, torch.arange(cam.width) + 0.5, indexing="ij")
        d = torch.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, torch.ones_like(xs)], -1) @ c2w[:3, :3].T
        o = c2w[:3, 3]
        a, b, c = (d * d).sum(-1), 2 * (d * o).sum(-1), (o * o).sum() - 0.64
        disc = b * b - 4 * a * c
        depth = torch.where(disc > 0, (-b - disc.clamp_min(0).sqrt()) / (2 * a), torch.zeros_like(a))
        return SimpleNamespace(depth_median=depth[..., None])

    cam = cameras[0]
    namespace = {
        "model": model, "cameras": cameras, "cam": cam, "render": render, "camera_extent": camera_extent,
        "scores": torch.rand(n, generator=g), "views_seen": torch.full((n,), 4), "max_pivots": 9 * 200,
        "gauss_out": render(None, cam, 0), "extent": camera_extent(cameras),
    }
    exec(compile(docstring_example(), "mesh example", "exec"), namespace)  # noqa: S102 - our own docstring
    assert namespace["idx"].numel() == 200
    assert namespace["mesh"].faces.shape[0] > 0 and namespace["out"].mask.sum() > 0
    assert np.isfinite(namespace["loss"].item()) and namespace["loss"].item() > 0
    assert model.params["means"].grad.abs().sum() > 0
    assert model.params["scales"].grad.abs().sum() > 0 and model.params["quats"].grad.abs().sum() > 0
    assert namespace["shift"].grad.abs().sum() > 0
