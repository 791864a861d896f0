"""config.limits: the smallest input each backbone takes, measured."""
from __future__ import annotations

import pytest
import torch

from config import limits
from config.codes import BACKBONES
from config.errors import UserError


def test_min_input_sizes_are_exact():
    """MIN_INPUT_SIZE is measured: each listed backbone takes min x min and fails at min - 1;
    the others (ResNets) take 1 x 1."""
    from models import build_model
    torch.set_num_threads(1)
    for digit, arch in BACKBONES.items():
        model = build_model(f"0{digit}0000", 3, 4).eval()
        least = limits.MIN_INPUT_SIZE.get(arch, 1)
        with torch.no_grad():
            assert model(torch.zeros(1, 3, least, least)).shape == (1, 4), arch
            if least > 1:
                with pytest.raises(RuntimeError):
                    model(torch.zeros(1, 3, least - 1, least - 1))
        limits.check_input_size(f"0{digit}0000", least)
        if least > 1:
            with pytest.raises(UserError, match=f"at least {least}x{least}"):
                limits.check_input_size(f"0{digit}0000", least - 1)


def test_input_memory_bound_is_the_batch_and_first_feature_map():
    """4 bytes x batch x side^2 x (bands + 64 maps at half the side): that much passes, one byte less fails."""
    need = 4 * 8 * 100 * 100 * (13 + 16)
    limits.check_input_memory(100, 13, 8, memory=need)
    with pytest.raises(UserError, match="--input_size 100 needs at least"):
        limits.check_input_memory(100, 13, 8, memory=need - 1)
    assert limits.physical_memory() > 2**30
    limits.check_input_memory(224, 13, 128)                     # what baselines use fits any machine here
