"""Colorization, mode 98: predict every band from one (Zhang et al., ECCV 2016, as regression).

The view is the image after light augmentation (plan D: random resized crop, then
rotation/flip), per-band normalised; that is the target. The input is ONE normalised
band, ``--color-band`` (a band name such as ``B08``, or its 0-based position among the
selected bands), by default the mean of the normalised red, green and blue bands (band 0
when the band selection has no RGB triplet). It is repeated to every input channel, so
the backbone keeps the dataset's band count and its checkpoint loads into main_cls.py.
The decoder (:mod:`models.pretext.decoder`) reconstructs all bands from the last stage;
the loss is the MSE over all pixels and bands.
"""
from __future__ import annotations

import argparse

import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import UserError
from datasets.transforms import build_plan
from models.pretext.decoder import build_decoder
from models.pretext.simclr import embedding_std

LOSSES = ("MSELoss", "mse")
PLAN = "D"                      # light augmentation: crop, rotation + flip
VIS_COLUMNS = ("input band", "target", "prediction")      # --vis: the columns of vis_rows


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--color-band", dest="color_band", default=None,
                       help="mode 98: the input band, a name (e.g. B08) or its 0-based position among the selected "
                            "bands; unset: the mean of R, G, B, else band 0")


def source_bands(opt, color_band: str | int | None) -> tuple[int, ...]:
    """Positions (among ``opt.bands``) of the band(s) whose mean is the colorization input."""
    if color_band is None:
        return tuple(opt.rgb_index) if opt.rgb_index is not None else (0,)
    text = str(color_band).strip()
    if text in opt.bands:
        return (opt.bands.index(text),)
    if text.isdigit() and int(text) < opt.n_bands:
        return (int(text),)
    raise UserError(f"--color-band {color_band!r} is neither a selected band name ({', '.join(opt.bands)}) "
                    f"nor a position 0..{opt.n_bands - 1}; pick one of those")


class ColorizeView:
    """Raw ``C x H x W`` -> ``(gray, target)``: the 1-band input (1 x H x W) and all normalised bands."""

    def __init__(self, plan, source: tuple[int, ...]) -> None:
        self.plan, self.source = plan, tuple(source)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        target = self.plan(x)
        gray = target[list(self.source)].mean(dim=0, keepdim=True)
        return gray, target

    def __repr__(self) -> str:
        return f"ColorizeView({self.plan!r}, source={self.source})"


class Colorize(nn.Module):
    """One band, repeated to every input channel -> backbone -> decoder -> all bands, MSE."""

    def __init__(self, backbone: nn.Module, n_bands: int, input_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_bands = n_bands
        self.decoder = build_decoder(backbone, n_bands, n_bands, input_size)

    def predict(self, gray: Tensor) -> tuple[Tensor, Tensor]:
        """N x 1 x H x W input band -> (all bands predicted at that size, the last stage's feature map)."""
        fmap = self.backbone.feature_maps(gray.expand(-1, self.n_bands, -1, -1))[-1]
        return self.decoder(fmap, gray.shape[-2:]), fmap

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        gray, target = views
        pred, fmap = self.predict(gray)
        loss = F.mse_loss(pred.float(), target.float())
        z = self.backbone.pool(fmap)
        # 0 * z keeps pooling layers with weights (plain torchvision backbones, family 9) in the
        # graph, so DistributedDataParallel finds a gradient for every parameter
        loss = loss + 0.0 * z.sum()
        return loss, {"emb_std": embedding_std(z)}


def vis_rows(model: Colorize, views: tuple[Tensor, Tensor]) -> list[list[Tensor]]:
    """``--vis``: per sample the 1-band input, the target and the prediction (:data:`VIS_COLUMNS`)."""
    gray, target = views
    pred, _ = model.predict(gray)
    return [list(row) for row in zip(gray, target, pred.float())]


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> Colorize:
    return Colorize(backbone, opt.n_bands, opt.input_size)


def make_transform(args: argparse.Namespace, opt) -> ColorizeView:
    """Plan D at ``opt.input_size``; the input band(s) from ``--color-band`` (checked against ``opt.bands``)."""
    if opt.n_bands < 2:
        raise UserError(f"--mode 98 (colorization) predicts all bands from one, but the input has "
                        f"{opt.n_bands} band; choose a --dtype with several bands")
    plan = build_plan(PLAN, opt.input_size, opt.mean, opt.std, opt.rgb_index)
    return ColorizeView(plan, source_bands(opt, getattr(args, "color_band", None)))
