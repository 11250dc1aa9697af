"""The Gaussian model: raw parameters, their optimisers, per-Gaussian state, and activations.

Layout follows gsplat's strategy API so its pure-torch `gsplat.strategy.ops` helpers apply:
`params` is a ParameterDict of per-Gaussian tensors (first dim N), `optimizers` one Adam per key,
`state` a dict of per-Gaussian non-learned tensors (the 3D filter, gradient accumulators, ...).

Raw parameters and activations:
  means (N,3)            world position
  scales (N,3)           log standard deviation        -> exp
  quats (N,4)            unnormalised wxyz             -> normalise
  opacities (N,)         logit                         -> sigmoid
  sh0 (N,1,3), shN (N,15,3)  SH coefficients (degree 3 allocated; `active_sh_degree` limits use)
The 3D smoothing filter (Mip-Splatting) is `state["filter_3d"]` (N,), a world-space std f:
effective scale sqrt(s^2 + f^2), opacity * sqrt(det(S) / det(S + f^2)).
"""
from __future__ import annotations

import torch

from milo_backend.render import Splats
from milo_backend.sh_constants import SH_C0
PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


class GaussianModel:
    def __init__(self, params: dict[str, torch.Tensor], max_sh_degree: int = 3):
        self.max_sh_degree = max_sh_degree
        self.active_sh_degree = 0
        self.params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(params[k].detach().clone().contiguous()) for k in PARAM_KEYS})
        n = self.params["means"].shape[0]
        dev = self.params["means"].device
        self.state: dict[str, torch.Tensor] = {"filter_3d": torch.zeros(n, device=dev)}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_points(cls, points: torch.Tensor, colors: torch.Tensor, scales: torch.Tensor,
                    opacity: float = 0.1, max_sh_degree: int = 3) -> "GaussianModel":
        """Isotropic Gaussians at `points` (N,3) with RGB `colors` (N,3) in [0,1] and std `scales` (N,)."""
        n = points.shape[0]
        dev, dt = points.device, points.dtype
        quats = torch.zeros(n, 4, device=dev, dtype=dt)
        quats[:, 0] = 1.0
        k = (max_sh_degree + 1) ** 2
        params = {
            "means": points,
            "scales": torch.log(scales.clamp_min(1e-7))[:, None].repeat(1, 3),
            "quats": quats,
            "opacities": torch.logit(torch.full((n,), opacity, device=dev, dtype=dt)),
            "sh0": rgb_to_sh0(colors.to(dt))[:, None, :],
            "shN": torch.zeros(n, k - 1, 3, device=dev, dtype=dt),
        }
        return cls(params, max_sh_degree)

    # -- accessors -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.params["means"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    def sh(self) -> torch.Tensor:
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    def splats(self, with_filter: bool = True) -> Splats:
        """Activated parameters for the renderers (the 3D filter folded in unless `with_filter=False`)."""
        p = self.params
        scales = torch.exp(p["scales"])
        opac = torch.sigmoid(p["opacities"])
        if with_filter:
            scales, opac = apply_filter_3d(scales, opac, self.state["filter_3d"])
        quats = torch.nn.functional.normalize(p["quats"], dim=-1)
        return Splats(p["means"], quats, scales, opac, self.sh())

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"params": {k: v.detach().cpu() for k, v in self.params.items()},
                "state": {k: v.detach().cpu() for k, v in self.state.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "active_sh_degree": self.active_sh_degree, "max_sh_degree": self.max_sh_degree}

    @classmethod
    def from_state_dict(cls, d: dict, device: torch.device | str = "cpu") -> "GaussianModel":
        m = cls({k: v.to(device) for k, v in d["params"].items()}, d["max_sh_degree"])
        m.state = {k: v.to(device) for k, v in d["state"].items()}
        m.active_sh_degree = d["active_sh_degree"]
        return m


def apply_filter_3d(scales: torch.Tensor, opacities: torch.Tensor, filter_3d: torch.Tensor):
    """Mip-Splatting 3D filter: convolve each Gaussian with an isotropic one of std `filter_3d`."""
    f2 = (filter_3d ** 2)[:, None]
    s2 = scales ** 2
    scales_f = torch.sqrt(s2 + f2)
    ratio = torch.prod(s2 / (s2 + f2), dim=-1).clamp_min(1e-12)
    return scales_f, opacities * torch.sqrt(ratio)
