"""SimSiam (Chen & He, CVPR 2021), mode 913.

One network, two views, no negatives and no momentum encoder: a 3-layer projector
(Linear -> BN -> ReLU twice, then Linear -> BN without affine; hidden ``--hidden-dim``
and output ``--feature_dim`` 2048) and a predictor (2048 -> ``--pred-hidden`` 512 ->
2048, BN + ReLU in between); each view's prediction matches the other's projection
under a stop-gradient (the collapse-preventing ingredient the paper isolates). Each
view is its own batch through the networks (BatchNorm per view, as in the paper's
code). Views: SimCLR's (``--aug`` 5, ``--aug_p`` S5 by default), as in the paper.
The paper's recipe can keep the predictor's learning rate fixed (``--fix-pred-lr`` in
its code, off there by default); here it follows ``--lr_policy`` like every other parameter.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from datasets.views import build_views
from losses.simsiam import SimSiamLoss
from models.heads import mlp
from models.pretext.ema import add_hidden_dim, check_positive
from models.pretext.simclr import embedding_std

LOSSES = ("SimSiamLoss", "simsiam")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True
FEATURE_DIM = 2048
HIDDEN_DIM = 2048
PRED_HIDDEN = 512


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--pred-hidden", dest="pred_hidden", type=int, default=None,
                       help="modes 912/913: hidden width of the predictor (default 4096 for BYOL, 512 for SimSiam)")
    add_hidden_dim(group)


def check_args(args: argparse.Namespace) -> None:
    check_positive(args, "pred_hidden", "hidden_dim")


class SimSiam(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = FEATURE_DIM, hidden_dim: int = HIDDEN_DIM,
                 pred_hidden: int = PRED_HIDDEN) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp([backbone.out_dim, hidden_dim, hidden_dim, feature_dim],
                             last_bn=True, last_bn_affine=False, last_bias=False)
        self.predictor = mlp([feature_dim, pred_hidden, feature_dim])
        self.criterion = SimSiamLoss()

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = views
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = self.criterion(p1.float(), p2.float(), z1.float(), z2.float())
        return loss, {"emb_std": embedding_std(torch.cat([z1, z2]))}


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> SimSiam:
    return SimSiam(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim or HIDDEN_DIM,
                   pred_hidden=args.pred_hidden or PRED_HIDDEN)


def make_transform(args: argparse.Namespace, opt):
    aug = 5 if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index)
