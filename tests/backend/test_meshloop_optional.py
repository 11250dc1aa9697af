"""The optional parts of section 9: decoupled appearance and the depth-order prior."""
from __future__ import annotations

import pytest
import torch

from milo_backend.appearance import AppearanceModel, decoupled_photometric_loss
from milo_backend.data.camera import Camera
from milo_backend.depth_prior import DepthPrior, depth_order_loss
from milo_backend.errors import MiloError


pytestmark = pytest.mark.usefixtures("one_thread")


class InverseDepthOfBrightness(torch.nn.Module):
    """A stand-in monocular network: brighter = nearer (relative inverse depth), shape (1,H,W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def exported_prior(path) -> str:
    """The network as a torch.export archive with dynamic image size (as a user would supply it)."""
    h, w = torch.export.Dim("h", min=2, max=4096), torch.export.Dim("w", min=2, max=4096)
    program = torch.export.export(InverseDepthOfBrightness(), (torch.rand(1, 3, 16, 24),),
                                  dynamic_shapes={"x": {2: h, 3: w}})
    torch.export.save(program, str(path))
    return str(path)


def test_appearance_map_starts_at_one_and_learns_per_image_exposure():
    torch.manual_seed(0)
    app = AppearanceModel(n_images=2)
    render = torch.rand(64, 64, 3) * 0.7
    assert torch.equal(app(render, 0), render)          # identity before training
    targets = [render * 0.6, render * 1.3]              # two photos, two exposures
    opt = torch.optim.Adam(app.parameters(), lr=1e-2)
    start = sum(decoupled_photometric_loss(render, app(render, i), t).item() for i, t in enumerate(targets))
    for step in range(80):
        i = step % 2
        loss = (app(render, i) - targets[i]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = [(app(render, i) - t).abs().mean().item() for i, t in enumerate(targets)]
    raw = [(render - t).abs().mean().item() for t in targets]
    assert end[0] < 0.3 * raw[0] and end[1] < 0.3 * raw[1]
    # SSIM always sees the raw render: the appearance model cannot improve that half of the loss
    after = sum(decoupled_photometric_loss(render, app(render, i), t).item() for i, t in enumerate(targets))
    assert after < start


def test_depth_order_loss_penalises_only_contradicted_pairs():
    h = w = 40
    ramp = torch.linspace(1.0, 3.0, w).expand(h, w)            # depth grows to the right
    prior = ramp * 7 + 1                                        # same order, another scale
    assert depth_order_loss(ramp[..., None], prior, extent=2.0) == 0
    flipped = depth_order_loss(ramp.flip(1)[..., None], prior, extent=2.0)
    assert flipped > 0.01
    # its gradient pushes towards the prior's order: left pixels nearer, right farther
    d = ramp.flip(1)[..., None].clone().requires_grad_()
    depth_order_loss(d, prior, extent=2.0, generator=torch.Generator().manual_seed(0)).backward()
    g = d.grad[..., 0]
    assert g[:, : w // 4].mean() > 0 > g[:, -w // 4:].mean()   # descent lowers the left, raises the right
    # empty pixels (depth 0) take no part
    hole = ramp.clone()
    hole[:, : w // 2] = 0
    assert depth_order_loss(hole[..., None], prior, extent=2.0) == 0


def test_depth_prior_loads_a_torchscript_network_and_caches_its_order(tmp_path):
    prior = DepthPrior(exported_prior(tmp_path / "réseau.pt2"))
    cam = Camera("a.png", 24, 16, 20.0, 20.0, 12.0, 8.0)
    img = torch.zeros(16, 24, 3)
    img[:, :12] = 1.0                                           # bright left half = near
    order = prior.order(cam, img)
    assert order.shape == (16, 24) and (order[:, :10] < order[:, 14:].min()).all()
    assert prior.order(cam, torch.rand(16, 24, 3)) is not None and len(prior._cache) == 1


def test_depth_prior_errors_name_the_file(tmp_path):
    with pytest.raises(MiloError, match="not found") as e:
        DepthPrior(tmp_path / "absent.pt")
    assert e.value.path == str(tmp_path / "absent.pt") and "torch.export" in e.value.hint
    junk = tmp_path / "weights.pth"
    torch.save({"layer.weight": torch.zeros(3)}, junk)          # a bare state dict is not enough
    with pytest.raises(MiloError, match="not a TorchScript model"):
        DepthPrior(junk)

    with pytest.raises(MiloError, match="not a torch.export model"):
        DepthPrior(junk.rename(tmp_path / "weights.pt2"))

    class Wrong(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x                                            # three channels: not a depth map

    torch.export.save(torch.export.export(Wrong(), (torch.rand(1, 3, 8, 8),)), str(tmp_path / "wrong.pt2"))
    prior = DepthPrior(tmp_path / "wrong.pt2")
    with pytest.raises(MiloError, match="expected"):
        prior.order(Camera("a.png", 8, 8, 8.0, 8.0, 4.0, 4.0), torch.rand(8, 8, 3))
