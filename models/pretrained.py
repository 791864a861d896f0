"""Pretrained baselines from local files: ImageNet and SSL4EO-S12 / TorchGeo Sentinel-2 ResNets and ViTs.

A baseline is judged fairly only with the input it was trained on. Our data pipeline
standardises every band with the DATASET's mean/std; a pretrained network expects its own
preprocessing instead (ImageNet statistics on 0..255 RGB; SSL4EO-S12: ``DN / 10000``), and
its own band order. Two pieces make that so:

- :class:`InputAdapter`, the first module of the backbone: it turns the pipeline's
  standardised input back into the baseline's preprocessing, per band,
  ``y = clamp(x * scale + shift, low, high)``. Both preprocessings are affine in the raw
  values (plus a clip), so this is exact; living in the backbone, it applies to every path
  (fine-tuning, linear probe, logistic regression, kNN, TTA) and is saved with classifiers.
- :func:`load_foreign`: a state dict in the torchvision/timm ResNet layout (TorchGeo's files,
  SSL4EO-S12's MoCo and DINO checkpoints) mapped onto our backbone: ``conv1``/``bn1``/
  ``layerN`` to ``stem.0``/``stem.1``/``stages.N-1``, the projection head or classifier
  (``fc.*``) dropped, and the first conv's input filters moved BY BAND NAME from their band
  order (:data:`config.baselines.SSL4EO_S2_L1C_BANDS`, B8A after B08) to ours (EuroSAT files:
  B8A last). A band we read that they lack gets zero filters; a band they have that we do not
  read (B10 with ``--dtype ALL``) is dropped, and both are logged.
- ViTs (Sentinel-2 encoders in timm's and the methods' layouts, timm's ImageNet releases):
  :mod:`models.pretrained_vit`, through the same :func:`recognise` / :func:`load_foreign`; what both
  kinds share (the file, the band mapping of the first layer): :mod:`models.foreign`.

Constants and their sources: :mod:`config.baselines`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from config import baselines as B
from config.errors import UserError
from models.bands import s2_name
from models.foreign import Foreign, mapped_first_layer, netnum_for, unwrap
from models.pretrained_vit import load_foreign_vit, recognise_vit
from models.vit import ViTBackbone

log = logging.getLogger(__name__)

# Prefixes of the encoder inside foreign training checkpoints, tried in order, with the SSL
# method they reveal: MoCo keeps the query encoder (its fc is the projection MLP); DINO is
# evaluated with the teacher's backbone (its head is the DINO head).
_ENCODER_PREFIXES: tuple[tuple[str, str], ...] = (
    ("module.base_encoder.", "moco"), ("base_encoder.", "moco"),        # MoCo v3 (ViTs)
    ("module.encoder_q.", "moco"), ("encoder_q.", "moco"),
    ("module.backbone.", ""), ("backbone.", ""), ("module.", ""),
)
_RESNET_DEPTHS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
                  ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
                  ("bottleneck", (3, 8, 36, 3)): "resnet152"}


class InputAdapter(nn.Module):
    """Per band ``clamp(x * scale + shift, low, high)``: the pipeline's input -> a baseline's input.

    ``low``/``high`` are ``-inf``/``inf`` where nothing is clipped. The buffers are saved
    with the backbone, so a classifier keeps the preprocessing it was trained with.
    """

    def __init__(self, scale: Tensor, shift: Tensor, low: Tensor, high: Tensor) -> None:
        super().__init__()
        n = scale.numel()
        if not all(t.numel() == n for t in (shift, low, high)):
            raise ValueError("scale, shift, low and high need one value per band")
        for name, t in (("scale", scale), ("shift", shift), ("low", low), ("high", high)):
            self.register_buffer(name, t.detach().to(torch.float32).reshape(1, n, 1, 1).clone())

    @classmethod
    def identity(cls, bands: int) -> "InputAdapter":
        """The adapter that changes nothing (a placeholder a saved state is loaded into)."""
        inf = torch.full((bands,), float("inf"))
        return cls(torch.ones(bands), torch.zeros(bands), -inf, inf)

    @property
    def bands(self) -> int:
        return self.scale.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x * self.scale + self.shift, self.low, self.high)

    def extra_repr(self) -> str:
        return f"bands={self.bands}"


@dataclass(frozen=True)
class RawAffine:
    """A baseline's preprocessing of one band in raw units: ``clamp(a * raw + b, low, high)``."""

    a: float = 1.0
    b: float = 0.0
    low: float = float("-inf")
    high: float = float("inf")


