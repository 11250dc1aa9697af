"""Per-parameter Adam optimisers and the learning rates of the method (section 1 of the notes)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from milo_backend.gaussians.model import GaussianModel


@dataclass(frozen=True)
class LearningRates:
    """Adam learning rates of 3DGS/MILo. Position rates are multiplied by the camera extent R_cam."""

    position_init: float = 1.6e-4
    position_final: float = 1.6e-6
    sh0: float = 2.5e-3
    shN: float = 2.5e-3 / 20
    opacities: float = 0.025
    scales: float = 5e-3
    quats: float = 1e-3
    eps: float = 1e-15

    def scaled(self, factor: float) -> "LearningRates":
        """Every rate times `factor` (Adam's eps is not a rate)."""
        return LearningRates(**{k: (v if k == "eps" else v * factor) for k, v in asdict(self).items()})

    def initial(self, extent: float) -> dict[str, float]:
        """Learning rate of every parameter key at step 0."""
        return {"means": self.position_init * extent, "scales": self.scales, "quats": self.quats,
                "opacities": self.opacities, "sh0": self.sh0, "shN": self.shN}


def make_optimizers(model: GaussianModel, extent: float,
                    lr: LearningRates = LearningRates()) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter (gsplat layout, so densification can edit each one's state).

    Replaces `model.optimizers` (fresh moments) and returns it.
    """
    rates = lr.initial(extent)
    model.optimizers = {name: torch.optim.Adam([{"params": [param], "lr": rates[name], "name": name}],
                                               eps=lr.eps, betas=(0.9, 0.999))
                        for name, param in model.params.items()}
    return model.optimizers


def position_lr(step: int, decay_steps: int, extent: float, lr: LearningRates = LearningRates()) -> float:
    """Exponential (log-linear) decay from position_init*extent at step 0 to position_final*extent at
    `decay_steps`, constant after. The training loop scales `decay_steps` with --iterations."""
    t = min(max(step / max(decay_steps, 1), 0.0), 1.0)
    log_lr = math.log(lr.position_init) * (1 - t) + math.log(lr.position_final) * t
    return math.exp(log_lr) * extent


def set_position_lr(model: GaussianModel, step: int, decay_steps: int, extent: float,
                    lr: LearningRates = LearningRates()) -> float:
    """Apply `position_lr` to the means' optimiser; returns the rate set."""
    value = position_lr(step, decay_steps, extent, lr)
    for group in model.optimizers["means"].param_groups:
        group["lr"] = value
    return value
