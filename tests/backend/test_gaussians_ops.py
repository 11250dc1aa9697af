"""Optimizer-state-aware edits: Adam moments and per-Gaussian state follow the Gaussians."""
import pytest
import torch

from milo_backend.gaussians import ops
from milo_backend.gaussians.init import init_from_points
from milo_backend.gaussians.optim import make_optimizers


def trained_model(n=8):
    g = torch.Generator().manual_seed(0)
    m = init_from_points(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g))
    m.state["filter_3d"] = torch.arange(n, dtype=torch.float32)
    make_optimizers(m, 1.0)
    for _ in range(2):
        loss = sum((p * torch.randn(p.shape, generator=g)).sum() for p in m.params.values())
        loss.backward()
        for o in m.optimizers.values():
            o.step()
            o.zero_grad()
    return m


def moments(m, key="means"):
    st = m.optimizers[key].state[m.params[key]]
    return st["exp_avg"].clone(), st["exp_avg_sq"].clone()


def step_all(m):
    loss = sum(p.square().sum() for p in m.params.values())
    loss.backward()
    for o in m.optimizers.values():
        o.step()
        o.zero_grad()


def test_remove_keeps_moments_and_state_of_kept_entries():
    m = trained_model()
    avg, sq = moments(m)
    means = m.params["means"].detach().clone()
    mask = torch.tensor([True, False, False, True, False, True, False, False])
    ops.remove(m, mask)
    assert len(m) == 5
    new_avg, new_sq = moments(m)
    assert torch.equal(new_avg, avg[~mask]) and torch.equal(new_sq, sq[~mask])
    assert torch.equal(m.params["means"], means[~mask])
    assert m.state["filter_3d"].tolist() == [1, 2, 4, 6, 7]
    assert all(o.param_groups[0]["params"][0] is m.params[k] for k, o in m.optimizers.items())
    step_all(m)
    assert m.params["means"].grad is None and len(m) == 5


def test_duplicate_appends_copies_with_zero_moments():
    m = trained_model()
    avg, _ = moments(m, "opacities")
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[2, 5]] = True
    idx = ops.duplicate(m, mask)
    assert idx.tolist() == [8, 9] and len(m) == 10
    for key, p in m.params.items():
        assert torch.equal(p[8:], p[[2, 5]]), key
    new_avg, new_sq = moments(m, "opacities")
    assert torch.equal(new_avg[:8], avg) and torch.all(new_avg[8:] == 0) and torch.all(new_sq[8:] == 0)
    assert m.state["filter_3d"][8:].tolist() == [2, 5]
    step_all(m)
    assert len(m) == 10


def test_append_uses_given_values_and_zero_state_by_default():
    m = trained_model()
    new = {k: torch.ones(3, *p.shape[1:]) for k, p in m.params.items()}
    idx = ops.append(m, new)
    assert idx.tolist() == [8, 9, 10]
    assert torch.all(m.params["scales"][8:] == 1) and torch.all(m.state["filter_3d"][8:] == 0)
    assert torch.all(moments(m, "scales")[0][8:] == 0)
    with pytest.raises(ValueError):
        ops.append(m, {"means": torch.zeros(1, 3)})


def test_update_params_keeps_or_resets_moments():
    m = trained_model()
    avg, _ = moments(m, "opacities")
    ops.update_params(m, {"opacities": torch.zeros(8)})
    assert torch.all(m.params["opacities"] == 0) and torch.equal(moments(m, "opacities")[0], avg)
    reset = torch.arange(8) < 2
    ops.update_params(m, {"opacities": torch.ones(8)}, reset_moments=reset)
    new_avg, new_sq = moments(m, "opacities")
    assert torch.all(new_avg[:2] == 0) and torch.all(new_sq[:2] == 0) and torch.equal(new_avg[2:], avg[2:])
    with pytest.raises(ValueError):
        ops.update_params(m, {"opacities": torch.ones(3)})
    step_all(m)


def test_replace_all_restarts_adam_but_keeps_learning_rates():
    m = trained_model()
    m.optimizers["means"].param_groups[0]["lr"] = 0.123
    new = {k: torch.zeros(3, *p.shape[1:]) for k, p in m.params.items()}
    ops.replace_all(m, new)
    assert len(m) == 3 and m.state["filter_3d"].shape == (3,)
    assert all(len(o.state) == 0 for o in m.optimizers.values())
    assert m.optimizers["means"].param_groups[0]["lr"] == 0.123
    step_all(m)
    assert int(m.optimizers["means"].state[m.params["means"]]["step"]) == 1


def test_ops_work_on_a_model_without_optimizers():
    m = init_from_points(torch.randn(4, 3), torch.rand(4, 3))
    ops.duplicate(m, torch.tensor([True, False, False, False]))
    ops.remove(m, torch.tensor([False, True, False, False, False]))
    assert len(m) == 4 and m.params["means"].requires_grad
