"""DINO (Caron et al., ICCV 2021), mode 916: self-distillation with no labels.

A student (backbone + DINO head) matches the output distribution of a teacher, the
student's exponential moving average (``--dino-momentum`` rising to 1 on a cosine, applied
after every optimiser step). The teacher sees the 2 global crops, the student all crops
(2 global + ``--local-crops`` local, datasets/views.MultiCrop; global crops of
``--global-crops-scale``, local ones of ``--local-crops-scale``; without local crops a
global range from a recipe is widened to 0.14-1, the official advice). Collapse is avoided
by centring the teacher outputs (a running mean over the global batch,
``--dino-center-momentum``) and sharpening them (``--teacher-temp`` against the student's
``--tau``). The teacher temperature warms up linearly from ``--warmup-teacher-temp`` to
``--teacher-temp`` over ``--warmup-teacher-temp-epochs`` (per step; the official code steps
it per epoch, the same ramp sampled coarser).

Head: MLP in -> ``--hidden-dim`` -> same -> 256 (GELU; BatchNorm after the hidden layers with
``--dino-bn-head``, the official ``use_bn_in_head``), L2-normalised, then a weight-normalised
linear layer with fixed norm 1 (``norm_last_layer``) to ``--feature_dim`` prototypes. The last
layer's gradient is zeroed during the first ``--dino-freeze-last`` epochs, as the paper does
for stability. The centre starts at zero (the paper's code) or, with ``--dino-center-init
first``, at the first batch's mean teacher output, so the first steps are centred too
(chosen for short runs: with momentum 0.9 the zero start needs ~20-45 steps to fade to
12-1 %, a good share of a run of a few hundred steps; the freeze stays as in the paper).

On a ViT the recipe is the ViT-S/16 one (the ``vit`` values below: AdamW, no BatchNorm in the
head, teacher temperature 0.04 -> 0.07, crops 0.4-1 / 0.05-0.4, gradients clipped per tensor at
3 by ``--clip-grad``, stochastic depth ``--drop-path`` 0.1 on the student only). Not reproduced:
the weight-decay cosine 0.04 -> 0.4, the lr's end at 1e-6, and ``norm_last_layer False`` of the
boosted ViT-S/16 run (the last layer here always has unit-norm rows, DINO's default).

The kept backbone (kNN monitor, saved checkpoints) is the TEACHER's, which the paper
evaluates. Teacher, centre and progress are submodules / buffers: ``--resume`` restores
them exactly. Logged: ``teacher_temp`` and ``teacher_entropy`` (mean entropy / ln K).
"""
from __future__ import annotations

import argparse
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.codes import decode_netnum
from config.errors import UserError
from config.limits import MIN_INPUT_SIZE
from datasets.views import MultiCrop, parse_scale
from losses.dino import DINOLoss
from models.pretext.ema import add_hidden_dim, check_positive, check_unit, cosine_momentum, ema_update, frozen_copy
from models.pretext.simclr import embedding_std
from models.vit import is_vit, set_drop_path

log = logging.getLogger(__name__)

LOSSES = ("DINOLoss", "dino")
SYNC_BN = True           # BN statistics over all processes' batches on GPUs by default (--no-sync-bn)
TAU = 0.1                # student temperature
FEATURE_DIM = 65536      # prototypes
HIDDEN_DIM = 2048
BOTTLENECK = 256
TEACHER_TEMP = 0.04
MOMENTUM = 0.996
CENTER_MOMENTUM = 0.9
LOCAL_CROPS = 8
FREEZE_LAST = 1          # epochs
WIDE_GLOBAL = [0.14, 1.0]    # main_dino.py --global_crops_scale help: the range to use without local crops
CLIP_GRAD = 3.0          # main_dino.py --clip_grad: each parameter's gradient norm at most 3 (utils.clip_gradients)
DROP_PATH = 0.1          # main_dino.py --drop_path_rate: stochastic depth of a ViT student (the teacher has none)

_MAIN = "facebookresearch/dino main_dino.py @04c0ad95"
_README = "facebookresearch/dino README.md 'ResNet-50 and other convnets trainings'"
_HEAD = "facebookresearch/dino vision_transformer.py @04c0ad95 DINOHead"
_SOLO = "vturrisi/solo-learn scripts/pretrain/cifar/dino.yaml @07f8c3bb"
_SOLO_BASE = "vturrisi/solo-learn solo/args/pretrain.py @07458e52 and solo/methods/base.py @c980e9e3 defaults"
_BOOST = "facebookresearch/dino README.md @70643152 'Boosting DINO performance' (ViT-S/16 full command)"
_NO_DROP = "does not apply: stochastic depth is a ViT's"
_RN50_ARGS = ("the released RN50 checkpoint's args.txt (issue #133: 'exactly those that I used'; values from two "
              "copies)")
