"""Inpainting, mode 96: a context encoder (Pathak et al., CVPR 2016).

The view is the image after light augmentation (plan D: random resized crop, then
rotation/flip), per-band normalised; its centre square, ``--inpaint-mask`` of the side
(half by default), is set to 0, the band mean after normalisation. The backbone encodes
the masked image; :class:`~models.pretext.decoder.ReconstructionDecoder` turns the last
stage's feature map back into all bands at input size. The loss is the masked MSE

    L = (1 - w) * mean_{masked pixels, bands} (x_hat - x)^2 + w * mean_{context pixels, bands} (x_hat - x)^2

with ``w = --inpaint-context-weight`` (0.01 by default, so 0.99 on the hole). The hole
term is the task; the small context term keeps the output anchored to the visible
pixels. Each term is a mean over its own region, so the weights do not depend on the
size of the hole. (The paper's adversarial term is left out: this is its L2-only variant.)
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from config.errors import UserError
from datasets.plans import build_plan
from models.pretext.decoder import build_decoder
from models.pretext.simclr import embedding_std

LOSSES = ("MaskedMSELoss", "masked_mse")
NEEDS_CONV_STAGES = True     # engine.guards.check_pretext_backbone refuses ViTs: the decoder reads the last conv stage's feature map
PLAN = "D"                      # light augmentation: crop, rotation + flip
DEFAULT_MASK = 0.5              # side of the masked square / side of the image
DEFAULT_CONTEXT_WEIGHT = 0.01
_SMALL = ("scripts/experiments/eurosat_ms_pretexts.sh, this repository's README runs of the classic pretexts: "
          "--optimizer adam --lr 1e-3 --wd 1e-6 --warmup 2, batch 64, cosine; biases/norms undecayed (engine/optim.py)")
_CE = "pathak22/context-encoder train.lua @defa69a9"
RECIPES = {
    "paper": {"optimizer": "adam", "lr_base": 2e-3, "lr_rule": "none", "momentum": 0.5, "wd": 0.0,
              "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 0},
    "small": {"optimizer": "adam", "lr_base": 1e-3, "lr_rule": "none", "momentum": 0.9, "wd": 1e-6,
              "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 2},
}
SOURCES = {
    "paper": {"optimizer": f"{_CE}: optim.adam", "lr_base": f"{_CE}: the encoder-decoder's lr = 10 x lr 0.0002 when "
                                                            "0 < wtl2 < 1 (wtl2 0.999 in the paper's runs), batch 64",
              "lr_rule": f"{_CE}: no scaling rule", "momentum": f"{_CE}: beta1 = 0.5 (Adam's beta1 is --momentum)",
              "wd": f"{_CE}: no weight decay", "exclude_bias_norm": "no decay anyway (wd 0)",
              "bias_lr_scale": f"{_CE}: one lr", "warmup": f"{_CE}: constant lr, no warm-up"},
    "small": {k: _SMALL for k in RECIPES["small"]},
}
VIS_COLUMNS = ("original", "masked input", "reconstruction")      # --vis: the columns of vis_rows


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--inpaint-mask", dest="inpaint_mask", type=float, default=DEFAULT_MASK,
                       help="mode 96: side of the masked centre square as a fraction of the image side")
    group.add_argument("--inpaint-context-weight", dest="inpaint_context_weight", type=float,
                       default=DEFAULT_CONTEXT_WEIGHT,
                       help="mode 96: weight of the context MSE (the masked square gets 1 minus it)")


def check_args(args: argparse.Namespace) -> None:
    frac = getattr(args, "inpaint_mask", DEFAULT_MASK)
    if not 0 < frac < 1:
        raise UserError(f"--inpaint-mask {frac} must be a fraction of the side strictly between 0 and 1, e.g. 0.5")
    w = getattr(args, "inpaint_context_weight", DEFAULT_CONTEXT_WEIGHT)
    if not 0 <= w < 1:
        raise UserError(f"--inpaint-context-weight {w} must be in [0, 1); the paper's value is 0.01")


def centre_box(size: int, fraction: float) -> tuple[int, int]:
    """Start and end (exclusive) of the centred square of side ``round(size * fraction)`` (at least 1)."""
    side = min(size, max(1, round(size * fraction)))
    start = (size - side) // 2
    return start, start + side


def centre_mask(size: int, fraction: float) -> Tensor:
    """``size x size`` bool mask, True on the centred square of :func:`centre_box`."""
    a, b = centre_box(size, fraction)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[a:b, a:b] = True
    return mask


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, context_weight: float = DEFAULT_CONTEXT_WEIGHT
               ) -> tuple[Tensor, Tensor, Tensor]:
    """The loss of the module docstring and its two terms.

    Args:
        pred, target: N x C x H x W.
        mask: H x W bool, True on the hole.
        context_weight: ``w``; the hole gets ``1 - w``.

    Returns:
        ``(loss, mse_hole, mse_context)``.
    """
    err = (pred.float() - target.float()).pow(2).mean(dim=1)          # N x H x W, mean over bands
    # weighted sums instead of boolean indexing: no host synchronisation on a GPU
    m = mask.to(device=err.device, dtype=err.dtype)
    n = err.shape[0]
    hole_px = m.sum()
    hole = (err * m).sum() / (n * hole_px)
    context = (err * (1 - m)).sum() / (n * (m.numel() - hole_px)).clamp(min=1)   # 0 when all is hole
    return (1 - context_weight) * hole + context_weight * context, hole, context


class InpaintView:
    """Raw ``C x H x W`` -> ``(masked, target)``: the augmented, normalised image with and without its centre hole."""

    def __init__(self, plan, fraction: float) -> None:
        self.plan, self.fraction = plan, fraction

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        target = self.plan(x)
        a, b = centre_box(target.shape[-1], self.fraction)
        masked = target.clone()
        masked[:, a:b, a:b] = 0.0
        return masked, target

    def __repr__(self) -> str:
        return f"InpaintView({self.plan!r}, fraction={self.fraction})"


class Inpaint(nn.Module):
    """Context encoder: backbone -> last stage map -> decoder -> all bands, masked MSE."""

    def __init__(self, backbone: nn.Module, n_bands: int, input_size: int,
                 fraction: float = DEFAULT_MASK, context_weight: float = DEFAULT_CONTEXT_WEIGHT) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = build_decoder(backbone, n_bands, n_bands, input_size)
        self.fraction, self.context_weight = fraction, context_weight

    def reconstruct(self, masked: Tensor) -> tuple[Tensor, Tensor]:
        """Masked images -> (reconstruction of all bands at their size, the last stage's feature map)."""
        fmap = self.backbone.feature_maps(masked)[-1]
        return self.decoder(fmap, masked.shape[-2:]), fmap

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        masked, target = views
        pred, fmap = self.reconstruct(masked)
        loss, hole, context = masked_mse(pred, target, centre_mask(target.shape[-1], self.fraction),
                                         self.context_weight)
        z = self.backbone.pool(fmap)
        # 0 * z keeps pooling layers with weights (plain torchvision backbones, family 9) in the
        # graph, so DistributedDataParallel finds a gradient for every parameter
        loss = loss + 0.0 * z.sum()
        return loss, {"mse_hole": hole.detach(), "mse_context": context.detach(), "emb_std": embedding_std(z)}


def vis_rows(model: Inpaint, views: tuple[Tensor, Tensor]) -> list[list[Tensor]]:
    """``--vis``: per sample the original, the masked input and the reconstruction (:data:`VIS_COLUMNS`)."""
    masked, target = views
    pred, _ = model.reconstruct(masked)
    return [list(row) for row in zip(target, masked, pred.float())]


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> Inpaint:
    return Inpaint(backbone, opt.n_bands, opt.input_size,
                   getattr(args, "inpaint_mask", DEFAULT_MASK),
                   getattr(args, "inpaint_context_weight", DEFAULT_CONTEXT_WEIGHT))


def make_transform(args: argparse.Namespace, opt) -> InpaintView:
    """Plan D (crop, rotation + flip) at ``opt.input_size``, then the centre hole."""
    plan = build_plan(PLAN, opt.input_size, opt.mean, opt.std, opt.rgb_index)
    return InpaintView(plan, getattr(args, "inpaint_mask", DEFAULT_MASK))
