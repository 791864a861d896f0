"""Colorization, mode 98: predict every band from one (Zhang et al., ECCV 2016, as regression).

The view is the image after light augmentation (plan D: random resized crop, then
rotation/flip), per-band normalised; that is the target. The input is ONE normalised
band, ``--color-band`` (a band name such as ``B08``, or its 0-based position among the
selected bands), by default the mean of the normalised red, green and blue bands (band 0
when the band selection has no RGB triplet). The decoder (:mod:`models.pretext.decoder`)
reconstructs all bands from the last stage; the loss is the MSE over all pixels and bands.

The network has a 1-BAND STEM during pretraining: the first conv's only trainable weight
is ``stem_weight`` (C_out x 1 x k x k). The backbone handed over (saved, monitored,
fine-tuned in main_cls.py) has the dataset's band count, and its first conv is that
1-band stem placed on the SOURCE bands and divided by their number:

    W[:, s] = stem_weight / |S|   for every source band s in S,   W[:, c] = 0 elsewhere,

so on a real C-band image it computes ``stem_weight * mean_S(x)``: exactly the input it
was pretrained on (the mean of the normalised source bands). The kept backbone therefore
gives, on real images, the features of the 1-band network on its own input; its
BatchNorm statistics match, and a frozen probe evaluates what the pretext learned. Other
bands start at zero (as the RGB filters of ``--ptcp 1`` do) and are learned by fine-tuning.
Replicating the stem over all C bands with weight 1/C would instead feed the mean of all
bands, a different image with other statistics than the pretext saw.

During pretraining the input band is repeated on every channel and the first conv uses
``W`` computed from ``stem_weight`` (differentiably), which is the 1-band network:
``sum_s W[:, s] * g = stem_weight * g``. After every optimiser step the conv's saved
weight is refreshed from ``stem_weight`` (``on_step_end``).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import UserError
from datasets.plans import build_plan
from models.pretext.decoder import build_decoder
from models.pretext.simclr import embedding_std

LOSSES = ("MSELoss", "mse")
NEEDS_CONV_STAGES = True     # engine.guards.check_pretext_backbone refuses ViTs: the decoder reads the conv stages and the 1-band stem is a conv
PLAN = "D"                      # light augmentation: crop, rotation + flip
VIS_COLUMNS = ("input band", "target", "prediction")      # --vis: the columns of vis_rows
_SMALL = ("scripts/experiments/eurosat_ms_pretexts.sh, this repository's README runs of the classic pretexts: "
          "--optimizer adam --lr 1e-3 --wd 1e-6 --warmup 2, batch 64, cosine; biases/norms undecayed (engine/optim.py)")
_SOLVER = "richzhang/colorization train/solver.prototxt @4aa459f0"
RECIPES = {
    "paper": {"optimizer": "adam", "lr_base": 3e-5, "lr_rule": "none", "momentum": 0.9, "wd": 1e-3,
              "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 0},
    "small": {"optimizer": "adam", "lr_base": 1e-3, "lr_rule": "none", "momentum": 0.9, "wd": 1e-6,
              "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 2},
}
SOURCES = {
    "paper": {"optimizer": f"{_SOLVER} type Adam", "lr_base": f"{_SOLVER} base_lr 3e-5 (its step decay is not "
                                                             "reproduced: --lr_policy)",
              "lr_rule": "Zhang et al. 2016: batch 40, no scaling rule",
              "momentum": f"{_SOLVER} momentum 0.9 (its momentum2 0.99 is not reproduced: Adam's beta2 is 0.999 here)",
              "wd": f"{_SOLVER} weight_decay 0.001",
              "exclude_bias_norm": "the house rule (engine/optim.py); the per-layer decay multipliers were not checked",
              "bias_lr_scale": f"{_SOLVER}: one base_lr", "warmup": f"{_SOLVER}: no warm-up"},
    "small": {k: _SMALL for k in RECIPES["small"]},
}


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


def first_conv(backbone: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The input conv of ``backbone``: (its parent module, its attribute name, the conv)."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return backbone.get_submodule(parent_name), attr, module
    raise UserError("--mode 98 needs a backbone with a convolutional first layer")


def expand_stem(stem_weight: Tensor, source: tuple[int, ...], n_bands: int) -> Tensor:
    """The C-band first-conv weight of a 1-band stem: ``stem_weight / |S|`` on the source bands, 0 elsewhere."""
    w = stem_weight.new_zeros(stem_weight.shape[0], n_bands, *stem_weight.shape[2:])
    idx = torch.tensor(source, device=stem_weight.device)
    return w.index_copy(1, idx, (stem_weight / len(source)).expand(-1, len(source), -1, -1))


class ExpandedStemConv(nn.Conv2d):
    """The backbone's first conv in colorization pretraining: its weight is the 1-band stem expanded.

    ``weight`` (C bands, no gradient) is what the checkpoint holds; ``forward`` computes it
    from the pretext's ``stem_weight`` so that the gradient reaches the 1-band stem.
    """

    def bind(self, stem_weight: nn.Parameter, source: tuple[int, ...]) -> None:
        object.__setattr__(self, "_stem_weight", stem_weight)      # owned by the pretext, not saved here
        self.source = tuple(source)
        self.weight.requires_grad_(False)
        self.refresh()

    def expanded(self) -> Tensor:
        return expand_stem(self._stem_weight, self.source, self.in_channels)

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the expanded stem into ``weight`` (what is saved, and what main_cls.py loads)."""
        self.weight.copy_(self.expanded())

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.expanded(), self.bias)


