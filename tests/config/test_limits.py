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
