"""SimCLR (Chen et al., 2020), mode 910: two augmented views, projection head, NT-Xent.

Both views go through the backbone in ONE batch (BatchNorm sees 2N images, as in the
paper's global BN), the 2-layer MLP head maps pooled features to ``--feature_dim`` and
NT-Xent with temperature ``--tau`` contrasts them, with negatives from every process.
``RECIPES`` (``--recipe``): ``paper`` is the official CIFAR-10 run of the authors' README,
``small`` solo-learn's ResNet-18 CIFAR config; ``SOURCES`` names where each value comes from.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from datasets.views import build_views, crop_scale_of
from losses.ntxent import NTXentLoss
from models.heads import ProjectionHead
from models.pretext import vit_recipes

LOSSES = ("NTXentLoss", "ntxent")
USES_AUG = True          # --aug / --aug_p choose the two views
SYNC_BN = True           # the loss couples a batch's images: SyncBatchNorm by default on several GPUs
TAU = 0.5                # NT-Xent temperature (--tau)
FEATURE_DIM = 128        # projection size (--feature_dim)

_README = "google-research/simclr README.md @0075cc07, CIFAR-10 command"
_TF2 = "google-research/simclr tf2/"
_SOLO = "vturrisi/solo-learn scripts/pretrain/cifar/simclr.yaml @07f8c3bb"
_SOLO_BASE = "vturrisi/solo-learn solo/args/pretrain.py @07458e52 and solo/methods/base.py @c980e9e3 defaults"
_CONVNET = {
    "paper": {"optimizer": "lars", "lr_base": 1.0, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-6,
              "lars_eta": 1e-3, "lars_clip": False, "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 10,
              "tau": TAU, "feature_dim": FEATURE_DIM, "aug": 5, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
    "small": {"optimizer": "lars", "lr_base": 0.4, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-4,
              "lars_eta": 0.02, "lars_clip": True, "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 10,
              "tau": 0.2, "feature_dim": FEATURE_DIM, "aug": 5, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
}
_CONVNET_SOURCES = {
    "paper": {"optimizer": f"{_TF2}run.py --optimizer lars", "lr_base": f"{_README}: --learning_rate 1.0",
              "lr_rule": f"{_TF2}model.py WarmUpAndCosineDecay, --learning_rate_scaling linear (default)",
              "momentum": f"{_TF2}run.py --momentum 0.9", "wd": f"{_README}: --weight_decay 1e-6",
              "lars_eta": f"{_TF2}lars_optimizer.py EETA_DEFAULT = 0.001",
              "lars_clip": f"{_TF2}lars_optimizer.py: the trust ratio is not capped",
              "exclude_bias_norm": f"{_TF2}model.py build_optimizer: batch_normalization and bias excluded from "
                                   "weight decay and layer adaptation",
              "bias_lr_scale": f"{_TF2}model.py: one lr for every parameter",
              "warmup": f"{_TF2}run.py --warmup_epochs 10",
              "tau": f"{_README}: --temperature 0.5 (the SPEC's default)",
              "feature_dim": "SimCLR v1 head (TF1 model_util.projection_head): Linear+BN, ReLU, Linear to 128; the SPEC",
              "aug": "SimCLR: two independently augmented views (tf2/data_util.py preprocess_for_train)",
              "aug_p": "crop, flip, colour jitter, grayscale, blur (tf2/data_util.py); S5 is this repo's version",
              "crop_scale": f"{_TF2}data_util.py crop_and_resize area_range=(0.08, 1.0)"},
    "small": {"optimizer": _SOLO, "lr_base": f"{_SOLO} optimizer.lr 0.4 (per 256)",
              "lr_rule": "solo-learn solo/args/pretrain.py: lr x batch / 256", "momentum": _SOLO_BASE,
              "wd": f"{_SOLO} weight_decay 1e-4", "lars_eta": f"{_SOLO} eta 0.02", "lars_clip": f"{_SOLO} clip_lr True",
              "exclude_bias_norm": f"{_SOLO} exclude_bias_n_norm True", "bias_lr_scale": f"{_SOLO}: one lr",
              "warmup": f"{_SOLO_BASE}: warmup_epochs 10", "tau": f"{_SOLO} temperature 0.2",
              "feature_dim": "the SPEC's 2-layer BN head to 128 (solo-learn's is 2048-256 without BN)",
              "aug": "scripts/pretrain/cifar/augmentations/symmetric.yaml @8676d223: two symmetric views",
              "aug_p": "symmetric.yaml: crop, flip, jitter 0.8, gray 0.2, blur 0.5; S5 is this repo's version",
              "crop_scale": "symmetric.yaml crop min_scale 0.08, max_scale 1.0"},
}
# On ViTs: MoCo v3's ViT optimisation and random patch projection (models/pretext/vit_recipes.py), the setting
# of MoCo v3's Table 4 run; heads and views as above.
_OPTIM, _OPTIM_SOURCES = vit_recipes.moco_v3(vit_recipes.TABLE4.format(method="SimCLR"))
_VIT = {name: {**_OPTIM[name], "tau": 0.2} for name in _OPTIM}
_VIT_SOURCES = {name: {**_OPTIM_SOURCES[name], "tau": "MoCo v3's ViT temperature (facebookresearch/moco-v3 CONFIG.md "
                       "@38aae447 --moco-t=.2): NT-Xent is the same InfoNCE with in-batch negatives"}
                for name in _OPTIM_SOURCES}
RECIPES, SOURCES = vit_recipes.with_vit(_CONVNET, _CONVNET_SOURCES, _VIT, _VIT_SOURCES)


def embedding_std(z: Tensor) -> Tensor:
    """Mean over dimensions of the batch std of L2-normalised embeddings.

    About 1/sqrt(d) for well-spread embeddings (0.088 for d=128); ~0 when the
    representation collapses. A detached 0-dim tensor: logging it costs no host sync.
    """
    zn = nn.functional.normalize(z.detach().float(), dim=1)
    return zn.std(dim=0).mean()


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = 128, tau: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.out_dim, backbone.out_dim, feature_dim)
        self.criterion = NTXentLoss(temperature=tau)

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        xa, xb = views
        z = self.projector(self.backbone(torch.cat([xa, xb], dim=0)))
        za, zb = z.chunk(2, dim=0)
        loss = self.criterion(za, zb)
        return loss, {"emb_std": embedding_std(z)}


def build(args, opt, backbone: nn.Module) -> SimCLR:
    return SimCLR(backbone, feature_dim=args.feature_dim, tau=args.tau)


def make_transform(args, opt):
    aug = 5 if args.aug is None else args.aug
    plan = args.aug_p or "S5"
    return build_views(aug, plan, opt.input_size, opt.mean, opt.std, opt.rgb_index, crop_scale=crop_scale_of(args))
