"""Pretrained Vision Transformers from local files: Sentinel-2 encoders and timm's ImageNet releases.

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

Which file is which (the wrappers, the encoder prefixes): :func:`models.pretrained.recognise`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Sequence

import huggingface_hub
import timm.models
from huggingface_hub.constants import HF_HUB_CACHE
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from config import baselines as B
from config.codes import VIT_BACKBONES, ViTSpec, vit_netnum
from config.errors import UserError
from models.foreign import Foreign, mapped_first_layer, netnum_for, read_state_dict_file
from models.vit import GroupedViTBackbone, ViTBackbone, method_feature

log = logging.getLogger(__name__)

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


def recognise_vit(state: dict[str, Tensor], path: Path, method: str) -> Foreign:
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


def load_foreign_vit(foreign: Foreign, backbone: nn.Module, bands: Sequence[str]) -> None:
    arch = getattr(backbone, "arch", type(backbone).__name__)
    if foreign.kind != "vit":
        raise UserError(f"{foreign.path} holds a {foreign.arch}, a CNN; the backbone here is {arch}: use "
                        f"{netnum_for(foreign.arch)}")
    spec, desc = vit_layout(foreign.state)
    if not isinstance(backbone, ViTBackbone) or isinstance(backbone, GroupedViTBackbone) or backbone.arch != foreign.arch:
        raise UserError(f"{foreign.path} holds {desc}, which does not fit the {arch} backbone of this --netnum; "
                        f"{_vit_hint(spec)}")
    weight = mapped_first_layer(foreign, "patch_embed.proj.weight", bands, "patch filters")
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