def adapter_for(targets: Sequence[RawAffine | None], mean: Sequence[float], std: Sequence[float]) -> InputAdapter:
    """The :class:`InputAdapter` whose output is ``targets`` applied to the raw values.

    The pipeline feeds ``x = (raw - mean) / std`` (``std`` as the pipeline uses it, floor
    included), so ``raw = x * std + mean`` and ``a * raw + b = x * (a * std) + (a * mean + b)``.
    A band whose target is None keeps the pipeline's standardisation.
    """
    if not (len(targets) == len(mean) == len(std)):
        raise ValueError(f"{len(targets)} targets for {len(mean)} means and {len(std)} stds")
    scale, shift, low, high = [], [], [], []
    for t, m, s in zip(targets, mean, std):
        t = t or RawAffine(a=1.0 / float(s), b=-float(m) / float(s))
        scale.append(t.a * float(s))
        shift.append(t.a * float(m) + t.b)
        low.append(t.low)
        high.append(t.high)
    f = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return InputAdapter(f(scale), f(shift), f(low), f(high))


# ----------------------------------------------------------------------------- ImageNet
def imagenet_targets(bands: Sequence[str], rgb_index: Sequence[int], mean: Sequence[float],
                     stats: tuple[Sequence[float], Sequence[float]] | None = None) -> list[RawAffine | None]:
    """ImageNet preprocessing on the R, G, B bands (others: None, they start with zero filters).

    Sentinel-2 bands (names B04 B03 B02) are first mapped from digital numbers to 0..255 with
    the EuroSAT RGB release's stretch; other RGB data must already be 0..255 (8-bit).
    ``stats``: the weights' own (mean, std) on 0..1 RGB (a timm ViT release's, e.g. 0.5/0.5);
    default torchvision's ImageNet statistics.
    """
    m_rgb, s_rgb = stats if stats is not None else (B.IMAGENET_MEAN, B.IMAGENET_STD)
    targets: list[RawAffine | None] = [None] * len(bands)
    s2 = all(s2_name(bands[i]) for i in rgb_index)
    if not s2 and max(float(mean[i]) for i in rgb_index) > 255:
        raise UserError(
            f"ImageNet weights expect 0..255 RGB, but the RGB bands {[bands[i] for i in rgb_index]} of this "
            f"dataset have means up to {max(float(mean[i]) for i in rgb_index):.0f}; convert the imagery to 8-bit "
            "or start from random weights (--ptcp 0)")
    for k, i in enumerate(rgb_index):
        m255, s255 = 255.0 * float(m_rgb[k]), 255.0 * float(s_rgb[k])
        if s2:   # v = clip(1 + DN * 254 / 2750, 1, 255), then (v - m255) / s255
            lo8, hi8 = B.S2_TRUE_COLOUR_OUT
            gain = (hi8 - lo8) / B.S2_TRUE_COLOUR_DN_MAX
            targets[i] = RawAffine(gain / s255, (lo8 - m255) / s255, (lo8 - m255) / s255, (hi8 - m255) / s255)
        else:
            targets[i] = RawAffine(1.0 / s255, -m255 / s255)
    return targets


# ----------------------------------------------------------------------------- foreign S2 ResNets
def _resnet_arch(state: Mapping[str, Tensor]) -> str:
    blocks = []
    for layer in range(1, 5):
        ids = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{layer}.") and k.split(".")[1].isdigit()}
        blocks.append(len(ids))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    return _RESNET_DEPTHS.get((kind, tuple(blocks)), f"a {kind} ResNet with {blocks} blocks")


def torchvision_arch(state: Mapping[str, Tensor]) -> str:
    """Which torchvision ImageNet network a state dict holds (``resnet50``, ``vgg16_bn`` ...), '' when none."""
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        arch = _resnet_arch(state)
        return arch if arch in _RESNET_DEPTHS.values() else ""
    if any(k.startswith("inception3a.") for k in state):
        return "googlenet"
    convs = [k for k, v in state.items() if re.fullmatch(r"features\.\d+\.weight", k) and v.ndim == 4]
    if len(convs) == 5:
        return "alexnet"
    if len(convs) == 13 and "features.1.running_mean" in state:
        return "vgg16_bn"
    return ""