class Colorize(nn.Module):
    """One band (1-band stem) -> backbone -> decoder -> all bands, MSE."""

    def __init__(self, backbone: nn.Module, n_bands: int, input_size: int, source: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_bands = n_bands
        parent, attr, conv = first_conv(backbone)
        # the 1-band stem, initialised so that it answers a gray image as the C-band conv did
        self.stem_weight = nn.Parameter(conv.weight.detach()[:, list(source)].sum(dim=1, keepdim=True).clone())
        stem = ExpandedStemConv(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        if conv.bias is not None:
            stem.bias = conv.bias
        stem.bind(self.stem_weight, source)
        setattr(parent, attr, stem)
        object.__setattr__(self, "_stem", stem)         # reachable, but saved once (under backbone.)
        self.decoder = build_decoder(backbone, n_bands, n_bands, input_size)

    def predict(self, gray: Tensor) -> tuple[Tensor, Tensor]:
        """N x 1 x H x W input band -> (all bands predicted at that size, the last stage's feature map)."""
        fmap = self.backbone.feature_maps(gray.expand(-1, self.n_bands, -1, -1))[-1]
        return self.decoder(fmap, gray.shape[-2:]), fmap

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        gray, target = views
        pred, fmap = self.predict(gray)
        loss = F.mse_loss(pred.float(), target.float())
        z = self.backbone.pool(fmap)
        # 0 * z keeps pooling layers with weights (plain torchvision backbones, family 9) in the
        # graph, so DistributedDataParallel finds a gradient for every parameter
        loss = loss + 0.0 * z.sum()
        return loss, {"emb_std": embedding_std(z)}

    def on_step_end(self, progress: float) -> None:
        """The saved C-band first conv follows the 1-band stem after every optimiser step."""
        self._stem.refresh()


def vis_rows(model: Colorize, views: tuple[Tensor, Tensor]) -> list[list[Tensor]]:
    """``--vis``: per sample the 1-band input, the target and the prediction (:data:`VIS_COLUMNS`)."""
    gray, target = views
    pred, _ = model.predict(gray)
    return [list(row) for row in zip(gray, target, pred.float())]


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> Colorize:
    return Colorize(backbone, opt.n_bands, opt.input_size, source_bands(opt, getattr(args, "color_band", None)))


def make_transform(args: argparse.Namespace, opt) -> ColorizeView:
    """Plan D at ``opt.input_size``; the input band(s) from ``--color-band`` (checked against ``opt.bands``)."""
    if opt.n_bands < 2:
        raise UserError(f"--mode 98 (colorization) predicts all bands from one, but the input has "
                        f"{opt.n_bands} band; choose a --dtype with several bands")
    plan = build_plan(PLAN, opt.input_size, opt.mean, opt.std, opt.rgb_index)
    return ColorizeView(plan, source_bands(opt, getattr(args, "color_band", None)))
