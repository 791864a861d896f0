r"""Multi-task triplet Siamese network, mode 920: inpainting + augmentation recognition + exemplar.

One shared backbone, three heads, fed by :class:`models.pretext.mt_views.MultiTaskView`
(``perturbed, image, copy, label``):

(a) inpainting: a decoder with skip connections from every backbone stage
    (upsample, concatenate the stage output, conv-BN-ReLU) maps the perturbed image
    back to the original. With ``x`` the image, ``\tilde x`` the perturbed image,
    ``\hat x`` the reconstruction and sums over batch, bands and pixels,

    .. math::

        L_{inp} = \frac{\sum |x - \tilde x| \, |\hat x - x|}{\sum |x - \tilde x| + 10^{-8}},

    the L1 error weighted by how much each value was perturbed, normalised by the total
    weight: a weighted mean absolute error in normalised units, so it is 0 outside the
    block and about 1 for a reconstruction that is off by one band std;
(b) augmentation recognition: the last-stage maps of the image and its transformed copy
    are concatenated, pass two conv-BN-ReLU layers, are average-pooled, and an MLP
    predicts which of the 6 transforms (h-flip, v-flip, rotation 0/90/180/270) made the
    copy; cross-entropy;
(c) exemplar: the pooled features of the image and its copy pass a projection MLP and
    NT-Xent (``--tau``, negatives from every process) treats the pair as positive and the
    rest of the batch as negatives.

``loss = w_inp * L_inp + w_rec * L_rec + w_ex * L_ex`` with ``--mt-weights`` (default
20,1,1); ``--mt-tasks`` picks any non-empty subset (the ablations). Heads of switched-off
tasks are not built and the images they alone need skip the backbone, so every parameter
of the model gets a gradient (as DistributedDataParallel requires).
"""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.codes import decode_netnum
from config.errors import UserError
from losses.ntxent import NTXentLoss
from models.backbones import stage_shapes
from models.heads import ProjectionHead
from models.pretext.mt_views import RECOG_TRANSFORMS, MultiTaskView
from models.pretext.simclr import embedding_std

if TYPE_CHECKING:
    from config.dataset_cfg import DatasetOpt

LOSSES = ("MultiTaskLoss", "multitask")
NEEDS_CONV_STAGES = True     # engine.guards.check_pretext_backbone refuses ViTs: the decoder uses skip connections from the conv stages
SYNC_BN = True           # exemplar contrast couples a batch's images: SyncBatchNorm by default on several GPUs
TAU = 0.5                # exemplar NT-Xent temperature (--tau)
FEATURE_DIM = 128        # exemplar projection size (--feature_dim)
TASKS = ("inpaint", "recog", "exemplar")
DEFAULT_WEIGHTS = (20.0, 1.0, 1.0)
_SMALL = ("scripts/experiments/eurosat_ms_pretexts.sh, this repository's README runs of the classic pretexts: "
          "--optimizer adam --lr 1e-3 --wd 1e-6 --warmup 2, batch 64, cosine; biases/norms undecayed (engine/optim.py)")
_TODAY = ("no optimiser in the SPEC's description of this system: this repository's behaviour before recipes "
          "(Adam, the dataset's lr, wd 1e-6 on every parameter, no warm-up)")
