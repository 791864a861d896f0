"""DINO (Caron et al., ICCV 2021), mode 916: self-distillation with no labels.

A student (backbone + DINO head) matches the output distribution of a teacher, the
student's exponential moving average (``--dino-momentum`` 0.996 rising to 1 on a cosine,
applied after every optimiser step). The teacher sees the 2 global crops, the student
all crops (2 global + ``--local-crops`` 6 local, datasets/views.MultiCrop). Collapse is
avoided by centring the teacher outputs (a running mean over the global batch,
``--dino-center-momentum`` 0.9) and sharpening them (``--teacher-temp`` 0.04 against the
student's ``--tau`` 0.1).

Head: MLP in -> ``--hidden-dim`` 2048 -> 2048 -> 256 (GELU, no BN: the paper's default),
L2-normalised, then a weight-normalised linear layer with fixed norm 1 (``norm_last_layer``)
to ``--feature_dim`` prototypes, 65,536 in the paper (a few thousand suffice for small
data). The last layer's gradient is zeroed during the first ``--dino-freeze-last`` epochs
(1), as the paper does for stability; with the fixed norm, weight decay only rescales it,
which the normalisation removes.

The kept backbone (kNN monitor, saved checkpoints) is the TEACHER's, which the paper
evaluates. Teacher, centre and progress are submodules / buffers: ``--resume`` restores
them exactly.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.codes import decode_netnum
from config.errors import UserError
from engine.guards import MIN_INPUT_SIZE
from datasets.views import MultiCrop
from losses.dino import DINOLoss
from models.heads import mlp
from models.pretext.ema import add_hidden_dim, check_positive, check_unit, cosine_momentum, ema_update, frozen_copy
from models.pretext.simclr import embedding_std

LOSSES = ("DINOLoss", "dino")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
TAU = 0.1                # student temperature
FEATURE_DIM = 65536      # prototypes
HIDDEN_DIM = 2048
BOTTLENECK = 256
TEACHER_TEMP = 0.04
MOMENTUM = 0.996
CENTER_MOMENTUM = 0.9
LOCAL_CROPS = 6
FREEZE_LAST = 1          # epochs


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--local-crops", dest="local_crops", type=int, default=LOCAL_CROPS,
                       help=f"mode 916: local crops per image, besides the 2 global ones (default {LOCAL_CROPS})")
    group.add_argument("--teacher-temp", dest="teacher_temp", type=float, default=TEACHER_TEMP,
                       help=f"mode 916: teacher temperature (default {TEACHER_TEMP}; the student's is --tau)")
    group.add_argument("--dino-momentum", dest="dino_momentum", type=float, default=MOMENTUM,
                       help=f"mode 916: teacher momentum at the start, rising to 1 on a cosine (default {MOMENTUM})")
    group.add_argument("--dino-center-momentum", dest="dino_center_momentum", type=float, default=CENTER_MOMENTUM,
                       help=f"mode 916: momentum of the teacher-output centre (default {CENTER_MOMENTUM})")
    group.add_argument("--dino-freeze-last", dest="dino_freeze_last", type=int, default=FREEZE_LAST,
                       help=f"mode 916: epochs during which the head's last layer does not learn (default {FREEZE_LAST})")
    add_hidden_dim(group)


def check_args(args: argparse.Namespace) -> None:
    if args.local_crops < 0:
        raise UserError(f"--local-crops {args.local_crops} must be >= 0 (the paper uses 6-10)")
    if not 0.005 <= args.teacher_temp <= 10:
        raise UserError(f"--teacher-temp {args.teacher_temp} is outside 0.005..10; the paper uses 0.04-0.07")
    if args.dino_freeze_last < 0:
        raise UserError(f"--dino-freeze-last {args.dino_freeze_last} must be >= 0 epochs")
    check_unit(args, "dino_momentum")
    check_unit(args, "dino_center_momentum", closed_top=False)
    check_positive(args, "hidden_dim")


class DINOHead(nn.Module):
    """MLP -> L2 normalisation -> weight-normalised linear layer with norm fixed to 1."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = HIDDEN_DIM, bottleneck: int = BOTTLENECK) -> None:
        super().__init__()
        self.mlp = mlp([in_dim, hidden_dim, hidden_dim, bottleneck], bn=False, act=nn.GELU)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.Linear(bottleneck, out_dim, bias=False)      # its rows are normalised in forward

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features -> (prototype scores N x out_dim, the normalised bottleneck embedding)."""
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.last_layer.weight, dim=1)), z


class DINO(nn.Module):
    def __init__(self, backbone: nn.Module, out_dim: int = FEATURE_DIM, hidden_dim: int = HIDDEN_DIM,
                 bottleneck: int = BOTTLENECK, momentum: float = MOMENTUM, student_temp: float = TAU,
                 teacher_temp: float = TEACHER_TEMP, center_momentum: float = CENTER_MOMENTUM,
                 freeze_last: float = 0.0) -> None:
        """``freeze_last``: the fraction of the run during which the head's last layer gets no gradient."""
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(backbone.out_dim, out_dim, hidden_dim, bottleneck)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.criterion = DINOLoss(out_dim, teacher_temp, student_temp, center_momentum)
        self.base_momentum, self.freeze_last = momentum, freeze_last
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self.head.last_layer.weight.register_hook(self._freeze_last_layer)

    @property
    def kept_backbone(self) -> nn.Module:
        """The teacher's backbone: what DINO evaluates and what is saved."""
        return self.teacher_backbone

    def _freeze_last_layer(self, grad: Tensor) -> Tensor:
        return grad * (self.progress >= self.freeze_last).to(grad.dtype)      # no host sync

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        n = len(views[0])
        glob = torch.cat(list(views[:2]))
        s_glob, z = self.head(self.backbone(glob))
        student = list(s_glob.chunk(2))
        if len(views) > 2:                      # local crops: another resolution, another batch
            s_loc, _ = self.head(self.backbone(torch.cat(list(views[2:]))))
            student += list(s_loc.split(n))
        with torch.no_grad():
            t_glob, _ = self.teacher_head(self.teacher_backbone(glob))
        loss = self.criterion(student, list(t_glob.chunk(2)))
        return loss, {"emb_std": embedding_std(z)}

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """EMA of the student into the teacher, momentum on the cosine schedule."""
        m = cosine_momentum(self.base_momentum, progress)
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_head, self.head, m)
        self.progress.fill_(progress)


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> DINO:
    return DINO(backbone, out_dim=args.feature_dim, hidden_dim=args.hidden_dim or HIDDEN_DIM,
                momentum=args.dino_momentum, student_temp=args.tau, teacher_temp=args.teacher_temp,
                center_momentum=args.dino_center_momentum, freeze_last=args.dino_freeze_last / args.mepoch)


