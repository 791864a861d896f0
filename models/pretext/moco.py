"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297), mode 911.

A query encoder (backbone + 2-layer MLP head, hidden ``--hidden-dim``, output
``--feature_dim``) and a momentum key encoder (its EMA copy, ``--moco-momentum``, updated
after every optimiser step) see two views; InfoNCE (``--tau``) contrasts each query with its
key and a queue of ``--moco-queue`` keys from earlier batches.

The query's own image is never a negative. The queue stores, beside each key, the index of
its image in the training set (``queue_index``), the epoch loop hands every batch's indices
to ``forward`` (``uses_index``), and queue entries of a query's own image are masked out of
its logits. So a queue longer than an epoch of other images is harmless for contamination
(it only holds several stale keys of the OTHER images); by default it is still sized to at
most training images - global batch. ``moco_contamination`` (the share of queries with an
own-image key among the negatives actually used: 0) and ``moco_own_keys`` (the share of
queries whose own image had a key in the queue, masked) are logged every epoch.

Shuffling BN (MoCo's DDP trick against BatchNorm leaking the positive) has a one-process
substitute from the authors' CIFAR colab: ``--moco-bn-splits S`` makes every BatchNorm2d of
both encoders normalise S groups of the batch separately (:class:`SplitBatchNorm`, as if S
GPUs), and the key batch is shuffled before the key encoder and unshuffled after, so query
and key of one image are normalised in different groups. Keys of ALL processes are enqueued
in rank order, so every process holds the same queue. Queue, indices, pointer and key
encoder are buffers / frozen submodules: ``--resume`` restores them exactly. The loss is
asymmetric, as in MoCo v2 (view 1 queries, view 2 keys).

On a ViT code the mode runs MoCo v3 (:class:`MoCoV3`; Chen, Xie & He, ICCV 2021), the MoCo
authors' method for ViTs: no queue (the keys of the batch's other images, all processes', are
the negatives), a 3-layer projector and a 2-layer predictor with BatchNorm (the last one without
affine parameters, moco-v3 ``_build_mlp``), a symmetric loss (:class:`losses.MoCoV3Loss`), and a
key-encoder momentum rising from ``--moco-momentum`` 0.99 to 1 on a cosine. Its recipe
(``vit`` values below) is the authors' ViT command, random patch projection included.
"""
from __future__ import annotations

import argparse
import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.codes import decode_netnum
from config.dist import all_gather_nograd
from config.errors import UserError
from datasets.views import build_views, crop_scale_of
from losses.infonce import InfoNCELoss, MoCoV3Loss
from models.heads import mlp
from models.pretext import vit_recipes
from models.pretext.ema import add_hidden_dim, check_positive, check_unit, cosine_momentum, ema_update, frozen_copy
from models.pretext.simclr import embedding_std
from models.vit import is_vit

log = logging.getLogger(__name__)

LOSSES = ("InfoNCELoss", "infonce")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True          # --aug / --aug_p choose the two views (MoCo v2 uses SimCLR's augmentation)
TAU = 0.2
FEATURE_DIM = 128
QUEUE = 65536
MOMENTUM = 0.999

_MOCO = "facebookresearch/moco"
_MAIN = f"{_MOCO} main_moco.py @010242b7"
_COLAB = f"{_MOCO} colab/moco_cifar10_demo.ipynb @f7364915"
_BUILDER = f"{_MOCO} moco/builder.py @4397a04e --mlp: dim_mlp = the encoder's fc input width (2048 for ResNet-50)"
_V3 = "facebookresearch/moco-v3"
_V3_MAIN = f"{_V3} main_moco.py @7074f47f"
_V3_CONFIG = f"{_V3} CONFIG.md @38aae447"
_V3_SOLO = "vturrisi/solo-learn scripts/pretrain/imagenet-100/mocov3_vit.yaml @72c172b8"
_CONVNET = {
    "paper": {"optimizer": "sgd", "lr_base": 0.03, "lr_rule": "linear", "momentum": 0.9, "wd": 1e-4,
              "exclude_bias_norm": False, "bias_lr_scale": 1.0, "warmup": 0, "tau": TAU, "feature_dim": FEATURE_DIM,
              "hidden_dim": "backbone", "moco_queue": QUEUE, "moco_momentum": MOMENTUM, "moco_bn_splits": 8,
              "aug": 5, "aug_p": "S5", "crop_scale": [0.2, 1.0]},
    "small": {"optimizer": "sgd", "lr_base": 0.03, "lr_rule": "linear", "momentum": 0.9, "wd": 5e-4,
              "exclude_bias_norm": False, "bias_lr_scale": 1.0, "warmup": 0, "tau": 0.1, "feature_dim": FEATURE_DIM,
              "hidden_dim": "backbone", "moco_queue": 4096, "moco_momentum": 0.99, "moco_bn_splits": 8,
              "aug": 5, "aug_p": "S5", "crop_scale": [0.08, 1.0]},
}
_CONVNET_SOURCES = {
    "paper": {"optimizer": f"{_MAIN}: torch.optim.SGD", "lr_base": f"{_MOCO} README.md @56700212: lr 0.03 at batch 256",
              "lr_rule": f"{_MOCO} README.md: 'linear lr scaling recipe' (0.015 at batch 128)",
              "momentum": f"{_MAIN} --momentum 0.9", "wd": f"{_MAIN} --wd 1e-4",
              "exclude_bias_norm": f"{_MAIN}: SGD(model.parameters(), weight_decay=...) decays every parameter",
              "bias_lr_scale": f"{_MAIN}: one lr", "warmup": f"{_MAIN} adjust_learning_rate --cos: no warm-up",
              "tau": f"{_MOCO} README.md: --moco-t 0.2 for MoCo v2", "feature_dim": f"{_MAIN} --moco-dim 128",
              "hidden_dim": _BUILDER, "moco_queue": f"{_MAIN} --moco-k 65536 (capped at training images - batch)",
              "moco_momentum": f"{_MAIN} --moco-m 0.999",
              "moco_bn_splits": f"shuffle BN over the paper's 8 GPUs; its one-process substitute {_COLAB} --bn-splits 8",
              "aug": "MoCo v2 --aug-plus: SimCLR's augmentation, two independent views",
              "aug_p": f"{_MAIN} aug-plus: crop, jitter 0.4 p 0.8, gray 0.2, blur 0.5, flip; S5 is this repo's version",
              "crop_scale": f"{_MAIN} RandomResizedCrop(224, scale=(0.2, 1.))"},
    "small": {"optimizer": f"{_COLAB}: SGD", "lr_base": f"{_COLAB}: lr 0.06 at batch 512 ('0.03 for batch 256')",
              "lr_rule": f"{_MOCO} README.md: linear lr scaling", "momentum": f"{_COLAB} SGD momentum 0.9 (from a copy)",
              "wd": f"{_COLAB} --wd 5e-4", "exclude_bias_norm": f"{_COLAB}: SGD(model.parameters(), weight_decay=...)",
              "bias_lr_scale": f"{_COLAB}: one lr", "warmup": f"{_COLAB} --cos: no warm-up",
              "tau": f"{_COLAB} --moco-t 0.1", "feature_dim": f"{_COLAB} --moco-dim 128",
              "hidden_dim": f"{_BUILDER} (the colab has no MLP head; MoCo v2 keeps it)",
              "moco_queue": f"{_COLAB} --moco-k 4096 (capped at training images - batch)",
              "moco_momentum": f"{_COLAB} --moco-m 0.99 (half-life 69 steps: right for a few thousand)",
              "moco_bn_splits": f"{_COLAB} --bn-splits 8 (SplitBatchNorm)",
              "aug": "two independent views as MoCo v2", "aug_p": f"{_COLAB}: crop, jitter, gray, flip (no blur); S5",
              "crop_scale": f"{_COLAB} RandomResizedCrop(32): torchvision's default scale (0.08, 1.0)"},
}
# On ViTs, MoCo v3: the authors' ViT-S/B command (paper) and solo-learn's ImageNet-100 ViT-S config (small).
_V3_TABLES, _V3_OPTIM = vit_recipes.moco_v3("MoCo v3, the MoCo authors' ViT recipe")
_NO_QUEUE = "does not apply: MoCo v3 has no queue (negatives: the keys of the batch's other images, all processes')"
_NO_SPLIT = "does not apply: a ViT has no BatchNorm to split (MoCo v3's heads use SyncBatchNorm across processes)"
_V3_AUG = f"{_V3_MAIN}: BYOL's augmentation recipe (blur 1.0 / 0.1, solarise 0 / 0.2): --aug 6"
_V3_AUG_P = f"{_V3_MAIN}: crop, jitter (0.4, 0.4, 0.2, 0.1) p 0.8, gray 0.2, blur, solarise, flip; S5 is this repo's version"
_VIT = {name: {**_V3_TABLES[name], "tau": 0.2, "feature_dim": 256, "hidden_dim": 4096, "moco_queue": None,
               "moco_momentum": 0.99, "moco_bn_splits": None, "aug": 6, "crop_scale": [0.08, 1.0]}
        for name in ("paper", "small")}
_VIT_SOURCES = {
    "paper": {**_V3_OPTIM["paper"], "tau": f"{_V3_CONFIG}: --moco-t=.2", "feature_dim": f"{_V3_MAIN} --moco-dim 256",
              "hidden_dim": f"{_V3_MAIN} --moco-mlp-dim 4096 (projector and predictor)", "moco_queue": _NO_QUEUE,
              "moco_momentum": f"{_V3_MAIN} --moco-m 0.99 with {_V3_CONFIG} --moco-m-cos (to 1 on a half cosine)",
              "moco_bn_splits": _NO_SPLIT, "aug": _V3_AUG, "aug_p": _V3_AUG_P,
              "crop_scale": f"{_V3_MAIN} --crop-min 0.08 (its default; the ResNet commands use .2)"},
    "small": {**_V3_OPTIM["small"], "tau": f"{_V3_SOLO} temperature 0.2", "feature_dim": f"{_V3_SOLO} proj_output_dim 256",
              "hidden_dim": f"{_V3_SOLO} proj_hidden_dim 4096, pred_hidden_dim 4096", "moco_queue": _NO_QUEUE,
              "moco_momentum": f"{_V3_SOLO} base_tau 0.99, final_tau 1.0", "moco_bn_splits": _NO_SPLIT,
              "aug": "solo-learn imagenet-100/augmentations/asymmetric.yaml @6f228fd0 (mocov3_vit.yaml's)",
              "aug_p": _V3_AUG_P, "crop_scale": "asymmetric.yaml crop min_scale 0.08"},
}
RECIPES, SOURCES = vit_recipes.with_vit(_CONVNET, _CONVNET_SOURCES, _VIT, _VIT_SOURCES)


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--moco-queue", dest="moco_queue", type=int, default=None,
                       help="mode 911: queue length (default: the --recipe's, 65,536 or 4,096, capped at training "
                            "images - batch)")
    group.add_argument("--moco-momentum", dest="moco_momentum", type=float, default=None,
                       help=f"mode 911: key-encoder momentum (default: the --recipe's, {MOMENTUM} or 0.99)")
    group.add_argument("--moco-bn-splits", dest="moco_bn_splits", type=int, default=None,
                       help="mode 911: BatchNorm in this many groups of the batch, keys shuffled across them (MoCo's "
                            "shuffle BN on one process; 1: plain BN; default: the --recipe's 8)")
    add_hidden_dim(group)


def _on_vit(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "netnum", None)) and decode_netnum(args.netnum).vit is not None


def check_args(args: argparse.Namespace) -> None:
    check_unit(args, "moco_momentum")
    check_positive(args, "moco_queue", "hidden_dim", "moco_bn_splits")
    if _on_vit(args):
        for dest, why in (("moco_queue", "has no queue (the batch's other images are the negatives)"),
                          ("moco_bn_splits", "runs on a ViT, which has no BatchNorm to split")):
            if getattr(args, dest) is not None:
                raise UserError(f"--{dest.replace('_', '-')} is MoCo v2's; on --netnum {args.netnum} --mode 911 runs "
                                f"MoCo v3, which {why}: drop it")


def _several_processes(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "mp_distributed", False)) or int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_data(args: argparse.Namespace, n_train: int, global_bs: int) -> None:
    """Size the queue from the data and fit ``--moco-bn-splits`` to the batch.

    A queue from the recipe (or none given) is capped at ``n_train - global_bs``; a longer
    ``--moco-queue`` is kept (own-image keys are masked; the others repeat). Split BatchNorm
    simulates several GPUs in ONE process: with several processes, or a batch it cannot
    split into groups of >= 2 images, a recipe's value is lowered and a given one refused.
    """
    if _on_vit(args):                  # MoCo v3: no queue, no split BatchNorm
        return
    filled = getattr(args, "recipe_filled", ())
    limit = n_train - global_bs
    if args.moco_queue is None or "moco_queue" in filled:
        if limit < 1:
            raise UserError(f"MoCo's queue needs training images beyond one batch, but --bs {global_bs} covers all "
                            f"{n_train}; lower --bs or give --moco-queue")
        args.moco_queue = min(args.moco_queue or QUEUE, limit)
    elif args.moco_queue > limit:
        log.info("--moco-queue %d is longer than training images - batch = %d: it holds several keys of every other "
                 "image (the query's own are masked out)", args.moco_queue, limit)
    splits = args.moco_bn_splits or 1
    if splits == 1:
        return
    given = "moco_bn_splits" not in filled
    if _several_processes(args):
        if given:
            raise UserError(f"--moco-bn-splits {splits} simulates several GPUs' BatchNorm in one process; with several "
                            "processes each normalises its own batch already: use --moco-bn-splits 1")
        args.moco_bn_splits = 1
        return
    if global_bs % splits == 0 and global_bs // splits >= 2:
        return
    if given:
        raise UserError(f"--moco-bn-splits {splits} must split --bs {global_bs} into equal groups of at least 2 images; "
                        f"use a divisor of {global_bs} up to {global_bs // 2}")
    fits = [s for s in range(splits, 0, -1) if global_bs % s == 0 and global_bs // s >= 2]
    args.moco_bn_splits = fits[0] if fits else 1
    log.info("MoCo: --bs %d splits into %d BatchNorm groups, not the recipe's %d", global_bs, args.moco_bn_splits,
             splits)


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from ``num_splits`` groups of the batch separately.

    The one-GPU simulation of per-GPU BatchNorm from the MoCo authors' CIFAR colab
    (``colab/moco_cifar10_demo.ipynb``, adapted there from davidcpage/cifar10-fast): the
    batch is viewed as ``N / S`` images of ``S x C`` channels, so image ``i`` is normalised
    with the statistics of the images ``j = i (mod S)``; the running statistics are the mean
    of the groups'. In eval mode it is a plain BatchNorm2d (same state dict keys).
    """

    def __init__(self, num_features: int, num_splits: int, **kw) -> None:
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if not self.training and self.track_running_stats:         # eval: the running statistics, per image
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                self.momentum, self.eps)
        s = self.num_splits
        if n % s:
            raise ValueError(f"SplitBatchNorm: a batch of {n} does not split into {s} groups")
        mean_s, var_s = self.running_mean.repeat(s), self.running_var.repeat(s)
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean_s, var_s, self.weight.repeat(s),
                           self.bias.repeat(s), True, self.momentum, self.eps).view(n, c, h, w)
        with torch.no_grad():
            self.running_mean.copy_(mean_s.view(s, c).mean(dim=0))
            self.running_var.copy_(var_s.view(s, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out


def split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every (affine) BatchNorm2d of ``module`` in place by a :class:`SplitBatchNorm` with its state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d and child.affine:
            new = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                 track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(child.weight.device))
        else:
            split_batchnorm(child, num_splits)
    return module


class MoCo(nn.Module):
    uses_index = True      # the epoch loop calls forward(views, index): the queue remembers whose keys it holds

    def __init__(self, backbone: nn.Module, feature_dim: int = FEATURE_DIM, hidden_dim: int | None = None,
                 queue: int = QUEUE, momentum: float = MOMENTUM, tau: float = TAU, bn_splits: int = 1) -> None:
        """``hidden_dim`` None: the backbone's width (MoCo v2's head). ``bn_splits`` > 1: :class:`SplitBatchNorm`."""
        super().__init__()
        if bn_splits > 1:
            split_batchnorm(backbone, bn_splits)
        self.backbone = backbone
        self.bn_splits = bn_splits
        self.projector = mlp([backbone.out_dim, hidden_dim or backbone.out_dim, feature_dim], bn=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        self.momentum = momentum
        self.criterion = InfoNCELoss(tau)
        self.register_buffer("queue", F.normalize(torch.randn(queue, feature_dim), dim=1))
        self.register_buffer("queue_index", torch.full((queue,), -1, dtype=torch.long))   # -1: no image
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: tuple[Tensor, Tensor] | None = None   # keys and indices of the last step, enqueued in on_step_end

    @torch.no_grad()
    def keys(self, xk: Tensor) -> Tensor:
        """Normalised keys of ``xk``; with split BN the batch is shuffled across the groups and restored."""
        if self.bn_splits > 1:
            perm = torch.randperm(len(xk), device=xk.device)
            k = self.key_projector(self.key_backbone(xk[perm]))[torch.argsort(perm)]
        else:
            k = self.key_projector(self.key_backbone(xk))
        return F.normalize(k.float(), dim=1)

    def forward(self, views: tuple[Tensor, Tensor], index: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """InfoNCE of the queries against their keys and the queue; ``index`` (N sample indices) masks
        the queue entries of each query's own image (None: no mask, as for data without indices)."""
        xq, xk = views
        q = self.projector(self.backbone(xq))
        k = self.keys(xk)
        stats = {"emb_std": embedding_std(q)}
        if index is None:
            logits = self.criterion.logits(q, k, self.queue)
            index = torch.full((len(q),), -1, dtype=torch.long, device=q.device)
        else:
            own = self.queue_index[None, :] == index[:, None]
            logits = self.criterion.logits(q, k, self.queue, exclude=own)
            stats["moco_own_keys"] = own.any(dim=1).float().mean()
            stats["moco_contamination"] = (own & torch.isfinite(logits[:, 1:])).any(dim=1).float().mean()
        self._pending = (all_gather_nograd(k), all_gather_nograd(index.to(self.queue_index.device)))
        return self.criterion.from_logits(logits), stats

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """Momentum update of the key encoder, then enqueue this step's keys (all processes, rank order)."""
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        if self._pending is not None:
            self.enqueue(*self._pending)
            self._pending = None

    @torch.no_grad()
    def enqueue(self, keys: Tensor, index: Tensor | None = None) -> None:
        """Write ``keys`` (and their sample indices) at the pointer, wrapping around; the oldest are overwritten."""
        size = self.queue.shape[0]
        if index is None:
            index = torch.full((len(keys),), -1, dtype=torch.long, device=keys.device)
        keys, index = keys[-size:], index[-size:]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_index[idx] = index.to(self.queue_index.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)


class MoCoV3(nn.Module):
    """MoCo v3 (what --mode 911 runs on a ViT): query encoder = backbone + projector + predictor, key
    encoder = EMA copy of backbone + projector, symmetric in-batch InfoNCE (moco-v3 moco/builder.py
    @337f3c96, ``MoCo_ViT``). Heads: ``_build_mlp``, Linear (no bias) -> BN -> ReLU between layers, the
    last Linear followed by a BatchNorm1d without affine parameters: a 3-layer projector
    (``hidden_dim`` 4096, ``feature_dim`` 256) and a 2-layer predictor. Each view is its own batch."""

    def __init__(self, backbone: nn.Module, feature_dim: int = 256, hidden_dim: int = 4096, momentum: float = 0.99,
                 tau: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp([backbone.out_dim, hidden_dim, hidden_dim, feature_dim], last_bn=True,
                             last_bn_affine=False, last_bias=False)
        self.predictor = mlp([feature_dim, hidden_dim, feature_dim], last_bn=True, last_bn_affine=False,
                             last_bias=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        self.base_momentum = momentum
        self.criterion = MoCoV3Loss(tau)

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = views
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1 = self.key_projector(self.key_backbone(x1))
            k2 = self.key_projector(self.key_backbone(x2))
        loss = self.criterion(q1, q2, k1, k2)
        return loss, {"emb_std": embedding_std(torch.cat([q1, q2]))}

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """Momentum update of the key encoder, the momentum on MoCo v3's cosine (``--moco-m-cos``) to 1.

        MoCo v3 updates before each forward with the momentum of that step's progress; updating
        after step t with the progress after it is the same sequence of updates."""
        m = cosine_momentum(self.base_momentum, progress)
        ema_update(self.key_backbone, self.backbone, m)
        ema_update(self.key_projector, self.projector, m)


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> MoCo | MoCoV3:
    if is_vit(backbone):
        log.info("MoCo v3 (ViT): momentum %g -> 1, tau %g, heads %d-%d", args.moco_momentum, args.tau,
                 args.hidden_dim or 4096, args.feature_dim)
        return MoCoV3(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim or 4096,
                      momentum=args.moco_momentum, tau=args.tau)
    queue = args.moco_queue if args.moco_queue is not None else QUEUE
    splits = args.moco_bn_splits or 1
    log.info("MoCo v2: queue %d keys, momentum %g, tau %g, BatchNorm in %d group(s)", queue, args.moco_momentum,
             args.tau, splits)
    return MoCo(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim, queue=queue,
                momentum=args.moco_momentum, tau=args.tau, bn_splits=splits)


def make_transform(args: argparse.Namespace, opt):
    aug = 5 if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index,
                       crop_scale=crop_scale_of(args))
