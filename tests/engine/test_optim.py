"""LARS against hand-computed steps; optimiser construction and errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from config.errors import UserError
from engine.optim import LARS, OPTIMIZERS, build_optimizer, no_weight_decay_names, split_param_groups
from engine.schedules import LRSchedule


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
    assert [g["name"] for g in sgd.param_groups] == ["weights", "bias_norm"]
    assert [g["weight_decay"] for g in sgd.param_groups] == [5e-4, 0.0]
    one = build_optimizer("sgd", lin, lr=0.01, weight_decay=5e-4, exclude_bias_norm=False)
    assert len(one.param_groups) == 1 and len(one.param_groups[0]["params"]) == 2
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
    "kwargs", [{"lr": 0.0}, {"lr": -1.0}, {"lr": 0.1, "momentum": 1.0}, {"lr": 0.1, "weight_decay": -1.0},
               {"lr": 0.1, "eta": 0.02}, {"lr": 0.1, "clip": True}, {"lr": 0.1, "bias_lr_scale": 0.0},
               {"lr": 0.1, "bias_lr_scale": 0.5, "exclude_bias_norm": False}]
)
def test_bad_hyperparameters_are_user_errors(kwargs):
    with pytest.raises(UserError):
        build_optimizer("sgd", _toy(), **kwargs)


# --- LARS's clipping (solo-learn's clip_lr) ------------------------------------------------------------------
@pytest.mark.parametrize("lr,eta,clip", [(0.1, 1e-3, True), (0.1, 0.02, True), (0.1, 0.5, True), (0.1, 0.02, False),
                                         (1e-4, 0.02, True)])
def test_lars_clip_formula_from_solo_learn(lr, eta, clip):
    """One step from zero momentum: w -= rate * (g + wd w) with rate = lr * min(local / lr, 1) when clipping
    (solo-learn solo/utils/lars.py: lars_lr = min(lars_lr / lr, 1); p -= lr * lars_lr * d_p), else lr * local."""
    lin = _toy()
    wd = 0.01
    opt = build_optimizer("lars", lin, lr=lr, momentum=0.9, weight_decay=wd, eta=eta, clip=clip)
    assert opt.param_groups[0]["clip"] is clip and opt.param_groups[0]["eta"] == eta
    _set_grads(lin)
    w0, g = lin.weight.detach().clone(), lin.weight.grad.clone()
    opt.step()
    local = eta * 5.0 / (1.0 + wd * 5.0)                  # ||w|| = 5, ||g|| = 1
    factor = min(local / lr, 1.0) if clip else local
    expected = w0 - lr * factor * (g + wd * w0)
    assert torch.allclose(lin.weight, expected, rtol=0, atol=1e-7)
    assert torch.allclose(lin.bias, torch.tensor([2.0 - lr * 0.5]), rtol=0, atol=1e-7)     # excluded: plain SGD


def test_lars_clip_caps_at_the_scheduled_lr_and_lets_small_rates_through():
    """With clipping the layer's rate is min(local, lr): a large trust ratio cannot exceed the schedule."""
    lin = _toy()
    opt = build_optimizer("lars", lin, lr=0.01, weight_decay=0.0, eta=1.0, clip=True)       # local = 5 > lr
    _set_grads(lin)
    opt.step()
    assert torch.allclose(lin.weight, torch.tensor([[3.0 - 0.01 * 0.6, 4.0 - 0.01 * 0.8]]), rtol=0, atol=1e-7)
    lin = _toy()
    opt = build_optimizer("lars", lin, lr=0.01, weight_decay=0.0, eta=1e-3, clip=True)      # local = 0.005 < lr
    _set_grads(lin)
    opt.step()
    assert torch.allclose(lin.weight, torch.tensor([[3.0 - 0.005 * 0.6, 4.0 - 0.005 * 0.8]]), rtol=0, atol=1e-7)


# --- one param-group rule for every optimiser ----------------------------------------------------------------
class _Tokens(nn.Module):
    """A ViT-like module: a 3-D token and position embedding named by timm's no_weight_decay()."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.ones(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.ones(1, 3, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), _Tokens())


def test_no_weight_decay_names_are_prefixed_with_the_module_path():
    assert no_weight_decay_names(_model()) == {"2.cls_token", "2.pos_embed"}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_decays_weights_only(name):
    """Weights (ndim >= 2) are decayed, 1-D tensors and no_weight_decay() names (3-D here) are not: with zero
    gradients and weight decay, one step moves every weight and leaves the rest exactly where they were."""
    model = _model()
    opt = build_optimizer(name, model, lr=0.1, weight_decay=0.1)
    weights, others = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in weights["params"]) == ["0.weight", "2.proj.weight"]
    assert sorted(names[id(p)] for p in others["params"]) == ["0.bias", "1.bias", "1.weight", "2.cls_token",
                                                              "2.norm.bias", "2.norm.weight", "2.pos_embed",
                                                              "2.proj.bias"]
    assert (weights["weight_decay"], others["weight_decay"]) == (0.1, 0.0)
    assert others["lars_exclude"] is True and weights.get("lars_exclude", False) is False
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n in ("0.weight", "2.proj.weight")), n


def test_decay_everything_when_the_recipe_says_so():
    """exclude_bias_norm=False (MoCo v2, SimSiam): one group, every tensor decayed (SGD: w -= lr * wd * w)."""
    model = _model()
    opt = build_optimizer("sgd", model, lr=0.1, momentum=0.0, weight_decay=0.1, exclude_bias_norm=False)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["name"] == "all"
    token = model[2].cls_token
    token.grad = torch.zeros_like(token)
    opt.step()
    assert torch.allclose(token, torch.full_like(token, 1 - 0.1 * 0.1), rtol=0, atol=1e-7)


def test_bias_lr_scale_reaches_the_group_lr_through_the_schedule():
    """Barlow Twins' biases/BN at 0.0048 / 0.2 of the weights' lr, times any outer lr_scale (LRSchedule's key)."""
    model = _model()
    opt = build_optimizer("lars", model, lr=0.2, bias_lr_scale=0.0048 / 0.2)
    schedule = LRSchedule("const", 0.2, 2, 5)
    schedule.step(opt, 3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0048)
    groups = split_param_groups(model, bias_lr_scale=0.5, lr_scale=0.2)
    assert [g["lr_scale"] for g in groups] == [0.2, pytest.approx(0.1)]
