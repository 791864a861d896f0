"""BYOL (Grill et al., NeurIPS 2020), mode 912.

An online network (backbone, projector, predictor) predicts the projection of the
other view by a target network (backbone + projector) that is its exponential moving
average, no negatives. Projector and predictor are Linear -> BN -> ReLU -> Linear with
hidden ``--hidden-dim`` 4096 and output ``--feature_dim`` 256 (predictor hidden
``--pred-hidden``, 4096). The target's momentum follows the paper's cosine schedule
from ``--byol-momentum`` 0.996 to 1 over the run, applied after every optimiser step
(``on_step_end``); the loss is symmetric (each view predicts the other).

Views: ``--aug 6`` by default, the paper's asymmetric pair (blur with probability 1.0
and 0.1, solarisation 0 and 0.2, see datasets/views.py) on the ``--aug_p`` plan S5.
Each view goes through the networks as its own batch (BatchNorm statistics per view,
as in the reference implementation). The kept backbone is the online one.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from datasets.views import build_views
from losses.byol import BYOLLoss
from models.heads import mlp
from models.pretext.ema import (add_hidden_dim, check_positive, check_unit, cosine_momentum, ema_update,
                                frozen_copy)
from models.pretext.simclr import embedding_std

LOSSES = ("BYOLLoss", "byol")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True
AUG = 6                  # the asymmetric BYOL views
FEATURE_DIM = 256
HIDDEN_DIM = 4096
PRED_HIDDEN = 4096
MOMENTUM = 0.996


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--byol-momentum", dest="byol_momentum", type=float, default=MOMENTUM,
                       help=f"mode 912: target momentum at the start, rising to 1 on a cosine (default {MOMENTUM})")
    group.add_argument("--pred-hidden", dest="pred_hidden", type=int, default=None,
                       help="modes 912/913: hidden width of the predictor (default 4096 for BYOL, 512 for SimSiam)")
    add_hidden_dim(group)


def check_args(args: argparse.Namespace) -> None:
    check_unit(args, "byol_momentum")
    check_positive(args, "pred_hidden", "hidden_dim")


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = FEATURE_DIM, hidden_dim: int = HIDDEN_DIM,
                 pred_hidden: int = PRED_HIDDEN, momentum: float = MOMENTUM) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp([backbone.out_dim, hidden_dim, feature_dim])
        self.predictor = mlp([feature_dim, pred_hidden, feature_dim])
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.base_momentum = momentum
        self.criterion = BYOLLoss()

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = views
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(x1))
            t2 = self.target_projector(self.target_backbone(x2))
        loss = self.criterion(p1.float(), p2.float(), t1.float(), t2.float())
        return loss, {"emb_std": embedding_std(torch.cat([z1, z2]))}

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """EMA of the online backbone and projector into the target, momentum on BYOL's cosine schedule."""
        m = cosine_momentum(self.base_momentum, progress)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> BYOL:
    return BYOL(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim or HIDDEN_DIM,
                pred_hidden=args.pred_hidden or PRED_HIDDEN, momentum=args.byol_momentum)


def make_transform(args: argparse.Namespace, opt):
    aug = AUG if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index)
