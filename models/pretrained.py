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
- ViT-S/16 Sentinel-2 encoders in timm's key layout (TorchGeo's ``ViTSmall16_Weights`` files:
  flat ``cls_token, pos_embed, patch_embed.proj, blocks.N, norm``) and in the layouts of the
  methods' own checkpoints (MoCo v3 ``state_dict`` / ``module.base_encoder.``; DINO ``teacher`` /
  ``backbone.``; MAE ``model`` with its decoder): the patch embedding's input filters are moved by
  band name like the ResNets' first conv, the position embedding is resampled to the run's input
  size, heads and decoders are dropped, and the probe reads the feature the method's paper reads
  (:data:`models.vit.METHOD_FEATURE`). data2vec's BEiT layout (``q_bias``/``v_bias``, layer-scale
  ``gamma``, relative position bias) has no documented mapping onto timm's and is refused.
- timm's ImageNet ViT files (``--ptcp 1`` / ``--weights FILE``, a ``.safetensors`` or ``.pth``):
  the RGB patch filters go on the R, G, B bands, zero on the others (as the ResNets), with the
  release's own normalisation from timm's pretrained config (augreg: mean = std = 0.5; DINO:
  ImageNet's mean/std), chosen by the file's head size among timm's releases of that architecture.

Constants and their sources: :mod:`config.baselines`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import huggingface_hub
import timm.models
import torch
from huggingface_hub.constants import HF_HUB_CACHE
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from config import baselines as B
from config.ckptio import read_checkpoint
from config.codes import BACKBONES, VIT_BACKBONES, ViTSpec, vit_netnum
from config.errors import UserError
from models.bands import s2_name
from models.vit import GroupedViTBackbone, ViTBackbone, method_feature

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


def read_state_dict_file(path: str | Path, what: str) -> dict[str, Tensor]:
    """A torchvision-layout state dict (``--weights``), possibly wrapped in ``state_dict``/``model``."""
    obj = read_checkpoint(path, what, weights_only=True, hint="download it again")
    state = _unwrap(obj)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{what} {path} does not hold a state dict of tensors; give a torchvision weights file "
                        "(e.g. resnet50-0676ba61.pth)")
    return _strip(dict(state), "module.")


# ----------------------------------------------------------------------------- foreign S2 weights
@dataclass(frozen=True)
class Foreign:
    """A Sentinel-2 backbone from another code base, read from ``path``."""

    path: Path
    state: dict[str, Tensor]      # torchvision key layout, no fc
    bands: tuple[str, ...]        # the order of the first conv's input filters
    method: str                   # moco, dino, ... or "" when nothing tells
    arch: str                     # resnet18, resnet50, vit_small_patch16, ... (or a description)
    kind: str = "resnet"          # resnet | vit
    desc: str = ""                # what the file holds, in words (ViTs)

    @property
    def pretext(self) -> str:
        return f"ssl4eo-{self.method or 'pretrained'}"

    @property
    def feature(self) -> str | None:
        """ViTs: the feature the method's paper probes (cls / avg); None for ResNets."""
        return method_feature(self.method) if self.kind == "vit" else None

    @property
    def meta(self) -> dict[str, Any]:
        """What stands in for our checkpoint meta (the pretext column, where the weights came from)."""
        return {"pretext": self.pretext, "dataset": "SSL4EO-S12", "external": str(self.path), "selected_by": "published",
                "arch": self.arch, "bands": list(self.bands), "input_size": B.SSL4EO_INPUT_SIZE,
                **({"vit_feature": self.feature} if self.kind == "vit" else {})}


