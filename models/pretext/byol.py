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
``RECIPES``: ``paper`` is the official 1000-epoch preset, ``small`` solo-learn's ResNet-18
CIFAR config with the EMA base 0.99 that BYOL's own 100/300-epoch presets use.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from datasets.views import build_views, crop_scale_of
from losses.byol import BYOLLoss
from models.heads import mlp
from models.pretext import vit_recipes
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

_BYOL = "google-deepmind/deepmind-research byol/"
_CFG = f"{_BYOL}configs/byol.py @4822a455"
_SOLO = "vturrisi/solo-learn scripts/pretrain/cifar/byol.yaml @4d64ac0d"
_SOLO_BASE = "vturrisi/solo-learn solo/args/pretrain.py @07458e52 and solo/methods/base.py @c980e9e3 defaults"
_CONVNET = {
    "paper": {"optimizer": "lars", "lr_base": 0.2, "lr_rule": "linear", "momentum": 0.9, "wd": 1.5e-6,
              "lars_eta": 1e-3, "lars_clip": False, "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 10,
              "feature_dim": FEATURE_DIM, "hidden_dim": HIDDEN_DIM, "pred_hidden": PRED_HIDDEN,
              "byol_momentum": MOMENTUM, "aug": AUG, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
    "small": {"optimizer": "lars", "lr_base": 1.0, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-5,
              "lars_eta": 0.02, "lars_clip": True, "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 10,
              "feature_dim": FEATURE_DIM, "hidden_dim": HIDDEN_DIM, "pred_hidden": PRED_HIDDEN,
              "byol_momentum": 0.99, "aug": AUG, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
}
_CONVNET_SOURCES = {
    "paper": {"optimizer": f"{_BYOL}utils/optimizers.py @4822a455: LARS", "lr_base": f"{_CFG} _LR_PRESETS[1000] = 0.2",
              "lr_rule": f"{_CFG}: base_learning_rate * batch_size / 256", "momentum": f"{_CFG}: momentum 0.9",
              "wd": f"{_CFG} _WD_PRESETS[1000] = 1.5e-6", "lars_eta": f"{_BYOL}utils/optimizers.py: eta 1e-3",
              "lars_clip": f"{_BYOL}utils/optimizers.py scale_by_lars: not capped",
              "exclude_bias_norm": f"{_BYOL}byol_experiment.py: weight_decay_filter = lars_adaptation_filter = "
                                   "exclude_bias_and_norm", "bias_lr_scale": f"{_CFG}: one lr",
              "warmup": f"{_CFG}: warmup_steps = 10 epochs", "feature_dim": f"{_CFG} projector_output_size 256",
              "hidden_dim": f"{_CFG} projector_hidden_size 4096", "pred_hidden": f"{_CFG} predictor_hidden_size 4096",
              "byol_momentum": f"{_CFG} _EMA_PRESETS[1000] = 0.996, to 1 on a cosine",
              "aug": f"{_BYOL}utils/augmentations.py @923ad3cf: blur 1.0 / 0.1, solarise 0 / 0.2",
              "aug_p": f"{_BYOL}utils/augmentations.py: crop, flip, jitter, gray, blur; S5 is this repo's version",
              "crop_scale": f"{_BYOL}utils/dataset.py @2e866f19 _decode_and_random_crop: area 0.08-1"},
    "small": {"optimizer": _SOLO, "lr_base": f"{_SOLO} lr 1.0 (per 256)", "lr_rule": "solo-learn: lr x batch / 256",
              "momentum": _SOLO_BASE, "wd": f"{_SOLO} weight_decay 1e-5", "lars_eta": f"{_SOLO} eta 0.02",
              "lars_clip": f"{_SOLO} clip_lr True", "exclude_bias_norm": f"{_SOLO} exclude_bias_n_norm True",
              "bias_lr_scale": f"{_SOLO}: one lr", "warmup": f"{_SOLO_BASE}: warmup_epochs 10",
              "feature_dim": f"{_SOLO} proj_output_dim 256", "hidden_dim": f"{_SOLO} proj_hidden_dim 4096",
              "pred_hidden": f"{_SOLO} pred_hidden_dim 4096",
              "byol_momentum": f"{_SOLO} base_tau 0.99; {_CFG} _EMA_PRESETS 0.99 for 100-300 epochs (half-life 69 "
                               "steps, for a few thousand)",
              "aug": "solo-learn cifar/augmentations/asymmetric.yaml @24322891: asymmetric pair",
              "aug_p": "asymmetric.yaml: crop, flip, jitter 0.4, gray 0.2; S5 is this repo's version",
              "crop_scale": "asymmetric.yaml crop min_scale 0.08"},
}
# On ViTs: MoCo v3's ViT optimisation and random patch projection (models/pretext/vit_recipes.py), the setting
# of MoCo v3's Table 4 run; heads and views as above.
_OPTIM, _OPTIM_SOURCES = vit_recipes.moco_v3(vit_recipes.TABLE4.format(method="BYOL"))
_VIT = {name: {**_OPTIM[name], "byol_momentum": 0.99} for name in _OPTIM}
_VIT_SOURCES = {name: {**_OPTIM_SOURCES[name], "byol_momentum": "MoCo v3's ViT momentum (facebookresearch/moco-v3 "
                       "main_moco.py @7074f47f --moco-m 0.99 --moco-m-cos: to 1 on a cosine, BYOL's own schedule)"}
                for name in _OPTIM_SOURCES}
RECIPES, SOURCES = vit_recipes.with_vit(_CONVNET, _CONVNET_SOURCES, _VIT, _VIT_SOURCES)


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--byol-momentum", dest="byol_momentum", type=float, default=None,
                       help=f"mode 912: target momentum at the start, rising to 1 on a cosine (default: the "
                            f"--recipe's, {MOMENTUM} or 0.99)")
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
        loss = self.criterion(p1, p2, t1, t2)
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
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index,
                       crop_scale=crop_scale_of(args))
