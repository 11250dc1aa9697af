"""Depth-order prior (method section 9, `--depth-prior PATH`, off by default).

A monocular depth network predicts, per training photo, which of two nearby pixels is farther; the
rendered depth is penalised where it orders a pair the other way:
    log(1 + 20 max(0, -(D_p - D_q) / R_cam * sign(P_p - P_q)))
for pixel pairs (p, q) with q drawn within 5% of the image size around p.

The network is supplied locally (nothing is downloaded) as a self-contained program, no Python class
needed: a `torch.export` archive (`.pt2`, `torch.export.save(torch.export.export(model, (x,),
dynamic_shapes=...), PATH)`) or a TorchScript file (any other suffix, `torch.jit.trace(model,
x).save(PATH)`). It maps a (1,3,H,W) RGB image in [0,1] to a relative *inverse* depth map ((1,H',W')
or (1,1,H',W'), larger = nearer, any scale: the convention of MiDaS / DPT / Depth Anything). Only
the order of its values is used. Predictions are computed once per photo and cached.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from milo_backend.data.camera import Camera
from milo_backend.errors import MiloError

PAIR_RADIUS = 0.05   # partner within this fraction of the image size
SHARPNESS = 20.0
# Weight of the term in the total loss: not given by the method notes; the same as the other
# geometric regularisers (depth-normal, mesh depth/normal).
LAMBDA_DEPTH_ORDER = 0.05

_HINT = ("pass a monocular depth network exported as a torch.export .pt2 archive or a TorchScript file "
         "(input (1,3,H,W) RGB in [0,1], output relative inverse depth; see the README), or drop --depth-prior")


class DepthPrior:
    """The loaded network and its cached per-photo predictions (depth order: larger = farther)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        self.path = Path(path)
        self.device = torch.device(device)
        if not self.path.is_file():
            raise MiloError(f"depth prior weights not found: {self.path}", hint=_HINT, path=self.path)
        try:
            if self.path.suffix.lower() == ".pt2":
                self.net = torch.export.load(str(self.path)).module().to(self.device)
            else:
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as exc:  # noqa: BLE001 - any loader failure means "not a usable model file"
            kind = "torch.export" if self.path.suffix.lower() == ".pt2" else "TorchScript"
            raise MiloError(f"{self.path} is not a {kind} model ({type(exc).__name__}: {exc})",
                            hint=_HINT, path=self.path) from exc
        self._cache: dict[tuple[str, int, int], torch.Tensor] = {}

    @torch.no_grad()
    def order(self, camera: Camera, image: torch.Tensor) -> torch.Tensor:
        """(H,W) depth-order map of the photo `image` (H,W,3) of `camera` (larger = farther)."""
        key = (camera.name, camera.width, camera.height)
        if key not in self._cache:
            x = image.permute(2, 0, 1)[None].to(self.device, torch.float32)
            try:
                pred = self.net(x)
            except Exception as exc:  # noqa: BLE001
                raise MiloError(f"the depth prior {self.path} failed on {camera.name} ({type(exc).__name__}: "
                                f"{exc})", hint=_HINT, path=self.path) from exc
            if not isinstance(pred, torch.Tensor) or pred.dim() not in (3, 4) or any(s != 1 for s in pred.shape[:-2]):
                raise MiloError(f"the depth prior {self.path} returned "
                                f"{tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__}, "
                                "expected (1,H,W) or (1,1,H,W)", hint=_HINT, path=self.path)
            pred = pred.reshape(1, 1, *pred.shape[-2:]).float()
            pred = F.interpolate(pred, size=(camera.height, camera.width), mode="bilinear", align_corners=False)
            self._cache[key] = (-pred[0, 0]).cpu()   # inverse depth -> depth order
        return self._cache[key].to(image.device)


def depth_order_loss(depth: torch.Tensor, prior_order: torch.Tensor, extent: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over pixel pairs of log(1 + 20 max(0, -(D_p - D_q)/R_cam sign(P_p - P_q))).

    depth (H,W,1) rendered depth (0 = empty, such pairs are skipped), prior_order (H,W) larger =
    farther. Every pixel p gets one partner q at a uniform offset within PAIR_RADIUS of the image
    size (clamped to the image).
    """
    h, w = prior_order.shape
    r = max(1, round(PAIR_RADIUS * max(h, w)))
    dev = depth.device
    gen_dev = generator.device if generator is not None else dev
    off = torch.randint(-r, r + 1, (2, h, w), generator=generator, device=gen_dev).to(dev)
    ys = torch.arange(h, device=dev)[:, None].expand(h, w)
    xs = torch.arange(w, device=dev)[None, :].expand(h, w)
    qy, qx = (ys + off[0]).clamp(0, h - 1), (xs + off[1]).clamp(0, w - 1)
    d = depth[..., 0]
    dp, dq = d, d[qy, qx]
    sign = torch.sign(prior_order - prior_order[qy, qx])
    valid = (dp > 0) & (dq > 0) & (sign != 0)
    wrong = torch.relu(-(dp - dq) / extent * sign)
    return (torch.log1p(SHARPNESS * wrong) * valid).sum() / valid.sum().clamp_min(1)
