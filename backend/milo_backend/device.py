"""Choosing the compute device once, for the whole run."""
from __future__ import annotations

import torch

from milo_backend.errors import MiloError


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MiloError("--device cuda was asked for, but PyTorch sees no CUDA GPU",
                        hint="use --device auto or --device cpu, or install a CUDA build of PyTorch "
                             "(run `milo-backend doctor` to see what is installed)")
    if name not in ("cpu", "cuda"):
        raise MiloError(f"unknown device {name!r}", hint="use --device auto, cpu or cuda")
    return torch.device(name)
