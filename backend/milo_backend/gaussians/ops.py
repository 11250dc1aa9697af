"""Edits of the set of Gaussians that keep parameters, Adam moments and `model.state` in sync.

Every op goes through gsplat's `_update_param_with_optimizer` (pure torch): it swaps each parameter for
a new tensor and maps that parameter's Adam moments with the same indexing. Conventions:
- kept Gaussians keep their moments (and Adam's step count); new Gaussians start with zero moments;
- new Gaussians are appended at the end, so indices of kept ones only shift down after removals;
- parameters without an optimiser (a model loaded for export) are edited the same way.
"""
from __future__ import annotations

from typing import Callable

import torch
from gsplat.strategy.ops import _update_param_with_optimizer

from milo_backend.gaussians.model import GaussianModel

Tensor = torch.Tensor


@torch.no_grad()
def _apply(model: GaussianModel, param_fn: Callable[[str, Tensor], Tensor],
           moment_fn: Callable[[Tensor], Tensor], names: list[str] | None = None) -> None:
    names = list(model.params.keys()) if names is None else names
    with_opt = [k for k in names if k in model.optimizers]

    def new_param(name: str, p: Tensor) -> torch.nn.Parameter:
        return torch.nn.Parameter(param_fn(name, p).contiguous(), requires_grad=p.requires_grad)

    _update_param_with_optimizer(new_param, lambda key, v: moment_fn(v), model.params, model.optimizers,
                                 names=with_opt)
    for name in names:
        if name not in model.optimizers:
            model.params[name] = new_param(name, model.params[name])


def _zeros_for(v: Tensor, n: int) -> Tensor:
    return torch.zeros((n, *v.shape[1:]), dtype=v.dtype, device=v.device)


@torch.no_grad()
def append(model: GaussianModel, new_params: dict[str, Tensor],
           new_state: dict[str, Tensor] | None = None) -> Tensor:
    """Append Gaussians given by raw parameters (every key of `model.params`). Their Adam moments are
    zero; their `model.state` entries come from `new_state` or are zero. Returns their indices."""
    n_old = len(model)
    n_new = new_params["means"].shape[0]
    missing = set(model.params.keys()) - set(new_params)
    if missing:
        raise ValueError(f"append needs every parameter, missing {sorted(missing)}")
    _apply(model, lambda name, p: torch.cat([p, new_params[name].to(p)]),
           lambda v: torch.cat([v, _zeros_for(v, n_new)]))
    new_state = new_state or {}
    for key, v in model.state.items():
        extra = new_state[key].to(v) if key in new_state else _zeros_for(v, n_new)
        model.state[key] = torch.cat([v, extra])
    return torch.arange(n_old, n_old + n_new, device=model.device)


@torch.no_grad()
def remove(model: GaussianModel, mask: Tensor) -> None:
    """Remove the Gaussians where `mask` (N,) bool is True."""
    keep = torch.where(~mask)[0]
    _apply(model, lambda name, p: p[keep], lambda v: v[keep])
    for key, v in model.state.items():
        model.state[key] = v[keep]


@torch.no_grad()
def duplicate(model: GaussianModel, mask: Tensor) -> Tensor:
    """Append exact copies of the masked Gaussians (state copied, moments zero). Returns the copies'
    indices; the i-th copy is of the i-th True entry of `mask`."""
    sel = torch.where(mask)[0]
    indices = append(model, {k: p[sel] for k, p in model.params.items()},
                     {k: v[sel] for k, v in model.state.items()})
    return indices


@torch.no_grad()
def update_params(model: GaussianModel, values: dict[str, Tensor], reset_moments: Tensor | None = None) -> None:
    """Overwrite parameter values in place of their old ones (same N). Adam moments are kept, or zeroed
    for the Gaussians where `reset_moments` (N,) bool is True."""
    def moment_fn(v: Tensor) -> Tensor:
        if reset_moments is None:
            return v
        return torch.where(reset_moments.view(-1, *[1] * (v.dim() - 1)), torch.zeros_like(v), v)

    for name, value in values.items():
        if value.shape != model.params[name].shape:
            raise ValueError(f"{name}: new value has shape {tuple(value.shape)}, "
                             f"parameter has {tuple(model.params[name].shape)}")
    _apply(model, lambda name, p: values[name].to(p), moment_fn, names=list(values))


@torch.no_grad()
def replace_all(model: GaussianModel, new_params: dict[str, Tensor],
                new_state: dict[str, Tensor] | None = None) -> None:
    """Replace every Gaussian. The optimisers keep their settings (learning rates) but restart
    (no moments, step 0), as after a fresh optimiser set-up; state is `new_state` or zeros."""
    n = new_params["means"].shape[0]
    for name in model.params.keys():
        old = model.params[name]
        new = torch.nn.Parameter(new_params[name].to(old).contiguous(), requires_grad=old.requires_grad)
        model.params[name] = new
        opt = model.optimizers.get(name)
        if opt is not None:
            opt.state.pop(old, None)
            for group in opt.param_groups:
                group["params"] = [new]
    new_state = new_state or {}
    model.state = {k: new_state[k].to(v) if k in new_state else _zeros_for(v, n) for k, v in model.state.items()}
