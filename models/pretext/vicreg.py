"""VICReg (Bardes, Ponce & LeCun, ICLR 2022), mode 915.

Backbone and a 3-layer expander (Linear -> BN -> ReLU twice, then Linear; hidden
``--hidden-dim`` and output ``--feature_dim``, both 8192 in the paper). The loss
weighs invariance (MSE between the views' embeddings), variance (a hinge keeping every
dimension's batch std above 1) and covariance (off-diagonal covariances to 0) by
``--vicreg-weights`` 25,25,1, with the statistics over the GLOBAL batch (rows of all
processes gathered with gradient: losses/vicreg.py). Each view is its own batch through
the networks. Views: ``--aug 6`` by default, BYOL's asymmetric pair, as in the paper.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from config.errors import UserError
from datasets.views import build_views
from losses.vicreg import VICRegLoss
from models.heads import mlp
from models.pretext.ema import add_hidden_dim, check_positive
from models.pretext.simclr import embedding_std

LOSSES = ("VICRegLoss", "vicreg")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True
AUG = 6
FEATURE_DIM = 8192
HIDDEN_DIM = 8192
WEIGHTS = "25,25,1"


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--vicreg-weights", dest="vicreg_weights", default=WEIGHTS,
                       help=f"mode 915: invariance,variance,covariance weights (default {WEIGHTS})")
    add_hidden_dim(group)


def parse_weights(text: str) -> tuple[float, float, float]:
    """``"25,25,1"`` -> (25.0, 25.0, 1.0); three finite non-negative numbers or a UserError."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v >= 0 and v < float("inf") for v in values):
        raise UserError(f"--vicreg-weights {text!r} must be three non-negative numbers "
                        "invariance,variance,covariance, e.g. 25,25,1")
    return values  # type: ignore[return-value]


def check_args(args: argparse.Namespace) -> None:
    parse_weights(args.vicreg_weights)
    check_positive(args, "hidden_dim")


class VICReg(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = FEATURE_DIM, hidden_dim: int = HIDDEN_DIM,
                 weights: tuple[float, float, float] = (25.0, 25.0, 1.0)) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp([backbone.out_dim, hidden_dim, hidden_dim, feature_dim], last_bias=False)
        self.criterion = VICRegLoss(*weights)

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = views
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        terms = self.criterion.terms(z1.float(), z2.float())
        loss = self.criterion.combine(terms)
        stats = {f"vicreg_{k}": v.detach() for k, v in terms.items()}
        return loss, {**stats, "emb_std": embedding_std(torch.cat([z1, z2]))}


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> VICReg:
    return VICReg(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim or HIDDEN_DIM,
                  weights=parse_weights(args.vicreg_weights))


def make_transform(args: argparse.Namespace, opt):
    aug = AUG if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index)