RECIPES = {
    "paper": {"optimizer": {"convnet": "sgd", "vit": "adamw"}, "lr_base": {"convnet": 0.03, "vit": 5e-4},
              "lr_rule": "linear", "momentum": 0.9, "wd": {"convnet": 1e-4, "vit": 0.04},
              "wd_end": {"convnet": None, "vit": 0.4}, "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 10, "tau": TAU, "feature_dim": FEATURE_DIM,
              "hidden_dim": HIDDEN_DIM, "dino_bn_head": False, "teacher_temp": {"convnet": TEACHER_TEMP, "vit": 0.07},
              "warmup_teacher_temp": TEACHER_TEMP, "warmup_teacher_temp_epochs": {"convnet": 0, "vit": 30},
              "dino_momentum": MOMENTUM, "clip_grad": CLIP_GRAD, "drop_path": {"convnet": None, "vit": DROP_PATH},
              "dino_center_momentum": CENTER_MOMENTUM, "dino_freeze_last": FREEZE_LAST, "dino_center_init": "zero",
              "local_crops": LOCAL_CROPS, "global_crops_scale": {"convnet": [0.14, 1.0], "vit": [0.4, 1.0]},
              "local_crops_scale": {"convnet": [0.05, 0.14], "vit": [0.05, 0.4]}},
    "small": {"optimizer": {"convnet": "lars", "vit": "adamw"}, "lr_base": {"convnet": 0.3, "vit": 5e-4},
              "lr_rule": "linear", "momentum": 0.9, "wd": {"convnet": 1e-6, "vit": 0.04},
              "wd_end": {"convnet": None, "vit": 0.4}, "lars_eta": {"convnet": 0.02, "vit": None}, "lars_clip": {"convnet": True, "vit": None},
              "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 10, "tau": TAU, "feature_dim": 4096, "hidden_dim": HIDDEN_DIM,
              "dino_bn_head": {"convnet": True, "vit": False}, "teacher_temp": 0.07,
              "warmup_teacher_temp": TEACHER_TEMP, "warmup_teacher_temp_epochs": 50, "dino_momentum": 0.99,
              "dino_center_momentum": CENTER_MOMENTUM, "dino_freeze_last": FREEZE_LAST, "dino_center_init": "first",
              "clip_grad": {"convnet": 0.0, "vit": CLIP_GRAD}, "drop_path": {"convnet": None, "vit": DROP_PATH},
              "local_crops": 0, "global_crops_scale": WIDE_GLOBAL, "local_crops_scale": [0.05, 0.14]},
}
SOURCES = {
    "paper": {"optimizer": f"convnet: {_README} (--optimizer sgd); vit: {_MAIN} --optimizer adamw",
              "lr_base": f"convnet: {_README} --lr 0.03; vit: {_MAIN} --lr 0.0005",
              "lr_rule": f"{_MAIN}: lr * batch_size_per_gpu * world_size / 256",
              "momentum": f"convnet: {_MAIN} SGD momentum 0.9; vit: {_MAIN} torch.optim.AdamW's default beta1 0.9",
              "wd": f"convnet: {_README} --weight_decay 1e-4 --weight_decay_end 1e-4; vit: {_MAIN} --weight_decay 0.04",
              "wd_end": f"convnet: {_README} --weight_decay_end 1e-4 (= --weight_decay: constant); vit: {_MAIN} "
                        "--weight_decay_end 0.4 (cosine over the whole run, utils.cosine_scheduler)",
              "exclude_bias_norm": "facebookresearch/dino utils.get_params_groups: biases and 1-D tensors at wd 0 (it "
                                   "decays a ViT's 3-D cls_token and pos_embed, which timm's no_weight_decay() exempts here)",
              "bias_lr_scale": f"{_MAIN}: one lr", "warmup": f"{_MAIN} --warmup_epochs 10", "tau": f"{_MAIN} DINOLoss student_temp 0.1",
              "feature_dim": f"{_MAIN} --out_dim 65536", "hidden_dim": f"{_HEAD} hidden_dim 2048",
              "dino_bn_head": f"{_MAIN} --use_bn_in_head default False (neither README command sets it)",
              "teacher_temp": f"convnet: {_MAIN} --teacher_temp 0.04 (the ResNet-50 command keeps it); vit: {_BOOST} "
                              "--teacher_temp 0.07, the paper's 0.04 -> 0.07 over 30 epochs (Caron et al. 2021, "
                              "'Implementation details')",
              "warmup_teacher_temp": f"{_MAIN} --warmup_teacher_temp 0.04",
              "warmup_teacher_temp_epochs": f"convnet: {_MAIN} --warmup_teacher_temp_epochs 0 (constant 0.04); vit: "
                                            f"{_BOOST} --warmup_teacher_temp_epochs 30 (of 300 epochs; capped at 30 %)",
              "clip_grad": f"{_MAIN} --clip_grad 3.0 (the default; neither README command overrides it; the released "
                           "800-epoch ViT-S/16's args.txt sets 0, per copies of it)",
              "drop_path": f"convnet: {_NO_DROP}; vit: {_MAIN} --drop_path_rate 0.1 (student only)",
              "dino_momentum": f"{_MAIN} --momentum_teacher 0.996, to 1 on a cosine",
              "dino_center_momentum": f"{_MAIN} DINOLoss center_momentum 0.9",
              "dino_freeze_last": f"{_MAIN} --freeze_last_layer 1", "dino_center_init": f"{_MAIN} DINOLoss: zeros",
              "local_crops": f"{_MAIN} --local_crops_number 8",
              "global_crops_scale": f"convnet: {_README} --global_crops_scale 0.14 1; vit: {_MAIN} default 0.4 1 (kept "
                                    f"by {_BOOST}; its released 800-epoch ViT-S/16 used 0.25 1 with 10 local crops, per copies of its args.txt)",
              "local_crops_scale": f"convnet: {_README} --local_crops_scale 0.05 0.14; vit: {_MAIN} default 0.05 0.4"},
    "small": {"optimizer": f"convnet: {_SOLO} (LARS); vit: {_MAIN} adamw",
              "lr_base": f"convnet: {_SOLO} lr 0.3 (per 256); vit: {_MAIN} --lr 0.0005",
              "lr_rule": "solo-learn: lr x batch / 256",
              "momentum": f"convnet: {_SOLO_BASE} (LARS momentum 0.9); vit: {_MAIN} torch.optim.AdamW's default beta1 0.9",
              "wd": f"convnet: {_SOLO} weight_decay 1e-6; vit: {_MAIN} 0.04",
              "wd_end": f"convnet: {_SOLO} (constant); vit: {_MAIN} --weight_decay_end 0.4", "lars_eta": f"convnet: {_SOLO} eta 0.02; vit: does not apply (AdamW)",
              "lars_clip": f"convnet: {_SOLO} clip_lr True; vit: does not apply (AdamW)", "exclude_bias_norm": f"{_SOLO} exclude_bias_n_norm True",
              "bias_lr_scale": f"{_SOLO}: one lr", "warmup": f"{_SOLO_BASE}: warmup_epochs 10",
              "tau": "solo-learn solo/methods/dino.py student_temperature 0.1",
              "feature_dim": f"{_SOLO} num_prototypes 4096 (not 65,536 for a few thousand images)",
              "hidden_dim": f"{_SOLO} proj_hidden_dim 2048",
              "dino_bn_head": f"convnet: {_RN50_ARGS}: --use_bn_in_head True; vit: {_HEAD} default False",
              "teacher_temp": f"{_RN50_ARGS}: --teacher_temp 0.07; solo-learn dino teacher_temperature 0.07",
              "warmup_teacher_temp": "solo-learn dino warmup_teacher_temperature 0.04",
              "warmup_teacher_temp_epochs": "vturrisi/solo-learn scripts/pretrain/imagenet-100/dino.yaml @72c172b8: "
                                            "50 (of 400) epochs",
              "dino_momentum": "solo-learn BaseMomentumMethod base_tau 0.99 (half-life 69 steps; DINO's 0.9995 for "
                               "batch 256 has a half-life of 1,386 steps, most of a short run)",
              "dino_center_momentum": f"{_MAIN} DINOLoss center_momentum 0.9",
              "dino_freeze_last": f"{_SOLO} freeze_last_layer 1",
              "dino_center_init": "this repository: the first batch's mean (see the module docstring)",
              "clip_grad": f"convnet: vturrisi/solo-learn solo/methods/dino.py @e3841843 clip_grad 0 (off); vit: {_MAIN} "
                           "--clip_grad 3.0 (the ViT column takes main_dino's optimisation)",
              "drop_path": f"convnet: {_NO_DROP}; vit: {_MAIN} --drop_path_rate 0.1 (student only)",
              "local_crops": f"{_SOLO}: no local crops (two global crops)",
              "global_crops_scale": f"{_MAIN} --global_crops_scale help: 0.14 1 when multi-crop is off",
              "local_crops_scale": f"{_README} --local_crops_scale 0.05 0.14 (used when --local-crops > 0)"},
}


