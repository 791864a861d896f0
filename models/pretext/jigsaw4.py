"""Jigsaw, mode 972: 2x2 tiles, all 24 permutations of 4 tiles.

The view, the model and the flags are in :mod:`models.pretext.jigsaw_common`.
"""
from __future__ import annotations

import argparse

from torch import nn

from models.pretext import jigsaw_common as common
from models.pretext.jigsaw_common import (LOSSES, NEEDS_CONV_STAGES, RECIPES, SOURCES, VIS_COLUMNS,  # noqa: F401
                                          add_args, vis_rows)  # (the pretext contract)

GRID = 2
N_PERMS = 24


def check_args(args: argparse.Namespace) -> None:
    common.check_args(args, GRID, N_PERMS)


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> common.Jigsaw:
    return common.build(args, opt, backbone, GRID, N_PERMS)


def make_transform(args: argparse.Namespace, opt) -> common.JigsawView:
    return common.make_transform(args, opt, GRID, N_PERMS)
