"""Jigsaw, mode 973: 3x3 tiles, 1000 permutations of 9 with a large minimum Hamming distance.

The set is the greedy max-min Hamming selection of :func:`models.pretext.jigsaw_common.permutation_set`.

The view, the model and the flags are in :mod:`models.pretext.jigsaw_common`.
"""
from __future__ import annotations

import argparse

from torch import nn

from models.pretext import jigsaw_common as common
from models.pretext.jigsaw_common import (LOSSES, NEEDS_CONV_STAGES, RECIPES, SOURCES, VIS_COLUMNS,  # noqa: F401
                                          add_args, vis_rows)  # (the pretext contract)

GRID = 3
N_PERMS = 1000


def check_args(args: argparse.Namespace) -> None:
    common.check_args(args, GRID, N_PERMS)


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> common.Jigsaw:
    return common.build(args, opt, backbone, GRID, N_PERMS)


def make_transform(args: argparse.Namespace, opt) -> common.JigsawView:
    return common.make_transform(args, opt, GRID, N_PERMS)