def _unwrap(obj: Any) -> Any:
    for key in ("state_dict", "teacher", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


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
    raw = _unwrap(obj)
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
        return _recognise_vit(state, path, method)
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


def netnum_for(arch: str) -> str:
    digit = next((d for d, name in BACKBONES.items() if name == arch), None)
    return f"--netnum 0{digit}0000" if digit else "a --netnum of the same ResNet"


def map_first_conv(weight: Tensor, theirs: Sequence[str], ours: Sequence[str]) -> tuple[Tensor, list[str], list[str]]:
    """Their first-conv weight (out x len(theirs) x k x k) re-ordered into our band order.

    Returns the new weight, our bands they lack (zero filters) and their bands we do not read.
    """
    where = {s2_name(b): j for j, b in enumerate(theirs)}
    out = weight.new_zeros(weight.shape[0], len(ours), *weight.shape[2:])
    missing = []
    for i, band in enumerate(ours):
        j = where.get(s2_name(band))
        if j is None:
            missing.append(band)
        else:
            out[:, i] = weight[:, j]
    ours_canon = {s2_name(b) for b in ours}
    dropped = [b for b in theirs if s2_name(b) not in ours_canon]
    return out, missing, dropped


def load_foreign(foreign: Foreign, backbone: nn.Module, bands: Sequence[str]) -> None:
    """Load ``foreign`` into ``backbone`` (a non-small-stem ResNet, or the ViT of the same size and
    patch, reading ``bands``, our order)."""
    if foreign.kind == "vit" or isinstance(backbone, ViTBackbone):
        _load_foreign_vit(foreign, backbone, bands)
        return
    arch = getattr(backbone, "arch", "")
    if not arch.startswith("resnet") or arch.endswith("_small"):
        raise UserError(f"{foreign.path} holds a {foreign.arch} with a 7x7 stride-2 stem; the backbone here is "
                        f"{arch or type(backbone).__name__}: use {netnum_for(foreign.arch)}")
    if not any(s2_name(b) for b in bands):
        raise UserError(f"{foreign.path} holds Sentinel-2 weights, but this dataset's bands ({' '.join(bands)}) are "
                        "not Sentinel-2 bands; evaluate it on Sentinel-2 data (e.g. --ds euroms)")
    weight, missing, dropped = map_first_conv(foreign.state["conv1.weight"], foreign.bands, bands)
    if missing:
        log.warning("%s has no filters for band(s) %s: they start at zero", foreign.path, " ".join(missing))
    if dropped:
        log.warning("%s: the filters of band(s) %s are dropped (this run does not read them)",
                    foreign.path, " ".join(dropped))
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


# ----------------------------------------------------------------------------- ViTs
_VIT_SIZE_NAMES = {192: "Tiny", 384: "Small", 768: "Base", 1024: "Large", 1280: "Huge"}
# heads of the methods (MoCo v3 projector, DINO head, ImageNet classifier) and MAE's decoder: not the encoder
_VIT_NOT_ENCODER = ("head.", "decoder_", "mask_token", "pre_logits.")


def vit_layout(state: Mapping[str, Tensor]) -> tuple[ViTSpec | None, str]:
    """Our :class:`ViTSpec` for a timm-layout ViT state dict (None if no --netnum fits) and a description."""
    w = state["patch_embed.proj.weight"]
    dim, n_in, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    size = _VIT_SIZE_NAMES.get(dim, f"{dim}-d")
    desc = f"a ViT-{size}/{patch} ({dim}-d tokens, {depth} blocks, {patch} px patches, {n_in} input bands)"
    spec = next((v for v in VIT_BACKBONES.values() if (v.embed_dim, v.depth, v.patch) == (dim, depth, patch)), None)
    return spec, desc


def _vit_hint(spec: ViTSpec | None) -> str:
    if spec is None:
        return "no --netnum of this tool fits it (ViT-Tiny/Small with patch 8 or 16: " + \
            ", ".join(f"1{d}0000" for d in sorted(VIT_BACKBONES)) + ")"
    return f"use --netnum {vit_netnum(spec.name)}"


def _vit_encoder(state: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    """The encoder part of a timm-layout ViT state dict; BEiT-layout (data2vec) files and mean-pooled
    classifiers are refused in one sentence."""
    if any(".attn.q_bias" in k or "rel_pos_bias" in k or ".gamma_1" in k for k in state):
        raise UserError(f"{path} holds a BEiT-layout ViT (data2vec: q_bias/v_bias, layer-scale gamma, relative "
                        "position bias), whose mapping onto timm's VisionTransformer keys is not documented, so it is "
                        "not read; export it with timm's keys (cls_token, pos_embed, patch_embed.proj, blocks.N.attn.qkv, "
                        "norm) first")
    if "fc_norm.weight" in state and "norm.weight" not in state:
        raise UserError(f"{path} holds a mean-pooled ViT classifier (fc_norm, no final norm); give the pretrained "
                        "encoder (the file with norm.weight), not a fine-tuned classifier")
    return {k: v for k, v in state.items() if not k.startswith(_VIT_NOT_ENCODER)}


def _recognise_vit(state: dict[str, Tensor], path: Path, method: str) -> Foreign:
    """A Sentinel-2 ViT encoder (TorchGeo / SSL4EO-S12 layouts, see the module docstring)."""
    if not method and (any(k.startswith("decoder_") for k in state) or "mask_token" in state):
        method = "mae"
    state = _vit_encoder(state, path)
    spec, desc = vit_layout(state)
    n_in = int(state["patch_embed.proj.weight"].shape[1])
    if n_in not in B.S2_BANDS_BY_COUNT:
        raise UserError(f"{path} holds {desc}; --encoder_cp reads Sentinel-2 weights with 13 (L1C) or 12 bands (L2A)"
                        + ("; ImageNet RGB ViT weights go through --weights FILE with --mode 1x" if n_in == 3 else ""))
    if not method:
        tokens = re.split(r"[^a-z0-9]+", path.name.lower())
        method = next((t for t in B.SSL_METHOD_TOKENS + ("data2vec",) if t in tokens), "")
    return Foreign(path, state, B.S2_BANDS_BY_COUNT[n_in], method, spec.name if spec else desc, "vit", desc)


def _load_vit_state(backbone: ViTBackbone, state: Mapping[str, Tensor], path: Path | str, desc: str) -> None:
    """Load a timm-layout encoder (first filters mapped, position embedding resampled) or say what differs."""
    target = {k: v for k, v in backbone.state_dict().items()
              if not k.startswith("input_adapter.") and k != "feature_code"}
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        what = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            f"other shapes {', '.join(shapes[:3])}" if shapes else "") if part)
        raise UserError(f"{path} holds {desc} whose keys do not fit timm's ViT layout of {backbone.arch} ({what}); "
                        "give the encoder's state dict in timm's layout")
    backbone.load_state_dict(dict(state), strict=False)