RECIPES = {
    "paper": {"optimizer": "adam", "lr_base": None, "lr_rule": "dataset", "momentum": 0.9, "wd": 1e-6,
              "exclude_bias_norm": False, "bias_lr_scale": 1.0, "warmup": 0, "tau": TAU, "feature_dim": FEATURE_DIM},
    "small": {"optimizer": "adam", "lr_base": 1e-3, "lr_rule": "none", "momentum": 0.9, "wd": 1e-6,
              "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 2, "tau": TAU, "feature_dim": FEATURE_DIM},
}
SOURCES = {
    "paper": {**{k: _TODAY for k in RECIPES["paper"]},
              "tau": "this repository's exemplar NT-Xent temperature (SimCLR's 0.5; the SPEC names none)",
              "feature_dim": "this repository's exemplar projection (SimCLR's 128; the SPEC names none)"},
    "small": {**{k: _SMALL for k in RECIPES["small"]},
              "tau": "the paper recipe's exemplar temperature (SimCLR's 0.5)",
              "feature_dim": "the paper recipe's exemplar projection (SimCLR's 128)"},
}
DECODER_MAX_WIDTH = 256     # decoder channels at a level: min(stage channels, this)
DECODER_OUT_WIDTH = 32      # channels of the last conv before the 1x1 band projection
RECOG_WIDTH = 256           # channels of the recognition head's convs and MLP
INPAINT_EPS = 1e-8
# --vis: the columns of vis_rows; without the inpaint task only the first two (a prefix, so
# the titles stay right for every --mt-tasks)
VIS_COLUMNS = ("original", "transformed copy", "perturbed", "reconstruction")


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> ReLU, size preserving."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SkipDecoder(nn.Module):
    """U-Net style decoder on the backbone's stage outputs (fine to coarse) -> ``out_bands`` x H x W.

    From the coarsest map up: bilinear upsampling to the next finer stage's size,
    concatenation with that stage's output, conv-BN-ReLU; finally upsampling to the input
    size, conv-BN-ReLU and a 1x1 conv to the bands (linear output: normalised units).
    """

    def __init__(self, channels: list[int], out_bands: int) -> None:
        super().__init__()
        self.channels = list(channels)
        width = channels[-1]
        blocks = []
        for c_skip in reversed(channels[:-1]):
            out = min(c_skip, DECODER_MAX_WIDTH)
            blocks.append(conv_bn_relu(width + c_skip, out))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(conv_bn_relu(width, DECODER_OUT_WIDTH), nn.Conv2d(DECODER_OUT_WIDTH, out_bands, 1))

    def forward(self, maps: list[Tensor], size: tuple[int, int]) -> Tensor:
        """Stage outputs (fine to coarse, as :meth:`Backbone.feature_maps`) -> N x bands x ``size``."""
        x = maps[-1]
        for block, skip in zip(self.blocks, reversed(maps[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.head(x)


class RecognitionHead(nn.Module):
    """Concatenated last-stage maps of image and copy -> 2 x conv-BN-ReLU -> pool -> MLP -> 6 logits."""

    def __init__(self, channels: int, width: int = RECOG_WIDTH, classes: int = len(RECOG_TRANSFORMS)) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(2 * channels, width), conv_bn_relu(width, width),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.mlp = nn.Sequential(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width),
                                 nn.ReLU(inplace=True), nn.Linear(width, classes))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.mlp(self.convs(torch.cat([a, b], dim=1)))


def inpainting_loss(recon: Tensor, image: Tensor, perturbed: Tensor) -> Tensor:
    """``sum(|x - x~| * |x^ - x|) / (sum |x - x~| + 1e-8)`` over the whole batch (module docstring)."""
    weight = (image - perturbed).abs().float()
    err = (recon.float() - image.float()).abs()
    return (weight * err).sum() / (weight.sum() + INPAINT_EPS)


class MultiTask(nn.Module):
    """The shared ``backbone`` with the heads of the active ``tasks``.

    Args:
        backbone: a :class:`models.backbones.Backbone` (kept as ``.backbone``).
        in_channels, input_size: band count and side of the inputs; a dummy image of that
            shape runs through ``backbone.feature_maps`` once to size the heads.
        tasks: subset of :data:`TASKS`.
        weights: ``(w_inp, w_rec, w_ex)``, the multipliers of the three losses.
        feature_dim, tau: exemplar projection size and NT-Xent temperature.
    """

    def __init__(self, backbone: nn.Module, in_channels: int, input_size: int,
                 tasks: tuple[str, ...] = TASKS, weights: tuple[float, float, float] = DEFAULT_WEIGHTS,
                 feature_dim: int = 128, tau: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.weights = dict(zip(TASKS, (float(w) for w in weights)))
        channels = stage_channels(backbone, in_channels, input_size)
        self.decoder = SkipDecoder(channels, in_channels) if "inpaint" in self.tasks else None
        self.recognizer = RecognitionHead(channels[-1]) if "recog" in self.tasks else None
        if "exemplar" in self.tasks:
            self.projector = ProjectionHead(backbone.out_dim, backbone.out_dim, feature_dim)
            self.criterion = NTXentLoss(temperature=tau)
        else:
            self.projector = self.criterion = None

    def forward(self, views: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(perturbed, image, copy, label)`` batches -> weighted loss and per-task stats."""
        perturbed, image, copy, label = views
        n = image.shape[0]
        inpaint = self.decoder is not None
        pair = self.recognizer is not None or self.projector is not None
        batch = ([perturbed] if inpaint else []) + ([image, copy] if pair else [])
        maps = self.backbone.feature_maps(torch.cat(batch, dim=0))
        losses: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        if inpaint:
            recon = self.decoder([m[:n] for m in maps], image.shape[-2:])
            losses["inpaint"] = inpainting_loss(recon, image, perturbed)
        if pair:
            last = maps[-1][n:] if inpaint else maps[-1]
            last_img, last_copy = last[:n], last[n:]
            if self.recognizer is not None:
                logits = self.recognizer(last_img, last_copy)
                losses["recog"] = F.cross_entropy(logits.float(), label)
                stats["recog_acc"] = (logits.detach().argmax(dim=1) == label).float().mean()
            if self.projector is not None:
                z = self.projector(self.backbone.pool(last))
                losses["exemplar"] = self.criterion(z[:n], z[n:])
                stats["emb_std"] = embedding_std(z)
        loss = sum(self.weights[t] * losses[t] for t in self.tasks)
        stats.update({f"loss_{t}": v.detach() for t, v in losses.items()})
        return loss, stats


def vis_rows(model: MultiTask, views: tuple[Tensor, Tensor, Tensor, Tensor]) -> list[list[Tensor]]:
    """``--vis``: per sample the image and its transformed copy, then, with the inpaint task,
    the perturbed image and its reconstruction (:data:`VIS_COLUMNS`)."""
    perturbed, image, copy, _ = views
    cols = [image, copy]
    if model.decoder is not None:
        cols += [perturbed, model.decoder(model.backbone.feature_maps(perturbed), image.shape[-2:]).float()]
    return [list(row) for row in zip(*cols)]


def stage_channels(backbone: nn.Module, in_channels: int, input_size: int) -> list[int]:
    """Channel count of each ``backbone.feature_maps`` output, from one blank image in eval mode.

    BatchNorm statistics are left untouched; a backbone that cannot take ``input_size``
    pixels (e.g. VGG below 32) is a user error naming the size.
    """
    return [int(shape[1]) for shape in stage_shapes(backbone, in_channels, input_size)]


def parse_tasks(text: str) -> tuple[str, ...]:
    """``"inpaint,recog"`` -> ``("inpaint", "recog")``; unknown or no names are user errors."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        raise UserError(f"--mt-tasks {text!r} must list one or more of {','.join(TASKS)} separated by commas "
                        f"(e.g. --mt-tasks inpaint,recog)")
    return tuple(t for t in TASKS if t in names)


def parse_weights(text: str, tasks: tuple[str, ...] = TASKS) -> tuple[float, float, float]:
    """``"20,1,1"`` -> ``(20.0, 1.0, 1.0)``: three finite weights >= 0, > 0 for every active task."""
    try:
        weights = tuple(float(w) for w in str(text).split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or not all(0 <= w < float("inf") for w in weights):
        raise UserError(f"--mt-weights {text!r} must be three non-negative numbers for {','.join(TASKS)} "
                        f"(e.g. --mt-weights 20,1,1)")
    for task, w in zip(TASKS, weights):
        if task in tasks and w == 0:
            raise UserError(f"--mt-weights {text!r} gives the active task {task} weight 0; "
                            f"give it a positive weight or leave it out of --mt-tasks")
    return weights  # type: ignore[return-value]


def add_args(group: argparse._ArgumentGroup) -> None:
    """``--mt-tasks`` and ``--mt-weights``."""
    group.add_argument("--mt-tasks", dest="mt_tasks", default=",".join(TASKS),
                       help="mode 920: the tasks to train, any of inpaint,recog,exemplar (the ablations)")
    group.add_argument("--mt-weights", dest="mt_weights", default=",".join(f"{w:g}" for w in DEFAULT_WEIGHTS),
                       help="mode 920: loss weights of inpaint,recog,exemplar, in that order")


def check_args(args: argparse.Namespace) -> None:
    """Reject bad ``--mt-tasks``/``--mt-weights`` before any worker starts.

    A plain torchvision backbone (netnum family 9) pools through fully connected layers
    that only the exemplar task uses; without it they get no gradient, which
    DistributedDataParallel rejects, so that combination is refused for distributed runs.
    """
    tasks = parse_tasks(args.mt_tasks)
    parse_weights(args.mt_weights, tasks)
    distributed = getattr(args, "mp_distributed", False) or "WORLD_SIZE" in os.environ
    if ("exemplar" not in tasks and distributed and hasattr(args, "netnum")
            and decode_netnum(args.netnum).family == "torchvision"):
        raise UserError(f"--netnum {args.netnum} pools through layers only the exemplar task trains, so a distributed "
                        f"run with --mt-tasks {args.mt_tasks} would stop; add exemplar to --mt-tasks or use "
                        f"--netnum 0{args.netnum[1]}0000")


def build(args: argparse.Namespace, opt: DatasetOpt, backbone: nn.Module) -> MultiTask:
    """The model for ``--mt-tasks``/``--mt-weights``; exemplar size and temperature from ``--feature_dim``/``--tau``."""
    tasks = parse_tasks(args.mt_tasks)
    return MultiTask(backbone, opt.n_bands, opt.input_size, tasks, parse_weights(args.mt_weights, tasks),
                     feature_dim=args.feature_dim, tau=args.tau)


def make_transform(args: argparse.Namespace, opt: DatasetOpt) -> MultiTaskView:
    """The triplet view for the dataset's input size, band statistics and RGB bands."""
    return MultiTaskView(opt.input_size, opt.mean, opt.std, opt.rgb_index)