def recognise(obj: Any, path: str | Path) -> Foreign | None:
    """A foreign Sentinel-2 ResNet in ``obj`` (loaded from ``path``), or None for our own backbone file.

    Raises UserError for anything else, naming what the file holds.
    """
    path = Path(path)
    if isinstance(obj, Mapping) and "backbone" in obj:
        return None
    raw = unwrap(obj)
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError(f"{path} is neither a backbone checkpoint of this tool nor a ResNet/ViT state dict (it holds "
                        f"{keys}); pass a <netnum>_<expnum>_<epoch>.pth written by pretraining, or SSL4EO-S12/TorchGeo "
                        "Sentinel-2 ResNet or ViT weights")
    state, method = dict(raw), ""
    for prefix, found in _ENCODER_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            method = found
            break
    if method == "" and isinstance(obj, Mapping) and isinstance(obj.get("teacher"), Mapping):
        method = "dino"
    if "patch_embed.proj.weight" in state:
        return recognise_vit(state, path, method)
    if "conv1.weight" not in state or state["conv1.weight"].ndim != 4:
        raise UserError(f"{path} holds neither a ResNet (conv1.weight) nor a ViT (patch_embed.proj.weight) among "
                        f"{list(state)[:5]}; --encoder_cp reads SSL4EO-S12 / TorchGeo Sentinel-2 ResNet and ViT weights")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    n_in = int(state["conv1.weight"].shape[1])
    if n_in not in B.S2_BANDS_BY_COUNT:
        raise UserError(
            f"{path}: its first conv takes {n_in} bands; --encoder_cp reads Sentinel-2 weights with 13 (L1C: "
            f"{' '.join(B.SSL4EO_S2_L1C_BANDS)}) or 12 bands (L2A, no B10)"
            + ("; ImageNet RGB weights go through --weights FILE with --mode 1x" if n_in == 3 else ""))
    if not method:
        tokens = re.split(r"[^a-z0-9]+", path.name.lower())
        method = next((t for t in B.SSL_METHOD_TOKENS if t in tokens), "")
    return Foreign(path, state, B.S2_BANDS_BY_COUNT[n_in], method, _resnet_arch(state))


def ssl4eo_targets(bands: Sequence[str]) -> list[RawAffine | None]:
    """SSL4EO-S12 / TorchGeo preprocessing of every Sentinel-2 band: ``clip(DN / 10000, 0, 1)``."""
    lo, hi = B.SSL4EO_S2_CLIP
    return [RawAffine(1.0 / B.SSL4EO_S2_DIVISOR, 0.0, lo, hi) if s2_name(b) else None for b in bands]


def _to_backbone_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ResNet keys -> :class:`models.backbones.Backbone` keys."""
    out = {}
    for k, v in state.items():
        if k.startswith("conv1."):
            k = "stem.0." + k[len("conv1."):]
        elif k.startswith("bn1."):
            k = "stem.1." + k[len("bn1."):]
        elif re.match(r"layer[1-4]\.", k):
            k = f"stages.{int(k[5]) - 1}." + k[len("layerN."):]
        out[k] = v
    return out


def load_foreign(foreign: Foreign, backbone: nn.Module, bands: Sequence[str]) -> None:
    """Load ``foreign`` into ``backbone`` (a non-small-stem ResNet, or the ViT of the same size and
    patch, reading ``bands``, our order)."""
    if foreign.kind == "vit" or isinstance(backbone, ViTBackbone):
        load_foreign_vit(foreign, backbone, bands)
        return
    arch = getattr(backbone, "arch", "")
    if not arch.startswith("resnet") or arch.endswith("_small"):
        raise UserError(f"{foreign.path} holds a {foreign.arch} with a 7x7 stride-2 stem; the backbone here is "
                        f"{arch or type(backbone).__name__}: use {netnum_for(foreign.arch)}")
    weight = mapped_first_layer(foreign, "conv1.weight", bands, "filters")
    state = _to_backbone_keys({**foreign.state, "conv1.weight": weight})
    target = backbone.state_dict()
    for k, v in target.items():          # timm files may lack BN's step counter; it is not a weight
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    target_keys = {k for k in target if not k.startswith("input_adapter.")}
    if set(state) != target_keys or any(tuple(state[k].shape) != tuple(target[k].shape) for k in target_keys):
        raise UserError(f"{foreign.path} holds a {foreign.arch}, which does not fit the {arch} backbone of this "
                        f"--netnum; use {netnum_for(foreign.arch)}")
    backbone.load_state_dict(state, strict=False)
    log.info("loaded %s (%s, %s, bands %s) into %s, first-conv filters mapped to %s",
             foreign.path, foreign.pretext, foreign.arch, " ".join(foreign.bands), arch, " ".join(bands))
