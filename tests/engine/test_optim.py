"""LARS against hand-computed steps; optimiser construction and errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from config.errors import UserError
from engine.optim import LARS, OPTIMIZERS, build_optimizer, split_param_groups


def _toy() -> nn.Linear:
    """Two parameters: a weight [[3, 4]] (norm 5) and a bias [2]."""
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([2.0]))
    return lin


def _set_grads(lin: nn.Linear) -> None:
    lin.weight.grad = torch.tensor([[0.6, 0.8]])  # norm 1
    lin.bias.grad = torch.tensor([0.5])


def test_lars_two_steps_match_hand_computation():
    lin = _toy()
    opt = build_optimizer("lars", lin, lr=0.1, momentum=0.9, weight_decay=0.01)
    assert isinstance(opt, LARS)
    # Step 1, weight: trust = 1e-3 * 5 / (1 + 0.01 * 5) = 0.005 / 1.05
    # d = g + wd * w = [0.63, 0.84] = 1.05 * [0.6, 0.8]
    # v = 0.1 * trust * d = 0.1 * 0.005 * [0.6, 0.8] = [3e-4, 4e-4];  w = [2.9997, 3.9996]
    # Bias (excluded): v = 0.1 * 0.5 = 0.05;  b = 1.95
    _set_grads(lin)
    opt.step()
    assert torch.allclose(lin.weight, torch.tensor([[2.9997, 3.9996]]), rtol=0, atol=1e-6)
    assert torch.allclose(lin.bias, torch.tensor([1.95]), rtol=0, atol=1e-6)
    # Step 2, weight: w = 0.9999 * [3, 4], ||w|| = 4.9995, d = [0.629997, 0.839996] = 1.049995 * [0.6, 0.8]
    # trust = 1e-3 * 4.9995 / 1.049995, so lr * trust * d = 0.1 * 0.0049995 * [0.6, 0.8] = [0.00029997, 0.00039996]
    # v = 0.9 * [3e-4, 4e-4] + that = [0.00056997, 0.00075996];  w = [2.99913003, 3.99884004]
    # Bias: v = 0.9 * 0.05 + 0.05 = 0.095;  b = 1.855
    _set_grads(lin)
    opt.step()
    assert torch.allclose(lin.weight, torch.tensor([[2.99913003, 3.99884004]]), rtol=0, atol=1e-6)
    assert torch.allclose(lin.bias, torch.tensor([1.855]), rtol=0, atol=1e-6)
    buf = opt.state[lin.weight]["momentum_buffer"]
    assert torch.allclose(buf, torch.tensor([[0.00056997, 0.00075996]]), rtol=0, atol=1e-8)


def test_lars_groups_from_model_exclude_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    opt = build_optimizer("lars", model, lr=1.0, weight_decay=1e-6)
    assert len(opt.param_groups) == 2
    adapted, excluded = opt.param_groups
    assert [tuple(p.shape) for p in adapted["params"]] == [(4, 3, 3, 3), (2, 4)]
    assert [tuple(p.shape) for p in excluded["params"]] == [(4,), (4,), (4,), (2,)]
    assert adapted["weight_decay"] == 1e-6 and adapted["lars_exclude"] is False
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"] is True


def test_lars_excluded_group_equals_torch_sgd_even_with_weight_decay_set():
    torch.manual_seed(0)
    p_lars = nn.Parameter(torch.randn(5))
    p_sgd = nn.Parameter(p_lars.detach().clone())
    lars = LARS([{"params": [p_lars], "lars_exclude": True}], lr=0.05, momentum=0.9, weight_decay=0.5)
    sgd = torch.optim.SGD([p_sgd], lr=0.05, momentum=0.9, weight_decay=0.0)
    for step in range(4):
        g = torch.full((5,), float(step + 1)) - p_lars.detach()
        p_lars.grad, p_sgd.grad = g.clone(), g.clone()
        lars.step()
        sgd.step()
    assert torch.allclose(p_lars, p_sgd, rtol=0, atol=1e-6)


def test_lars_trust_ratio_is_one_for_zero_weights():
    w = nn.Parameter(torch.zeros(2))
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    w.grad = torch.tensor([1.0, 2.0])
    opt.step()
    assert torch.allclose(w, torch.tensor([-0.1, -0.2]), rtol=0, atol=1e-7)


def test_lars_skips_parameters_without_gradient():
    lin = _toy()
    opt = build_optimizer("lars", lin, lr=0.1)
    lin.weight.grad = torch.tensor([[0.6, 0.8]])
    opt.step()
    assert lin.bias.item() == 2.0


def test_split_param_groups_copies_options_and_drops_frozen():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)
    groups = split_param_groups(model, lr_scale=0.2)
    assert [len(g["params"]) for g in groups] == [1, 2]
    assert all(g["lr_scale"] == 0.2 for g in groups)
    assert groups[0]["params"][0] is model[0].weight


def test_build_sgd_adam_adamw_settings():
    lin = _toy()
    sgd = build_optimizer("sgd", lin, lr=0.01, momentum=0.8, weight_decay=5e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.01, 0.8, 5e-4)
    assert len(sgd.param_groups) == 1 and len(sgd.param_groups[0]["params"]) == 2
    adam = build_optimizer("Adam", lin.parameters(), lr=1e-4)
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.9, 0.999)
    adamw = build_optimizer("adamw", lin, lr=4e-4, momentum=0.95, weight_decay=0.05)
    assert type(adamw) is torch.optim.AdamW
    assert adamw.defaults["betas"] == (0.95, 0.999) and adamw.defaults["weight_decay"] == 0.05


def test_build_keeps_param_group_keys():
    lin = _toy()
    groups = [{"params": [lin.weight], "lr_scale": 0.2}, {"params": [lin.bias]}]
    opt = build_optimizer("sgd", groups, lr=0.1)
    assert opt.param_groups[0]["lr_scale"] == 0.2 and "lr_scale" not in opt.param_groups[1]


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(UserError) as err:
        build_optimizer("rmsprop", _toy(), lr=0.1)
    assert "rmsprop" in str(err.value)
    for name in OPTIMIZERS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "kwargs", [{"lr": 0.0}, {"lr": -1.0}, {"lr": 0.1, "momentum": 1.0}, {"lr": 0.1, "weight_decay": -1.0}]
)
def test_bad_hyperparameters_are_user_errors(kwargs):
    with pytest.raises(UserError):
        build_optimizer("sgd", _toy(), **kwargs)
