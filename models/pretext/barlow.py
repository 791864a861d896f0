"""Barlow Twins (Zbontar et al., ICML 2021), mode 914.

Backbone and a 3-layer projector (Linear -> BN -> ReLU twice, then Linear; hidden
``--hidden-dim`` and output ``--feature_dim``, both 8192 in the paper; smaller works
at small batch, e.g. 2048 on a CPU). The cross-correlation of the two views'
batch-standardised embeddings is pushed to the identity, off-diagonal terms weighted by
``--barlow-lambda`` 5e-3; correlation and standardisation use the GLOBAL batch (rows of
all processes gathered with gradient: losses/barlow.py). Each view is its own batch
through the networks, as in the paper's code. Views: ``--aug 6`` by default, BYOL's
asymmetric pair, which the paper adopts. ``RECIPES``: ``paper`` is the official code
(LARS with biases and BatchNorm parameters at 0.0048 / 0.2 = 0.024 of the weights' lr,
``--bias-lr-scale``), ``small`` solo-learn's ResNet-18 CIFAR config.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from config.errors import UserError
from datasets.views import build_views, crop_scale_of
from losses.barlow import BarlowTwinsLoss
from models.heads import mlp
from models.pretext import vit_recipes
from models.pretext.ema import add_hidden_dim, check_positive
from models.pretext.simclr import embedding_std

LOSSES = ("BarlowTwinsLoss", "barlow")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True
AUG = 6
FEATURE_DIM = 8192
HIDDEN_DIM = 8192
LAMBDA = 5.1e-3

_MAIN = "facebookresearch/barlowtwins main.py @046eec3c"
_SOLO = "vturrisi/solo-learn scripts/pretrain/cifar/barlow.yaml @07f8c3bb"
_SOLO_BASE = "vturrisi/solo-learn solo/args/pretrain.py @07458e52 and solo/methods/base.py @c980e9e3 defaults"
_CONVNET = {
    "paper": {"optimizer": "lars", "lr_base": 0.2, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-6,
              "lars_eta": 1e-3, "lars_clip": False, "exclude_bias_norm": True, "bias_lr_scale": 0.0048 / 0.2,
              "warmup": 10, "feature_dim": FEATURE_DIM, "hidden_dim": HIDDEN_DIM, "barlow_lambda": LAMBDA,
              "barlow_scale": 1.0, "aug": AUG, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
    "small": {"optimizer": "lars", "lr_base": 0.3, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-4,
              "lars_eta": 0.02, "lars_clip": True, "exclude_bias_norm": True, "bias_lr_scale": 1.0,
              "warmup": 10, "feature_dim": 2048, "hidden_dim": 2048, "barlow_lambda": LAMBDA,
              "barlow_scale": 0.1, "aug": AUG, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
}
_CONVNET_SOURCES = {
    "paper": {"optimizer": f"{_MAIN}: LARS", "lr_base": f"{_MAIN} --learning-rate-weights 0.2",
              "lr_rule": f"{_MAIN} adjust_learning_rate: base_lr = batch_size / 256", "momentum": f"{_MAIN} LARS momentum 0.9",
              "wd": f"{_MAIN} --weight-decay 1e-6", "lars_eta": f"{_MAIN} LARS eta 0.001",
              "lars_clip": f"{_MAIN} LARS: the trust ratio is not capped",
              "exclude_bias_norm": f"{_MAIN}: weight_decay_filter = lars_adaptation_filter = exclude_bias_and_norm",
              "bias_lr_scale": f"{_MAIN} --learning-rate-biases 0.0048 / --learning-rate-weights 0.2",
              "warmup": f"{_MAIN} adjust_learning_rate: 10 epochs", "feature_dim": f"{_MAIN} --projector 8192-8192-8192",
              "hidden_dim": f"{_MAIN} --projector 8192-8192-8192", "barlow_lambda": f"{_MAIN} --lambd 0.0051",
              "barlow_scale": f"{_MAIN}: the loss as it is (no scale)",
              "aug": f"{_MAIN} Transform: blur 1.0 / 0.1, solarise 0 / 0.2 (BYOL's pair)",
              "aug_p": f"{_MAIN} Transform: crop, flip, jitter 0.4 p 0.8, gray 0.2; S5 is this repo's version",
              "crop_scale": f"{_MAIN} RandomResizedCrop(224): torchvision's default scale (0.08, 1.0)"},
    "small": {"optimizer": _SOLO, "lr_base": f"{_SOLO} lr 0.3 (per 256)", "lr_rule": "solo-learn: lr x batch / 256",
              "momentum": _SOLO_BASE, "wd": f"{_SOLO} weight_decay 1e-4", "lars_eta": f"{_SOLO} eta 0.02",
              "lars_clip": f"{_SOLO} clip_lr True", "exclude_bias_norm": f"{_SOLO} exclude_bias_n_norm True",
              "bias_lr_scale": f"{_SOLO}: one lr", "warmup": f"{_SOLO_BASE}: warmup_epochs 10",
              "feature_dim": f"{_SOLO} proj_output_dim 2048", "hidden_dim": f"{_SOLO} proj_hidden_dim 2048",
              "barlow_lambda": "vturrisi/solo-learn solo/methods/barlow_twins.py @c32f9cee lamb 0.0051",
              "barlow_scale": f"{_SOLO} scale_loss 0.1 (solo/losses/barlow.py multiplies the loss by it: with "
                              "clipped LARS the excluded biases and BN step at lr x gradient, so the scale sets "
                              "their step)",
              "aug": "solo-learn cifar/augmentations/asymmetric.yaml @24322891: asymmetric pair",
              "aug_p": "asymmetric.yaml: crop, flip, jitter 0.4, gray 0.2; S5 is this repo's version",
              "crop_scale": "asymmetric.yaml crop min_scale 0.08"},
}
# On ViTs: no published ViT recipe, so MoCo v3's ViT optimisation and random patch projection
# (models/pretext/vit_recipes.py, docs/recipes.md); heads and views as above.
_OPTIM, _OPTIM_SOURCES = vit_recipes.moco_v3(vit_recipes.UNPUBLISHED)
_VIT, _VIT_SOURCES = _OPTIM, _OPTIM_SOURCES
RECIPES, SOURCES = vit_recipes.with_vit(_CONVNET, _CONVNET_SOURCES, _VIT, _VIT_SOURCES)


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--barlow-lambda", dest="barlow_lambda", type=float, default=None,
                       help=f"mode 914: weight of the off-diagonal (redundancy) term (default: the --recipe's, {LAMBDA})")
    group.add_argument("--barlow-scale", dest="barlow_scale", type=float, default=None,
                       help="mode 914: the loss is multiplied by this (default: the --recipe's: 1 as the paper, "
                            "0.1 in the small recipe as solo-learn's scale_loss)")
    add_hidden_dim(group)


def check_args(args: argparse.Namespace) -> None:
    if args.barlow_lambda < 0:
        raise UserError(f"--barlow-lambda {args.barlow_lambda} must be >= 0; the paper uses 0.0051")
    if args.barlow_scale is not None and not args.barlow_scale > 0:
        raise UserError(f"--barlow-scale {args.barlow_scale} must be positive; solo-learn uses 0.1, the paper 1")
    check_positive(args, "hidden_dim")
    vit_recipes.note_unpublished(args, "Barlow Twins")


class BarlowTwins(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = FEATURE_DIM, hidden_dim: int = HIDDEN_DIM,
                 lambd: float = LAMBDA, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.backbone = backbone
        self.projector = mlp([backbone.out_dim, hidden_dim, hidden_dim, feature_dim], last_bias=False)
        self.criterion = BarlowTwinsLoss(lambd)

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = views
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        loss = self.scale * self.criterion(z1, z2)
        return loss, {"emb_std": embedding_std(torch.cat([z1, z2]))}


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> BarlowTwins:
    return BarlowTwins(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim or HIDDEN_DIM,
                       lambd=args.barlow_lambda, scale=args.barlow_scale if args.barlow_scale is not None else 1.0)


def make_transform(args: argparse.Namespace, opt):
    aug = AUG if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index,
                       crop_scale=crop_scale_of(args))