def _scale(flag: str):
    return lambda text: parse_scale(text, flag)


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--local-crops", dest="local_crops", type=int, default=None,
                       help=f"mode 916: local crops per image, besides the 2 global ones (default: the --recipe's, "
                            f"{LOCAL_CROPS} or 0)")
    group.add_argument("--global-crops-scale", dest="global_crops_scale", type=_scale("--global-crops-scale"),
                       default=None, help="mode 916: LO,HI area range of the global crops (default: the --recipe's)")
    group.add_argument("--local-crops-scale", dest="local_crops_scale", type=_scale("--local-crops-scale"),
                       default=None, help="mode 916: LO,HI area range of the local crops (default: the --recipe's)")
    group.add_argument("--teacher-temp", dest="teacher_temp", type=float, default=None,
                       help=f"mode 916: teacher temperature after its warm-up (default: the --recipe's, {TEACHER_TEMP} "
                            "or 0.07; the student's is --tau)")
    group.add_argument("--warmup-teacher-temp", dest="warmup_teacher_temp", type=float, default=None,
                       help=f"mode 916: teacher temperature at the start of its linear warm-up (default {TEACHER_TEMP})")
    group.add_argument("--warmup-teacher-temp-epochs", dest="warmup_teacher_temp_epochs", type=float, default=None,
                       help="mode 916: epochs of the teacher-temperature warm-up (default: the --recipe's, 0 or 50, "
                            "at most 30 %% of --mepoch)")
    group.add_argument("--dino-momentum", dest="dino_momentum", type=float, default=None,
                       help=f"mode 916: teacher momentum at the start, rising to 1 on a cosine (default: the --recipe's, "
                            f"{MOMENTUM} or 0.99)")
    group.add_argument("--dino-center-momentum", dest="dino_center_momentum", type=float, default=None,
                       help=f"mode 916: momentum of the teacher-output centre (default {CENTER_MOMENTUM})")
    group.add_argument("--dino-center-init", dest="dino_center_init", choices=DINOLoss.CENTER_INITS, default=None,
                       help="mode 916: the centre starts at zero (the paper's code) or at the first batch's mean "
                            "(default: the --recipe's)")
    group.add_argument("--dino-freeze-last", dest="dino_freeze_last", type=float, default=None,
                       help=f"mode 916: epochs during which the head's last layer does not learn (default {FREEZE_LAST}, "
                            "at most 10 %% of --mepoch from a recipe)")
    group.add_argument("--drop-path", dest="drop_path", type=float, default=None,
                       help=f"mode 916, ViT codes: stochastic depth of the student's blocks, rising to this rate (the "
                            f"teacher has none; default: the --recipe's, {DROP_PATH})")
    group.add_argument("--dino-bn-head", dest="dino_bn_head", action=argparse.BooleanOptionalAction, default=None,
                       help="mode 916: BatchNorm after the head's hidden layers (the official use_bn_in_head; "
                            "default: the --recipe's, on for ResNets in the small recipe)")
    add_hidden_dim(group)


