"""Backbones: torchvision networks cut into a stem and stages, first conv rebuilt for any band count.

:func:`build_backbone` turns a ``--netnum`` code into a :class:`Backbone`, a feature
extractor that maps N x C x H x W images to N x D pooled features. Its stage outputs
(:meth:`Backbone.feature_maps`) are what decoders with skip connections (inpainting,
the multi-task pretext) plug into.

Family 0 (scene network): global average pooling on the last stage, first conv rebuilt
for ``in_channels`` bands. Family 9 (plain torchvision model): the torchvision
classifier up to its last layer (e.g. VGG's 4096-d fully connected layers), RGB only.
Family 1 (Vision Transformers) is built by :mod:`models.vit` with the same interface
(``out_dim``, ``arch``, ``input_adapter``, ``forward`` -> pooled features) but no conv stages.

ImageNet weights (``--ptcp 1``) are the torchvision ``IMAGENET1K_V1`` weights, the
classic ones most remote-sensing papers compare against, read from the torch hub cache or,
with ``--weights FILE``, from a torchvision state dict given by path. For a band count
other than 3, the RGB filters of the first conv go to the input positions of the R, G, B
bands and every other band's filters are zero, so the pretrained network initially sees
exactly the RGB image and learns to use the other bands during training. Their input
preprocessing (ImageNet statistics) is the backbone's ``input_adapter``
(:mod:`models.pretrained`), set by whoever knows the dataset's units.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from config.baselines import IMAGENET_MEAN, IMAGENET_STD
from config.codes import BACKBONES, NetCode, decode_netnum
from config.errors import UserError
from models.foreign import netnum_for, read_state_dict_file
from models.pretrained import torchvision_arch
from models.pretrained_vit import load_imagenet_vit
from models.vit import build_vit

log = logging.getLogger(__name__)

IMAGENET_WEIGHTS = "IMAGENET1K_V1"

# Small-stem variants -> the torchvision architecture they are built from (3x3 stride-1
# first conv; ResNets also drop the stem max-pool).
SMALL_STEMS: dict[str, str] = {
    "resnet18_small": "resnet18",
    "resnet34_small": "resnet34",
    "alexnet_small": "alexnet",
}

# GoogLeNet's ImageNet weights were ported from TensorFlow and expect inputs scaled to
# [-1, 1]; torchvision converts ImageNet-standardised input with IMAGENET_MEAN/STD (its
# transform_input).


class ChannelAffine(nn.Module):
    """Per-band ``x * scale + shift``: GoogLeNet's ``transform_input`` for any band count."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class Backbone(nn.Module):
    """Feature extractor: ``stem`` -> ``stages`` -> ``pool``.

    Attributes:
        stem: layers before the first stage (``nn.Identity`` where the first stage starts
            at the input, e.g. VGG; GoogLeNet's input scaling).
        stages: the stages whose outputs :meth:`feature_maps` returns (ResNet layer1..4,
            VGG/AlexNet blocks ending in a max-pool, GoogLeNet between its max-pools).
        channels: channel count of each stage output.
        pool: last stage output -> N x ``out_dim`` features (global average pool, or the
            torchvision classifier minus its last layer for family 9).
        out_dim: ``D``, the feature size a head takes.
        arch: backbone name, e.g. ``resnet50``.
        input_adapter: None, or a per-band module applied first that turns the pipeline's
            standardised input into a pretrained baseline's own preprocessing
            (:class:`models.pretrained.InputAdapter`); its buffers are saved with the weights.
    """

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], channels: Sequence[int],
                 pool: nn.Module, out_dim: int, arch: str) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.pool = pool
        self.out_dim = out_dim
        self.arch = arch
        self.register_module("input_adapter", None)

    def set_input_adapter(self, adapter: nn.Module | None) -> None:
        """Put ``adapter`` in front of the stem (None removes it)."""
        self.input_adapter = adapter

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Outputs of every stage, from fine to coarse (for skip connections)."""
        if self.input_adapter is not None:
            x = self.input_adapter(x)
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """N x C x H x W images -> N x ``out_dim`` pooled features."""
        return self.pool(self.feature_maps(x)[-1])


def _global_pool() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def _new_conv(old: nn.Conv2d, in_channels: int, kernel_size: int | None = None,
              stride: int | None = None, padding: int | None = None) -> nn.Conv2d:
    """A freshly initialised conv like ``old`` with another input count (and optionally geometry)."""
    conv = nn.Conv2d(
        in_channels, old.out_channels,
        kernel_size=kernel_size or old.kernel_size, stride=stride or old.stride,
        padding=old.padding if padding is None else padding, bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _place_rgb(old: nn.Conv2d, in_channels: int, rgb_index: tuple[int, int, int]) -> nn.Conv2d:
    """Copy of ImageNet conv ``old`` for ``in_channels`` bands: RGB filters on ``rgb_index``, zeros elsewhere."""
    conv = _new_conv(old, in_channels)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, list(rgb_index)] = old.weight
        if conv.bias is not None:
            conv.bias.copy_(old.bias)
    return conv


def _check_rgb_index(rgb_index: Sequence[int] | None, in_channels: int) -> tuple[int, int, int]:
    """The R, G, B input positions for ImageNet weights, validated."""
    if rgb_index is None:
        if in_channels == 3:
            return (0, 1, 2)
        raise UserError(
            f"--ptcp 1 with {in_channels} input bands needs the positions of the R, G, B bands, and this "
            f"band selection has none; pick a --dtype that includes RGB, name them with --rgb_bands, or use --ptcp 0"
        )
    idx = tuple(int(i) for i in rgb_index)
    if len(idx) != 3 or len(set(idx)) != 3 or not all(0 <= i < in_channels for i in idx):
        raise UserError(
            f"RGB band positions {tuple(rgb_index)} are not 3 distinct indices below the band count "
            f"{in_channels}; fix --rgb_bands"
        )
    return idx  # type: ignore[return-value]


def imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights for ``arch``, from ``$TORCH_HOME/hub/checkpoints`` or the web."""
    weights = tvm.get_model_weights(arch)[IMAGENET_WEIGHTS]
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # no network, no cached file, or a damaged one: all need the same fix
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise UserError(
            f"--ptcp 1: ImageNet weights for {arch} could not be loaded ({err}); download {weights.url} "
            f"and place it at {target} ($TORCH_HOME/hub/checkpoints), or use --ptcp 0"
        ) from err


