"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297), mode 911.

A query encoder (backbone + 2-layer MLP head, hidden ``--hidden-dim`` 2048, output
``--feature_dim`` 128) and a momentum key encoder (its EMA copy, ``--moco-momentum``
0.999, updated after every optimiser step) see two views; InfoNCE (``--tau`` 0.2)
contrasts each query with its key and a queue of keys from earlier batches.

The queue holds ``--moco-queue`` keys, 65,536 by default but at most (training images
- global batch): a queue longer than an epoch of other images would hold several keys
of every image, the query's own stale keys among them. The cap keeps it below one
epoch; with reshuffled epochs a key of the query image's previous visit can still be in
it when that visit was less than K keys ago (excluding those exactly needs image ids in
the queue, which the pretext does not see). Keys of ALL processes are enqueued, in rank
order, so every process holds the same queue. Queue, pointer and key encoder are
buffers / frozen submodules: ``--resume`` restores them exactly.

BatchNorm: the key encoder computes its batch statistics on its own batch of keys
(SyncBN over all processes on GPUs by default); MoCo's "shuffling BN" is not
implemented. The loss is asymmetric, as in MoCo v2 (view 1 queries, view 2 keys).
"""
from __future__ import annotations

import argparse
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import UserError
from datasets.views import build_views
from config.dist import all_gather_nograd
from losses.infonce import InfoNCELoss
from models.heads import mlp
from models.pretext.ema import add_hidden_dim, check_positive, check_unit, ema_update, frozen_copy
from models.pretext.simclr import embedding_std

log = logging.getLogger(__name__)

LOSSES = ("InfoNCELoss", "infonce")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
USES_AUG = True          # --aug / --aug_p choose the two views (MoCo v2 uses SimCLR's augmentation)
TAU = 0.2
FEATURE_DIM = 128
HIDDEN_DIM = 2048
QUEUE = 65536
MOMENTUM = 0.999


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--moco-queue", dest="moco_queue", type=int, default=None,
                       help=f"mode 911: queue length (default {QUEUE:,}, capped at training images - batch)")
    group.add_argument("--moco-momentum", dest="moco_momentum", type=float, default=MOMENTUM,
                       help=f"mode 911: key-encoder momentum (default {MOMENTUM})")
    add_hidden_dim(group)


def check_args(args: argparse.Namespace) -> None:
    check_unit(args, "moco_momentum")
    check_positive(args, "moco_queue", "hidden_dim")


def check_data(args: argparse.Namespace, n_train: int, global_bs: int) -> None:
    """Fix the queue length: 65,536 or ``--moco-queue``, at most ``n_train - global_bs``."""
    limit = n_train - global_bs
    if limit < 1:
        raise UserError(f"MoCo's queue needs training images beyond one batch, but --bs {global_bs} covers all "
                        f"{n_train}; lower --bs")
    if args.moco_queue is None:
        args.moco_queue = min(QUEUE, limit)
    elif args.moco_queue > limit:
        raise UserError(f"--moco-queue {args.moco_queue} exceeds training images - batch = {n_train} - {global_bs} "
                        f"= {limit}: the queue would hold stale keys of the query images; use at most {limit}")


class MoCo(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = FEATURE_DIM, hidden_dim: int = HIDDEN_DIM,
                 queue: int = QUEUE, momentum: float = MOMENTUM, tau: float = TAU) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp([backbone.out_dim, hidden_dim, feature_dim], bn=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        self.momentum = momentum
        self.criterion = InfoNCELoss(tau)
        self.register_buffer("queue", F.normalize(torch.randn(queue, feature_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None     # keys of the last step, enqueued in on_step_end

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        xq, xk = views
        q = self.projector(self.backbone(xq))
        with torch.no_grad():
            k = F.normalize(self.key_projector(self.key_backbone(xk)).float(), dim=1)
        loss = self.criterion(q.float(), k, self.queue)
        self._pending = all_gather_nograd(k)
        return loss, {"emb_std": embedding_std(q)}

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """Momentum update of the key encoder, then enqueue this step's keys (all processes, rank order)."""
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        if self._pending is not None:
            self.enqueue(self._pending)
            self._pending = None

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` at the pointer, wrapping around; the oldest keys are overwritten."""
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> MoCo:
    queue = args.moco_queue if args.moco_queue is not None else QUEUE
    log.info("MoCo v2: queue %d keys, momentum %g, tau %g", queue, args.moco_momentum, args.tau)
    return MoCo(backbone, feature_dim=args.feature_dim, hidden_dim=args.hidden_dim or HIDDEN_DIM, queue=queue,
                momentum=args.moco_momentum, tau=args.tau)


def make_transform(args: argparse.Namespace, opt):
    aug = 5 if args.aug is None else args.aug
    return build_views(aug, args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index)