def check_args(args: argparse.Namespace) -> None:
    if args.local_crops < 0:
        raise UserError(f"--local-crops {args.local_crops} must be >= 0 (the paper uses 6-10)")
    for dest in ("teacher_temp", "warmup_teacher_temp"):
        value = getattr(args, dest)
        if not 0.005 <= value <= 10:
            raise UserError(f"--{dest.replace('_', '-')} {value} is outside 0.005..10; the paper uses 0.04-0.07")
    for dest in ("warmup_teacher_temp_epochs", "dino_freeze_last"):
        value = getattr(args, dest)
        if not 0 <= value < args.mepoch:
            raise UserError(f"--{dest.replace('_', '-')} {value} must be >= 0 and below --mepoch {args.mepoch} epochs")
    check_unit(args, "dino_momentum")
    check_unit(args, "dino_center_momentum", closed_top=False)
    check_positive(args, "hidden_dim")
    if args.drop_path is not None:
        netnum = getattr(args, "netnum", None) or "000000"
        if decode_netnum(netnum).vit is None:
            raise UserError(f"--drop-path is stochastic depth of a ViT student, and --netnum {netnum} is "
                            f"{decode_netnum(netnum).backbone}: drop it or use a ViT code (1x0000)")
        if not 0 <= args.drop_path < 1:
            raise UserError(f"--drop-path {args.drop_path} must be in [0, 1); DINO trains ViTs with {DROP_PATH}")
    if (args.local_crops == 0 and "global_crops_scale" in getattr(args, "recipe_filled", ())
            and args.global_crops_scale[0] > WIDE_GLOBAL[0]):
        log.info("DINO without local crops: global crops of scale %s instead of %s (main_dino.py's advice)",
                 WIDE_GLOBAL, args.global_crops_scale)
        args.global_crops_scale = list(WIDE_GLOBAL)


