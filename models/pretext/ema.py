"""What MoCo, BYOL and DINO share: a frozen EMA copy of the online network, its momentum
schedule, and the ``--hidden-dim`` flag of the methods' MLP heads.

Not a pretext itself (no row in config.codes.PRETEXTS).
"""
from __future__ import annotations

import argparse
import copy
import math

import torch
from torch import nn
from config.errors import UserError


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient (an EMA teacher / key encoder)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- m * teacher + (1 - m) * student`` for every parameter (buffers follow their own forward)."""
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}")
    torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: ``1 - (1 - base) (cos(pi progress) + 1) / 2``, base at 0 rising to 1 at the end."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0


def add_hidden_dim(group: argparse._ArgumentGroup) -> None:
    """``--hidden-dim``: hidden width of a method's MLP heads (default: the paper's)."""
    group.add_argument("--hidden-dim", dest="hidden_dim", type=int, default=None,
                       help="modes 911-916: hidden width of the projector/head MLP (default: the --recipe's; paper: "
                            "the backbone's width for 911/913, 2048 for 916, 4096 for 912, 8192 for 914/915)")


def check_positive(args: argparse.Namespace, *dests: str) -> None:
    """Refuse a flag that must be a positive integer when given."""
    for dest in dests:
        value = getattr(args, dest, None)
        if value is not None and value < 1:
            raise UserError(f"--{dest.replace('_', '-')} {value} must be a positive integer")


def check_unit(args: argparse.Namespace, dest: str, closed_top: bool = True) -> None:
    """Refuse a momentum outside [0, 1] (or [0, 1) when ``closed_top`` is False)."""
    value = getattr(args, dest)
    if not (0.0 <= value <= 1.0) or (not closed_top and value == 1.0):
        top = "1]" if closed_top else "1)"
        raise UserError(f"--{dest.replace('_', '-')} {value} is outside [0, {top}; the papers use 0.9-0.999")
