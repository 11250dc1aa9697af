"""GaussianModel <-> standard 3DGS PLY (format in `splat_ply`).

Export bakes the 3D smoothing filter into scale and opacity, so any splat viewer shows exactly what
`model.splats()` renders; a file read back therefore has no separate filter (filter_3d = 0).
"""
from __future__ import annotations

from pathlib import Path

import torch

from milo_backend.gaussians.model import GaussianModel
from milo_backend.gaussians.splat_ply import SH_COEFFS_BY_DEGREE, read_splat_ply, write_splat_ply


@torch.no_grad()
def baked_log_scales_and_logits(model: GaussianModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (log scale, opacity logit) whose activations equal the filtered `model.splats()` values.

    Gaussians with a zero filter keep their raw parameters bit for bit.
    """
    p = model.params
    f = model.state["filter_3d"].detach().double()[:, None]
    log_s = p["scales"].detach().double()
    # log sqrt(s^2 + f^2) = log s + 0.5 log1p(f^2 / s^2), stable for tiny f
    ratio = (f / torch.exp(log_s)) ** 2
    log_s_f = log_s + 0.5 * torch.log1p(ratio)
    opacity = torch.sigmoid(p["opacities"].detach().double()) * torch.rsqrt(torch.prod(1 + ratio, dim=-1))
    logit_f = torch.logit(opacity.clamp(1e-12, 1 - 1e-12))
    unfiltered = f[:, 0] == 0
    log_s_f = torch.where(unfiltered[:, None], p["scales"].detach().double(), log_s_f)
    logit_f = torch.where(unfiltered, p["opacities"].detach().double(), logit_f)
    return log_s_f.float(), logit_f.float()


def write_ply(model: GaussianModel, path: str | Path) -> Path:
    """Write the model as a standard 3DGS PLY with SH up to `model.max_sh_degree` (atomic)."""
    log_scales, logits = baked_log_scales_and_logits(model)
    k = (model.max_sh_degree + 1) ** 2
    sh = model.sh().detach()[:, :k]
    return write_splat_ply(path, model.params["means"].detach().cpu().numpy(), sh.cpu().numpy(),
                           logits.cpu().numpy(), log_scales.cpu().numpy(),
                           model.params["quats"].detach().cpu().numpy())


def read_ply(path: str | Path, device: torch.device | str = "cpu") -> GaussianModel:
    """Load a 3DGS PLY of any SH degree 0..3; max and active SH degree are the file's."""
    d = read_splat_ply(path)
    k = d["sh"].shape[1]
    degree = {v: deg for deg, v in SH_COEFFS_BY_DEGREE.items()}[k]
    sh = torch.from_numpy(d["sh"]).to(device)
    params = {"means": torch.from_numpy(d["means"]).to(device),
              "scales": torch.from_numpy(d["log_scales"]).to(device),
              "quats": torch.from_numpy(d["quats"]).to(device),
              "opacities": torch.from_numpy(d["opacity_logits"]).to(device),
              "sh0": sh[:, :1].contiguous(), "shN": sh[:, 1:].contiguous()}
    model = GaussianModel(params, max_sh_degree=degree)
    model.active_sh_degree = degree
    return model