def _torchvision_model(arch: str, ptcp: bool, weights: str | Path | None = None) -> nn.Module:
    """The torchvision classifier ``arch`` (RGB, 1000 classes), with ImageNet weights if ``ptcp``.

    ``weights``: a torchvision state dict file to read them from instead of the hub cache.
    """
    kwargs = {"aux_logits": False, "init_weights": not ptcp} if arch == "googlenet" else {}
    model = getattr(tvm, arch)(weights=None, **kwargs)
    if ptcp:
        if weights is not None:
            state = read_state_dict_file(weights, "--weights file")
        else:
            state = imagenet_state_dict(arch)
        if arch == "googlenet":
            state = {k: v for k, v in state.items() if not k.startswith("aux")}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            if weights is not None:            # name what the file holds and the --netnum it fits, no key lists
                held = torchvision_arch(state)
                target = model.state_dict()
                missing = [k for k in target if k not in state or tuple(state[k].shape) != tuple(target[k].shape)]
                raise UserError(f"--weights {weights} holds " + (
                    f"torchvision's {held} weights, not {arch}'s; use {netnum_for(held)}, or the {arch} file"
                    if held and held != arch else
                    f"no {arch} weights ({len(missing)} of its {len(target)} tensors missing or of another shape, "
                    f"e.g. {(missing or list(state))[0]}); give torchvision's ImageNet file of {arch}")) from None
            raise UserError(
                f"--ptcp 1: the cached ImageNet weights file for {arch} does not match the network ({err}); "
                f"delete it from $TORCH_HOME/hub/checkpoints and place the torchvision file there"
            ) from err
    return model


def _split_at_maxpool(layers: nn.Sequential) -> list[nn.Sequential]:
    """VGG/AlexNet ``features`` cut into blocks that each end with a max-pool."""
    blocks, current = [], []
    for layer in layers:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    if current:
        blocks.append(nn.Sequential(*current))
    return blocks


def _last_conv_channels(module: nn.Module) -> int:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _split_resnet(model: tvm.ResNet, small: bool) -> tuple[nn.Module, list[nn.Module], list[int], nn.Module, int]:
    stem_layers = [model.conv1, model.bn1, model.relu] + ([] if small else [model.maxpool])
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    channels = [_last_conv_channels(s[-1]) for s in stages]
    return nn.Sequential(*stem_layers), stages, channels, nn.Sequential(model.avgpool, nn.Flatten(1)), model.fc.in_features