def _load_foreign_vit(foreign: Foreign, backbone: nn.Module, bands: Sequence[str]) -> None:
    arch = getattr(backbone, "arch", type(backbone).__name__)
    if foreign.kind != "vit":
        raise UserError(f"{foreign.path} holds a {foreign.arch}, a CNN; the backbone here is {arch}: use "
                        f"{netnum_for(foreign.arch)}")
    spec, desc = vit_layout(foreign.state)
    if not isinstance(backbone, ViTBackbone) or isinstance(backbone, GroupedViTBackbone) or backbone.arch != foreign.arch:
        raise UserError(f"{foreign.path} holds {desc}, which does not fit the {arch} backbone of this --netnum; "
                        f"{_vit_hint(spec)}")
    if not any(s2_name(b) for b in bands):
        raise UserError(f"{foreign.path} holds Sentinel-2 weights, but this dataset's bands ({' '.join(bands)}) are "
                        "not Sentinel-2 bands; evaluate it on Sentinel-2 data (e.g. --ds euroms)")
    weight, missing, dropped = map_first_conv(foreign.state["patch_embed.proj.weight"], foreign.bands, bands)
    if missing:
        log.warning("%s has no patch filters for band(s) %s: they start at zero", foreign.path, " ".join(missing))
    if dropped:
        log.warning("%s: the patch filters of band(s) %s are dropped (this run does not read them)",
                    foreign.path, " ".join(dropped))
    state = backbone.resize_state({**foreign.state, "patch_embed.proj.weight": weight})
    _load_vit_state(backbone, state, foreign.path, desc)
    backbone.set_feature(method_feature(foreign.method))
    log.info("loaded %s (%s, %s, bands %s) into %s at %d px, patch filters mapped to %s; the probe reads the %s "
             "feature", foreign.path, foreign.pretext, desc, " ".join(foreign.bands), arch, backbone.input_size,
             " ".join(bands), backbone.feature)