def make_transform(args: argparse.Namespace, opt) -> MultiCrop:
    """DINO's multi-crop; local crops smaller than the backbone takes are a user error. For a ViT the
    local side is the multiple of its patch nearest to 3/7 of the input side, and must stay below it."""
    code = decode_netnum(args.netnum) if getattr(args, "netnum", None) else None
    crops = MultiCrop(opt.input_size, opt.mean, opt.std, opt.rgb_index, getattr(args, "local_crops", LOCAL_CROPS),
                      multiple=code.patch if code is not None else 1)
    if crops.n_local and code is not None and code.vit is not None and crops.local_size >= opt.input_size:
        raise UserError(f"--mode 916's local crops must be smaller than the {opt.input_size} px input and a multiple of "
                        f"the {code.patch} px patch of --netnum {args.netnum}; use --input_size {2 * code.patch} or more, "
                        "or --local-crops 0")
    if crops.n_local and getattr(args, "netnum", None):
        need = MIN_INPUT_SIZE.get(decode_netnum(args.netnum).backbone, 1)
        if crops.local_size < need:
            raise UserError(f"--mode 916's local crops are {crops.local_size} px (3/7 of {opt.input_size}) but --netnum "
                            f"{args.netnum} needs at least {need} px; use --local-crops 0, a larger --input_size, "
                            "or a ResNet (e.g. --netnum 000000)")
    return crops
