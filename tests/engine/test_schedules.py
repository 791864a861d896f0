"""Learning-rate policies against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from config.errors import UserError
from engine.schedules import POLICIES, LRSchedule


def test_cosine_endpoints_and_mid_run():
    s = LRSchedule("cosine", base_lr=1.0, epochs=10, iters_per_epoch=5, final_lr=0.1)
    assert s.lr_at(0) == pytest.approx(1.0)
    assert s.lr_at(5) == pytest.approx(0.55)  # (base + final) / 2
    # quarter way: 0.1 + 0.9 * (1 + cos(pi/4)) / 2
    assert s.lr_at(2.5) == pytest.approx(0.8681980515)
    assert s.lr_at(10) == pytest.approx(0.1)
    assert s.lr_at(12) == pytest.approx(0.1)  # past the end it stays at final_lr


def test_warmup_is_linear_per_iteration_then_cosine_over_the_remaining_epochs():
    s = LRSchedule("cosine", base_lr=1.0, epochs=10, iters_per_epoch=5, warmup_epochs=2, final_lr=0.1)
    assert s.warmup_iters == 10
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    got = [s.step(opt, it) for it in range(12)]
    # iteration i < 10: base * (i + 1) / 10
    assert got[:10] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert got[10] == pytest.approx(1.0)  # epoch 2: cosine starts at base
    # iteration 11 = epoch 2.2: p = 0.2 / 8 = 0.025
    assert got[11] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.025)))
    assert s.lr_at(6) == pytest.approx(0.55)  # middle of [2, 10]
    assert s.lr_at(10) == pytest.approx(0.1)


def test_fractional_warmup_is_rounded_to_iterations():
    s = LRSchedule("const", base_lr=0.4, epochs=3, iters_per_epoch=4, warmup_epochs=0.5)
    assert s.warmup_iters == 2 and s.warmup_end == 0.5
    assert [s.lr_at(it / 4) for it in range(4)] == pytest.approx([0.2, 0.4, 0.4, 0.4])


def test_step_is_cumulative():
    s = LRSchedule("step", base_lr=1.0, epochs=6, iters_per_epoch=10, milestones=[2, 4], decay=0.1)
    assert s.lr_at(1.9) == pytest.approx(1.0)
    assert s.lr_at(2.0) == pytest.approx(0.1)
    assert s.lr_at(3.99) == pytest.approx(0.1)
    assert s.lr_at(4.5) == pytest.approx(0.01)
    assert s.lr_at(6) == pytest.approx(0.01)


def test_linear():
    s = LRSchedule("linear", base_lr=1.0, epochs=10, iters_per_epoch=3, final_lr=0.0)
    assert s.lr_at(2.5) == pytest.approx(0.75)
    assert s.lr_at(10) == pytest.approx(0.0)
    s = LRSchedule("linear", base_lr=0.2, epochs=4, iters_per_epoch=3, final_lr=0.1, warmup_epochs=2)
    assert s.lr_at(3) == pytest.approx(0.15)  # halfway through [2, 4]


def test_polyline_passes_through_its_points():
    # points (0, 1), (2, 0.1), (6, 0.01), (10, 0.01): flat after the last milestone
    s = LRSchedule("polyline", base_lr=1.0, epochs=10, iters_per_epoch=2, milestones=[2, 6], decay=0.1)
    assert s.lr_at(0) == pytest.approx(1.0)
    assert s.lr_at(1) == pytest.approx(0.55)
    assert s.lr_at(2) == pytest.approx(0.1)
    assert s.lr_at(4) == pytest.approx(0.055)
    assert s.lr_at(6) == pytest.approx(0.01)
    assert s.lr_at(8) == pytest.approx(0.01)
    assert s.lr_at(10) == pytest.approx(0.01)


def test_polyline_with_warmup_starts_at_the_end_of_warmup():
    # points (1, 1), (3, 0.5), (5, 0.5); warmup: iteration i < 2 is (i + 1) / 2
    s = LRSchedule("polyline", base_lr=1.0, epochs=5, iters_per_epoch=2, warmup_epochs=1, milestones=[3], decay=0.5)
    assert [s.lr_at(it / 2) for it in range(3)] == pytest.approx([0.5, 1.0, 1.0])
    assert s.lr_at(2) == pytest.approx(0.75)
    assert s.lr_at(4) == pytest.approx(0.5)


def test_polyline_without_milestones_is_constant():
    s = LRSchedule("polyline", base_lr=0.3, epochs=5, iters_per_epoch=2)
    assert [s.lr_at(e) for e in (0, 2.5, 5)] == pytest.approx([0.3, 0.3, 0.3])


def test_const_with_warmup():
    s = LRSchedule("const", base_lr=2.0, epochs=3, iters_per_epoch=4, warmup_epochs=1)
    assert [s.lr_at(it / 4) for it in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


def test_step_sets_scaled_lr_in_each_group():
    backbone, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [backbone], "lr_scale": 0.2}, {"params": [head]}], lr=1.0)
    s = LRSchedule("cosine", base_lr=1e-3, epochs=4, iters_per_epoch=10)
    lr = s.step(opt, 20)  # epoch 2 of 4: half of base
    assert lr == pytest.approx(5e-4)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4)


def test_cosine_never_increases_after_warmup():
    s = LRSchedule("cosine", base_lr=1.0, epochs=7, iters_per_epoch=13, warmup_epochs=1)
    lrs = [s.lr_at(it / 13) for it in range(13, s.total_iters + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(UserError) as err:
        LRSchedule("exp", base_lr=0.1, epochs=10, iters_per_epoch=1)
    assert all(p in str(err.value) for p in POLICIES)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"policy": "step", "milestones": [4, 2]},
        {"policy": "step", "milestones": [2, 2]},
        {"policy": "step", "milestones": [2, 10]},  # at the end: never takes effect
        {"policy": "polyline", "milestones": [12]},
        {"policy": "step", "milestones": [0]},
        {"policy": "step", "milestones": [1], "warmup_epochs": 2},  # inside the warmup
        {"policy": "step", "milestones": [3], "decay": 0.0},
        {"policy": "cosine", "milestones": [3]},  # would be silently ignored
        {"policy": "cosine", "warmup_epochs": 10},
        {"policy": "cosine", "warmup_epochs": -1},
        {"policy": "cosine", "warmup_epochs": 9.99},  # rounds to the whole run
        {"policy": "cosine", "base_lr": 0.0},
    ],
)
def test_bad_settings_are_user_errors(kwargs):
    args = {"base_lr": 0.1, "epochs": 10, "iters_per_epoch": 10, **kwargs}
    with pytest.raises(UserError):
        LRSchedule(**args)


def test_wd_end_follows_dinos_cosine_on_decayed_groups_only_and_survives_a_resume():
    import numpy as np
    w, b = torch.nn.Parameter(torch.ones(3, 3)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.04}, {"params": [b], "weight_decay": 0.0}], lr=1.0)
    sched = LRSchedule("cosine", 1e-3, epochs=4, iters_per_epoch=5, warmup_epochs=1, wd_end=0.4)
    # dino/utils.py cosine_scheduler(0.04, 0.4, epochs=4, niter_per_ep=5), no warm-up
    iters = np.arange(4 * 5)
    expect = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * iters / len(iters)))
    got = []
    for i in range(20):
        sched.step(opt, i)
        got.append(opt.param_groups[0]["weight_decay"])
        assert opt.param_groups[1]["weight_decay"] == 0.0
        if i == 9:                              # a resumed optimiser continues the curve from its saved groups
            state = opt.state_dict()
            opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.04}, {"params": [b], "weight_decay": 0.0}],
                                    lr=1.0)
            opt.load_state_dict(state)
    assert np.allclose(got, expect, rtol=0, atol=1e-12)
    plain = torch.optim.SGD([w], lr=1.0, weight_decay=0.04)
    LRSchedule("cosine", 1e-3, epochs=4, iters_per_epoch=5).step(plain, 19)
    assert plain.param_groups[0]["weight_decay"] == 0.04                  # without wd_end: untouched


def test_wd_end_must_be_a_number_at_least_zero():
    with pytest.raises(UserError, match="--wd-end -1"):
        LRSchedule("cosine", 1e-3, epochs=4, iters_per_epoch=5, wd_end=-1.0)