def read_weights_file(path: str | Path, what: str) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file (timm's hub format) or a torch file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"{what} {path}: no such file; give timm's model.safetensors or a torch state dict file")
        try:
            return load_safetensors(str(path), device="cpu")
        except Exception as err:   # a damaged or non-safetensors file: one sentence
            raise UserError(f"{what} {path} cannot be read as safetensors ({err}); download it again") from err
    return read_state_dict_file(path, what)


def timm_cache_file(spec: ViTSpec) -> Path:
    """The default timm ImageNet release of ``spec`` in the Hugging Face cache (offline: never downloads)."""
    if f"patch{spec.patch}_" not in spec.timm_arch:
        raise UserError(f"timm has no ImageNet weights for {spec.name} (no vit_{spec.size}_patch{spec.patch} release); "
                        "use the patch-16 code of that size or --ptcp 0")
    repo = timm.models.get_pretrained_cfg(spec.timm_arch).hf_hub_id
    for name in ("model.safetensors", "pytorch_model.bin"):
        hit = huggingface_hub.try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return Path(hit)
    raise UserError(f"--ptcp 1: timm's ImageNet weights for {spec.name} ({repo}) are not in the Hugging Face cache "
                    f"{HF_HUB_CACHE}, and nothing is downloaded at run time; download model.safetensors from "
                    f"https://huggingface.co/{repo} and pass it with --weights FILE, or use --ptcp 0")


def timm_release_stats(spec: ViTSpec, n_classes: int, path: Path | str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """The (mean, std) on 0..1 RGB of the timm release a file of ``spec`` with ``n_classes`` head rows is,
    and the release tags (timm's pretrained configs: augreg 0.5/0.5, DINO ImageNet statistics)."""
    cfgs = timm.models.get_arch_pretrained_cfgs(spec.timm_arch)
    fit = {tag: c for tag, c in cfgs.items() if int(c.num_classes or 0) == n_classes} or cfgs
    stats = {(tuple(c.mean), tuple(c.std)) for c in fit.values()}
    if len(stats) != 1:
        raise UserError(f"--weights {path}: a {spec.timm_arch} file with {n_classes} head rows is one of timm's releases "
                        f"{', '.join(sorted(fit))}, which normalise their input differently; give a file with its "
                        "classification head (or without one for DINO) so the release can be told")
    mean, std = stats.pop()
    return mean, std, ", ".join(sorted(fit))


def load_imagenet_vit(backbone: ViTBackbone, weights: str | Path | None, rgb_index: Sequence[int]) -> None:
    """timm's ImageNet ViT (``weights`` file, or the Hugging Face cache) into ``backbone``: the RGB patch
    filters on ``rgb_index``, zero elsewhere; ``backbone.imagenet_stats`` is the release's normalisation."""
    spec = backbone.spec
    path = Path(weights) if weights is not None else timm_cache_file(spec)
    state = _vit_encoder_of_file(path)
    head = state.get("head.weight")
    n_classes = int(head.shape[0]) if head is not None else 0
    state = _vit_encoder(state, path)
    file_spec, desc = vit_layout(state)
    n_in = int(state["patch_embed.proj.weight"].shape[1])
    if n_in != 3:
        raise UserError(f"--weights {path} holds {desc}, not an RGB ImageNet ViT"
                        + ("; Sentinel-2 weights are evaluated with --mode 4x --encoder_cp FILE" if n_in in B.S2_BANDS_BY_COUNT else ""))
    if file_spec is None or file_spec.name != spec.name:
        raise UserError(f"--weights {path} holds {desc}; this --netnum is {spec.name}: {_vit_hint(file_spec)}")
    mean, std, tags = timm_release_stats(spec, n_classes, path)
    w = state["patch_embed.proj.weight"]
    placed = w.new_zeros(w.shape[0], backbone.in_channels, *w.shape[2:])
    placed[:, list(rgb_index)] = w
    state = backbone.resize_state({**state, "patch_embed.proj.weight": placed})
    _load_vit_state(backbone, state, path, desc)
    backbone.imagenet_stats = (mean, std)
    backbone.set_feature("cls")
    log.info("ImageNet weights %s (timm %s, input mean %s std %s) in %s, RGB patch filters on input bands %s",
             path, tags, mean, std, spec.name, tuple(rgb_index))


def _vit_encoder_of_file(path: Path) -> dict[str, Tensor]:
    state = read_weights_file(path, "--weights file")
    if "patch_embed.proj.weight" not in state:
        raise UserError(f"--weights {path} holds no ViT (no patch_embed.proj.weight among {list(state)[:4]}); give "
                        "timm's ImageNet ViT file (model.safetensors of e.g. timm/vit_small_patch16_224.augreg_in21k_ft_in1k)")
    return state
