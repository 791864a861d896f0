"""VICReg (Bardes, Ponce & LeCun, ICLR 2022), mode 915.

Backbone and a 3-layer expander (Linear -> BN -> ReLU twice, then Linear; hidden
``--hidden-dim`` and output ``--feature_dim``, both 8192 in the paper). The loss
weighs invariance (MSE between the views' embeddings), variance (a hinge keeping every
dimension's batch std above 1) and covariance (off-diagonal covariances to 0) by
``--vicreg-weights`` 25,25,1, with the statistics over the GLOBAL batch (rows of all
processes gathered with gradient: losses/vicreg.py). Each view is its own batch through
the networks. Views: ``--aug 6`` by default, BYOL's asymmetric pair, as in the paper.
``RECIPES``: ``paper`` is the official code, ``small`` solo-learn's ResNet-18 CIFAR config.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from config.errors import UserError
from datasets.views import build_views, crop_scale_of
from losses.vicreg import VICRegLoss
from models.heads import mlp
from models.pretext import vit_recipes
from models.pretext.ema import add_hidden_dim, check_positive
from models.pretext.simclr import embedding_std

LOSSES = ("VICRegLoss", "vicreg")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True
AUG = 6
FEATURE_DIM = 8192
HIDDEN_DIM = 8192
WEIGHTS = "25,25,1"

_MAIN = "facebookresearch/vicreg main_vicreg.py @b42aa232"
_SOLO = "vturrisi/solo-learn scripts/pretrain/cifar/vicreg.yaml @1df0b89d"
_SOLO_BASE = "vturrisi/solo-learn solo/args/pretrain.py @07458e52 and solo/methods/base.py @c980e9e3 defaults"
_CONVNET = {
    "paper": {"optimizer": "lars", "lr_base": 0.2, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-6,
              "lars_eta": 1e-3, "lars_clip": False, "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 10,
              "feature_dim": FEATURE_DIM, "hidden_dim": HIDDEN_DIM, "vicreg_weights": WEIGHTS,
              "aug": AUG, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
    "small": {"optimizer": "lars", "lr_base": 0.3, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-4,
              "lars_eta": 0.02, "lars_clip": True, "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 10,
              "feature_dim": 2048, "hidden_dim": 2048, "vicreg_weights": WEIGHTS,
              "aug": AUG, "aug_p": "S5", "crop_scale": [0.2, 1.0]},
}
_CONVNET_SOURCES = {
    "paper": {"optimizer": f"{_MAIN}: LARS (Barlow Twins' copy)", "lr_base": f"{_MAIN} --base-lr 0.2",
              "lr_rule": f"{_MAIN} adjust_learning_rate: base_lr * batch_size / 256", "momentum": f"{_MAIN} LARS 0.9",
              "wd": f"{_MAIN} --wd 1e-6", "lars_eta": f"{_MAIN} LARS eta 0.001", "lars_clip": f"{_MAIN}: not capped",
              "exclude_bias_norm": f"{_MAIN}: weight_decay_filter = lars_adaptation_filter = exclude_bias_and_norm",
              "bias_lr_scale": f"{_MAIN}: one lr for every parameter", "warmup": f"{_MAIN}: 10 warm-up epochs",
              "feature_dim": f"{_MAIN} --mlp 8192-8192-8192", "hidden_dim": f"{_MAIN} --mlp 8192-8192-8192",
              "vicreg_weights": f"{_MAIN} --sim-coeff 25 --std-coeff 25 --cov-coeff 1",
              "aug": "facebookresearch/vicreg augmentations.py @cc1ef4f1: blur 1.0 / 0.1, solarise 0 / 0.2",
              "aug_p": "augmentations.py: crop, flip, jitter 0.4 p 0.8, gray 0.2; S5 is this repo's version",
              "crop_scale": "augmentations.py RandomResizedCrop(224): torchvision's default scale (0.08, 1.0)"},
    "small": {"optimizer": _SOLO, "lr_base": f"{_SOLO} lr 0.3 (per 256)", "lr_rule": "solo-learn: lr x batch / 256",
              "momentum": _SOLO_BASE, "wd": f"{_SOLO} weight_decay 1e-4", "lars_eta": f"{_SOLO} eta 0.02",
              "lars_clip": f"{_SOLO} clip_lr True", "exclude_bias_norm": f"{_SOLO} exclude_bias_n_norm True",
              "bias_lr_scale": f"{_SOLO}: one lr", "warmup": f"{_SOLO_BASE}: warmup_epochs 10",
              "feature_dim": f"{_SOLO} proj_output_dim 2048", "hidden_dim": f"{_SOLO} proj_hidden_dim 2048",
              "vicreg_weights": f"{_SOLO} sim 25, var 25, cov 1",
              "aug": f"{_SOLO}: two views (its solarise 0.1 on both and no blur are not reproduced: --aug 6)",
              "aug_p": f"{_SOLO}: crop, flip, jitter 0.4, gray 0.2; S5 is this repo's version",
              "crop_scale": f"{_SOLO} crop min_scale 0.2"},
}
# On ViTs: no published ViT recipe, so MoCo v3's ViT optimisation and random patch projection
# (models/pretext/vit_recipes.py, docs/recipes.md); heads and views as above.
_OPTIM, _OPTIM_SOURCES = vit_recipes.moco_v3(vit_recipes.UNPUBLISHED)
_VIT, _VIT_SOURCES = _OPTIM, _OPTIM_SOURCES
RECIPES, SOURCES = vit_recipes.with_vit(_CONVNET, _CONVNET_SOURCES, _VIT, _VIT_SOURCES)


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--vicreg-weights", dest="vicreg_weights", default=None,
                       help=f"mode 915: invariance,variance,covariance weights (default: the --recipe's, {WEIGHTS})")
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
    vit_recipes.note_unpublished(args, "VICReg")


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
        terms = self.criterion.terms(z1, z2)
        loss = self.criterion.combine(terms)
        stats = {f"vicreg_{k}": v.detach() for k, v in terms.items()}
        return loss, {**stats, "emb_std": embedding_std(torch.cat([z1, z2]))}


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> VICReg:
    return VICReg(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim or HIDDEN_DIM,
                  weights=parse_weights(args.vicreg_weights))


def make_transform(args: argparse.Namespace, opt):
    aug = AUG if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index,
                       crop_scale=crop_scale_of(args))