def _split_features(model: nn.Module) -> tuple[nn.Module, list[nn.Module], list[int], nn.Module, int]:
    """VGG and AlexNet: ``features`` blocks, then avgpool + classifier minus its last layer."""
    stages = _split_at_maxpool(model.features)
    channels = [_last_conv_channels(s) for s in stages]
    tv_pool = nn.Sequential(model.avgpool, nn.Flatten(1), *list(model.classifier)[:-1])
    return nn.Identity(), stages, channels, tv_pool, model.classifier[-1].in_features


def _split_googlenet(model: tvm.GoogLeNet) -> tuple[nn.Module, list[nn.Module], list[int], nn.Module, int]:
    stages = [
        nn.Sequential(model.conv1, model.maxpool1),
        nn.Sequential(model.conv2, model.conv3, model.maxpool2),
        nn.Sequential(model.inception3a, model.inception3b),
        nn.Sequential(model.maxpool3, model.inception4a, model.inception4b, model.inception4c,
                      model.inception4d, model.inception4e),
        nn.Sequential(model.maxpool4, model.inception5a, model.inception5b),
    ]
    channels = [64, 192, 480, 832, 1024]
    tv_pool = nn.Sequential(model.avgpool, nn.Flatten(1), model.dropout)
    return nn.Identity(), stages, channels, tv_pool, model.fc.in_features


def _first_conv(model: nn.Module, arch: str) -> nn.Conv2d:
    if arch.startswith("resnet"):
        return model.conv1
    if arch == "googlenet":
        return model.conv1.conv
    return model.features[0]


def _set_first_conv(model: nn.Module, arch: str, conv: nn.Conv2d) -> None:
    if arch.startswith("resnet"):
        model.conv1 = conv
    elif arch == "googlenet":
        model.conv1.conv = conv
    else:
        model.features[0] = conv


def _googlenet_input_transform(in_channels: int, rgb_index: tuple[int, int, int] | None) -> ChannelAffine:
    """transform_input on the RGB bands for ImageNet weights, identity otherwise.

    Always present, so GoogLeNet checkpoints have the same keys with and without ``--ptcp``.
    """
    scale, shift = torch.ones(in_channels), torch.zeros(in_channels)
    for i, band in enumerate(rgb_index or ()):
        scale[band] = IMAGENET_STD[i] / 0.5
        shift[band] = (IMAGENET_MEAN[i] - 0.5) / 0.5
    return ChannelAffine(scale, shift)


