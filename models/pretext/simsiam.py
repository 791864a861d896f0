"""SimSiam (Chen & He, CVPR 2021), mode 913.

One network, two views, no negatives and no momentum encoder: a 3-layer projector
(Linear -> BN -> ReLU twice, then Linear -> BN without affine; hidden ``--hidden-dim``,
the backbone's width in the paper, and output ``--feature_dim`` 2048) and a predictor (2048 -> ``--pred-hidden`` 512 ->
2048, BN + ReLU in between); each view's prediction matches the other's projection
under a stop-gradient (the collapse-preventing ingredient the paper isolates). Each
view is its own batch through the networks (BatchNorm per view, as in the paper's
code). Views: SimCLR's (``--aug`` 5, ``--aug_p`` S5 by default), as in the paper.
The paper's recipe can keep the predictor's learning rate fixed (``--fix-pred-lr`` in
its code, off there by default); here it follows ``--lr_policy`` like every other parameter.
``RECIPES``: ``paper`` is the official ImageNet code, ``small`` solo-learn's ResNet-18 CIFAR config.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from datasets.views import build_views, crop_scale_of
from losses.simsiam import SimSiamLoss
from models.heads import mlp
from models.pretext import vit_recipes
from models.pretext.ema import add_hidden_dim, check_positive
from models.pretext.simclr import embedding_std

LOSSES = ("SimSiamLoss", "simsiam")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True
FEATURE_DIM = 2048
PRED_HIDDEN = 512

_MAIN = "facebookresearch/simsiam main_simsiam.py @a7bc1772"
_BUILDER = "facebookresearch/simsiam simsiam/builder.py @39ac33e6"
_SOLO = "vturrisi/solo-learn scripts/pretrain/cifar/simsiam.yaml @3a64e558"
_SOLO_BASE = "vturrisi/solo-learn solo/args/pretrain.py @07458e52 and solo/methods/base.py @c980e9e3 defaults"
_CONVNET = {
    "paper": {"optimizer": "sgd", "lr_base": 0.05, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-4,
              "exclude_bias_norm": False, "bias_lr_scale": 1.0, "warmup": 0, "feature_dim": FEATURE_DIM,
              "hidden_dim": "backbone", "pred_hidden": PRED_HIDDEN, "aug": 5, "aug_p": "S5", "crop_scale": [0.2, 1.0]},
    "small": {"optimizer": "sgd", "lr_base": 0.5, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-5,
              "exclude_bias_norm": False, "bias_lr_scale": 1.0, "warmup": 10, "feature_dim": 2048,
              "hidden_dim": 2048, "pred_hidden": PRED_HIDDEN, "aug": 5, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
}
_CONVNET_SOURCES = {
    "paper": {"optimizer": f"{_MAIN}: torch.optim.SGD", "lr_base": f"{_MAIN} --lr 0.05",
              "lr_rule": f"{_MAIN}: init_lr = args.lr * args.batch_size / 256", "momentum": f"{_MAIN} --momentum 0.9",
              "wd": f"{_MAIN} --wd 1e-4", "exclude_bias_norm": f"{_MAIN}: SGD over every parameter with weight_decay",
              "bias_lr_scale": f"{_MAIN}: one lr (--fix-pred-lr off by default)",
              "warmup": f"{_MAIN} adjust_learning_rate: cosine, no warm-up", "feature_dim": f"{_MAIN} --dim 2048",
              "hidden_dim": f"{_BUILDER}: prev_dim = the encoder's fc input width (2048 for ResNet-50)",
              "pred_hidden": f"{_MAIN} --pred-dim 512", "aug": "SimSiam: two independent views (MoCo v2's augmentation)",
              "aug_p": f"{_MAIN}: crop, jitter 0.4 p 0.8, gray 0.2, blur 0.5, flip; S5 is this repo's version",
              "crop_scale": f"{_MAIN} RandomResizedCrop(224, scale=(0.2, 1.))"},
    "small": {"optimizer": _SOLO, "lr_base": f"{_SOLO} lr 0.5 (per 256)", "lr_rule": "solo-learn: lr x batch / 256",
              "momentum": _SOLO_BASE, "wd": f"{_SOLO} weight_decay 1e-5",
              "exclude_bias_norm": f"{_SOLO_BASE}: exclude_bias_n_norm_wd False (every parameter decayed)",
              "bias_lr_scale": f"{_SOLO}: one lr", "warmup": f"{_SOLO_BASE}: warmup_epochs 10",
              "feature_dim": f"{_SOLO} proj_output_dim 2048", "hidden_dim": f"{_SOLO} proj_hidden_dim 2048",
              "pred_hidden": f"{_SOLO} pred_hidden_dim 512",
              "aug": "solo-learn cifar/augmentations/symmetric_weak.yaml @24322891: two symmetric views",
              "aug_p": "symmetric_weak.yaml: crop, flip, jitter 0.4, gray 0.2, blur 0.5; S5 is this repo's version",
              "crop_scale": "symmetric_weak.yaml crop min_scale 0.08"},
}
# On ViTs: no published ViT recipe, so MoCo v3's ViT optimisation and random patch projection
# (models/pretext/vit_recipes.py, docs/recipes.md); heads and views as above.
_OPTIM, _OPTIM_SOURCES = vit_recipes.moco_v3(vit_recipes.UNPUBLISHED)
_VIT, _VIT_SOURCES = _OPTIM, _OPTIM_SOURCES
RECIPES, SOURCES = vit_recipes.with_vit(_CONVNET, _CONVNET_SOURCES, _VIT, _VIT_SOURCES)


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--pred-hidden", dest="pred_hidden", type=int, default=None,
                       help="modes 912/913: hidden width of the predictor (default 4096 for BYOL, 512 for SimSiam)")
    add_hidden_dim(group)


def check_args(args: argparse.Namespace) -> None:
    check_positive(args, "pred_hidden", "hidden_dim")
    vit_recipes.note_unpublished(args, "SimSiam")


class SimSiam(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = FEATURE_DIM, hidden_dim: int | None = None,
                 pred_hidden: int = PRED_HIDDEN) -> None:
        """``hidden_dim`` None: the backbone's width, as the paper's projector."""
        super().__init__()
        self.backbone = backbone
        hidden_dim = hidden_dim or backbone.out_dim
        self.projector = mlp([backbone.out_dim, hidden_dim, hidden_dim, feature_dim],
                             last_bn=True, last_bn_affine=False, last_bias=False)
        self.predictor = mlp([feature_dim, pred_hidden, feature_dim])
        self.criterion = SimSiamLoss()

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = views
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = self.criterion(p1, p2, z1, z2)
        return loss, {"emb_std": embedding_std(torch.cat([z1, z2]))}


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> SimSiam:
    return SimSiam(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim,
                   pred_hidden=args.pred_hidden or PRED_HIDDEN)


def make_transform(args: argparse.Namespace, opt):
    aug = 5 if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index,
                       crop_scale=crop_scale_of(args))
