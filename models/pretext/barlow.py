"""Barlow Twins (Zbontar et al., ICML 2021), mode 914.

Backbone and a 3-layer projector (Linear -> BN -> ReLU twice, then Linear; hidden
``--hidden-dim`` and output ``--feature_dim``, both 8192 in the paper; smaller works
at small batch, e.g. 2048 on a CPU). The cross-correlation of the two views'
batch-standardised embeddings is pushed to the identity, off-diagonal terms weighted by
``--barlow-lambda`` 5e-3; correlation and standardisation use the GLOBAL batch (rows of
all processes gathered with gradient: losses/barlow.py). Each view is its own batch
through the networks, as in the paper's code. Views: ``--aug 6`` by default, BYOL's
asymmetric pair, which the paper adopts.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from config.errors import UserError
from datasets.views import build_views
from losses.barlow import BarlowTwinsLoss
from models.heads import mlp
from models.pretext.ema import add_hidden_dim, check_positive
from models.pretext.simclr import embedding_std

LOSSES = ("BarlowTwinsLoss", "barlow")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True
AUG = 6
FEATURE_DIM = 8192
HIDDEN_DIM = 8192
LAMBDA = 5e-3


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--barlow-lambda", dest="barlow_lambda", type=float, default=LAMBDA,
                       help=f"mode 914: weight of the off-diagonal (redundancy) term (default {LAMBDA})")
    add_hidden_dim(group)


def check_args(args: argparse.Namespace) -> None:
    if args.barlow_lambda < 0:
        raise UserError(f"--barlow-lambda {args.barlow_lambda} must be >= 0; the paper uses 5e-3")
    check_positive(args, "hidden_dim")


class BarlowTwins(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = FEATURE_DIM, hidden_dim: int = HIDDEN_DIM,
                 lambd: float = LAMBDA) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp([backbone.out_dim, hidden_dim, hidden_dim, feature_dim], last_bias=False)
        self.criterion = BarlowTwinsLoss(lambd)

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = views
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        loss = self.criterion(z1.float(), z2.float())
        return loss, {"emb_std": embedding_std(torch.cat([z1, z2]))}


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> BarlowTwins:
    return BarlowTwins(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim or HIDDEN_DIM,
                       lambd=args.barlow_lambda)


def make_transform(args: argparse.Namespace, opt):
    aug = AUG if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index)