def build_backbone(netnum: str, in_channels: int, ptcp: bool = False,
                   rgb_index: tuple[int, int, int] | None = None,
                   weights: str | Path | None = None, *, input_size: int | None = None,
                   drop_path: float = 0.0, band_groups: Sequence[Sequence[str]] | None = None,
                   bands: Sequence[str] | None = None) -> tuple[nn.Module, int]:
    """Build the backbone that ``--netnum`` names, for ``in_channels`` input bands.

    Args:
        netnum: 6-digit code (``config.codes``), e.g. ``020000`` = scene network on ResNet-50.
        in_channels: number of input bands; the first conv is rebuilt for it.
        ptcp: start from torchvision's ImageNet weights (``--ptcp 1``); small-stem variants
            keep them everywhere except their rebuilt stem.
        rgb_index: input positions of the R, G, B bands (e.g. ``(3, 2, 1)`` for EuroSAT's 13
            bands), where the ImageNet RGB filters are placed; default ``(0, 1, 2)`` for 3 bands.
        weights: with ``ptcp``, a torchvision ImageNet state dict file to read instead of
            the torch hub cache (``--weights FILE``); for a ViT, a timm ImageNet file.
        input_size: ViTs only: the input side (their position-embedding grid; default 224).
        drop_path: ViTs only: timm's stochastic-depth rate.
        band_groups, bands: ViTs only: the band groups (names) of a grouped-channel encoder
            (mode 931 checkpoints) and the data's band names they are matched with.

    Returns:
        The :class:`Backbone` (a :class:`models.vit.ViTBackbone` for family 1) and its feature size ``D``.
    """
    code = decode_netnum(netnum)
    if in_channels < 1:
        raise UserError(f"the input has {in_channels} bands; a backbone needs at least 1 (check --dtype)")
    if code.vit is not None:
        return _build_vit(code, in_channels, ptcp, rgb_index, weights, input_size, drop_path, band_groups, bands)
    if band_groups is not None:
        raise UserError(f"the checkpoint holds a grouped-channel ViT encoder (mode 931) but --netnum {code.code} is "
                        f"{code.backbone}; pass the ViT --netnum it was pretrained with")
    if code.family == "torchvision" and in_channels != 3:
        digit = next(k for k, v in BACKBONES.items() if v == code.backbone)
        raise UserError(
            f"--netnum {code.code} is a plain torchvision model (RGB only) but the input has {in_channels} bands; "
            f"use --netnum 0{digit}0000 (scene network, any band count) or an RGB --dtype"
        )
    arch = SMALL_STEMS.get(code.backbone, code.backbone)
    small = code.backbone in SMALL_STEMS
    idx = _check_rgb_index(rgb_index, in_channels) if ptcp and not small else None
    if weights is not None and not ptcp:
        raise ValueError("weights= is the file of the ImageNet weights: it needs ptcp=True")
    model = _torchvision_model(arch, ptcp, weights)
    old = _first_conv(model, arch)
    if small:
        _set_first_conv(model, arch, _new_conv(old, in_channels, kernel_size=3, stride=1, padding=1))
        if arch.startswith("resnet"):
            model.bn1.reset_parameters()
    elif idx is not None:
        if idx != (0, 1, 2) or in_channels != 3:
            _set_first_conv(model, arch, _place_rgb(old, in_channels, idx))
    elif in_channels != 3:
        _set_first_conv(model, arch, _new_conv(old, in_channels))

    if arch.startswith("resnet"):
        stem, stages, channels, tv_pool, tv_dim = _split_resnet(model, small)
    elif arch == "googlenet":
        stem, stages, channels, tv_pool, tv_dim = _split_googlenet(model)
        stem = _googlenet_input_transform(in_channels, idx)
    else:
        stem, stages, channels, tv_pool, tv_dim = _split_features(model)

    if code.family == "torchvision":
        pool, out_dim = tv_pool, tv_dim
    else:
        pool, out_dim = _global_pool(), channels[-1]
    log.debug("backbone %s (%s): %d bands, %d-d features, ImageNet weights: %s",
              code.code, code.backbone, in_channels, out_dim, ptcp)
    return Backbone(stem, stages, channels, pool, out_dim, code.backbone), out_dim


def _build_vit(code: NetCode, in_channels: int, ptcp: bool, rgb_index: tuple[int, int, int] | None,
               weights: str | Path | None, input_size: int | None, drop_path: float,
               band_groups: Sequence[Sequence[str]] | None, bands: Sequence[str] | None) -> tuple[nn.Module, int]:
    """Family 1: a timm ViT (:mod:`models.vit`); with ``ptcp``, timm's ImageNet ViT file on the RGB bands."""
    spec = code.vit
    assert spec is not None
    if weights is not None and not ptcp:
        raise ValueError("weights= is the file of the ImageNet weights: it needs ptcp=True")
    if ptcp and band_groups is not None:
        raise UserError("ImageNet weights have one RGB patch embedding, not one per band group; drop --ptcp")
    idx = _check_rgb_index(rgb_index, in_channels) if ptcp else None
    backbone = build_vit(spec, in_channels, input_size, drop_path, band_groups, bands)
    if idx is not None:
        load_imagenet_vit(backbone, weights, idx)
    log.debug("backbone %s (%s): %d bands, %d px, %d-d features, ImageNet weights: %s", code.code, spec.name,
              in_channels, backbone.input_size, spec.embed_dim, ptcp)
    return backbone, spec.embed_dim


def stage_shapes(backbone: "Backbone", in_channels: int, size: int) -> list[torch.Size]:
    """Shapes of ``backbone.feature_maps`` for one blank ``size x size`` image.

    Run in eval mode so BatchNorm statistics are untouched; pretext heads size their
    decoders from it. A backbone that cannot take ``size`` pixels (e.g. VGG below 32) is
    a user error naming the size.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, in_channels, size, size, device=next(backbone.parameters()).device)
            return [m.shape for m in backbone.feature_maps(x)]
    except RuntimeError as err:
        raise UserError(f"the backbone ({getattr(backbone, 'arch', type(backbone).__name__)}) cannot take "
                        f"{size}x{size} inputs ({str(err).splitlines()[0]}); use a larger --input_size "
                        f"or a backbone with a small stem") from None
    finally:
        backbone.train(was_training)