class DINOHead(nn.Module):
    """MLP -> L2 normalisation -> weight-normalised linear layer with norm fixed to 1.

    The official ``DINOHead`` (nlayers 3): Linear -> (BatchNorm1d) -> GELU twice, then Linear to
    the bottleneck; Linear weights trunc-normal(0.02), biases 0.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = HIDDEN_DIM, bottleneck: int = BOTTLENECK,
                 use_bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in ((in_dim, hidden_dim), (hidden_dim, hidden_dim)):
            layers.append(nn.Linear(a, b))
            if use_bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, bottleneck))
        self.mlp = nn.Sequential(*layers)
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
                 freeze_last: float = 0.0, use_bn: bool = False, warmup_teacher_temp: float | None = None,
                 warmup_fraction: float = 0.0, center_init: str = "zero", drop_path: float = 0.0) -> None:
        """``freeze_last`` / ``warmup_fraction``: the shares of the run during which the head's last layer
        gets no gradient / the teacher temperature rises from ``warmup_teacher_temp`` to ``teacher_temp``.
        ``drop_path``: the student ViT's stochastic depth (main_dino.py builds the teacher without it)."""
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(backbone.out_dim, out_dim, hidden_dim, bottleneck, use_bn)
        self.teacher_backbone = frozen_copy(backbone)
        if drop_path > 0:
            if not is_vit(backbone):
                raise ValueError("drop_path is stochastic depth of a ViT student")
            set_drop_path(backbone, drop_path)
        self.teacher_head = frozen_copy(self.head)
        self.criterion = DINOLoss(out_dim, teacher_temp, student_temp, center_momentum, center_init)
        self.base_momentum, self.freeze_last = momentum, freeze_last
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = teacher_temp if warmup_teacher_temp is None else warmup_teacher_temp
        self.warmup_fraction = warmup_fraction
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self.head.last_layer.weight.register_hook(self._freeze_last_layer)

    @property
    def kept_backbone(self) -> nn.Module:
        """The teacher's backbone: what DINO evaluates and what is saved."""
        return self.teacher_backbone

    def _freeze_last_layer(self, grad: Tensor) -> Tensor:
        return grad * (self.progress >= self.freeze_last).to(grad.dtype)      # no host sync

    def teacher_temp_now(self) -> Tensor:
        """The teacher temperature at the current progress: linear from the warm-up value to the final one
        over the first ``warmup_fraction`` of the run, then constant (a 0-dim tensor: no host sync)."""
        final, start = self.teacher_temp, self.warmup_teacher_temp
        if self.warmup_fraction <= 0:
            return torch.full((), final, dtype=torch.float32, device=self.progress.device)
        ramp = torch.clamp(self.progress / self.warmup_fraction, max=1.0)
        return (start + (final - start) * ramp).to(torch.float32)

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
        temp = self.teacher_temp_now()
        loss = self.criterion(student, list(t_glob.chunk(2)), teacher_temp=temp)
        return loss, {"emb_std": embedding_std(z), "teacher_temp": temp.detach(),
                      "teacher_entropy": self.criterion.teacher_entropy}

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
                center_momentum=args.dino_center_momentum, freeze_last=args.dino_freeze_last / args.mepoch,
                use_bn=bool(args.dino_bn_head), warmup_teacher_temp=args.warmup_teacher_temp,
                warmup_fraction=args.warmup_teacher_temp_epochs / args.mepoch, center_init=args.dino_center_init,
                drop_path=args.drop_path or 0.0)


def make_transform(args: argparse.Namespace, opt) -> MultiCrop:
    """DINO's multi-crop; local crops smaller than the backbone takes are a user error. For a ViT the
    local side is the multiple of its patch nearest to 3/7 of the input side, and must stay below it."""
    code = decode_netnum(args.netnum) if getattr(args, "netnum", None) else None
    crops = MultiCrop(opt.input_size, opt.mean, opt.std, opt.rgb_index, args.local_crops,
                      tuple(args.global_crops_scale), tuple(args.local_crops_scale),
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
