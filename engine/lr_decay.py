"""Layer-wise learning-rate decay for fine-tuning a ViT (MAE's util/lr_decay.py, after BEiT).

With ``n = depth + 1`` layers, a parameter of layer ``i`` gets ``lr_scale = decay ** (n - i)``
(:data:`engine.schedules.LRSchedule` multiplies each group's lr by its ``lr_scale``): the patch
embedding and the token parameters (``cls_token``, ``pos_embed``; our grouped encoder's
``group_embed`` too) are layer 0, block ``k`` is layer ``k + 1``, everything else (the final norm,
the head) layer ``n`` at scale 1. Parameters with one dimension and the backbone's
``no_weight_decay()`` names get ``weight_decay = 0`` (and ``lars_exclude``), as MAE's
``param_groups_lrd`` does; the other groups take the optimiser's ``--wd``.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn


def layer_id_for_vit(name: str, num_layers: int, input_tokens: Iterable[str] = ("cls_token", "pos_embed")) -> int:
    """MAE's ``get_layer_id_for_vit``: the layer a backbone parameter belongs to (0 .. ``num_layers``)."""
    if name in set(input_tokens) or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_lrd(backbone: nn.Module, layer_decay: float, scale: float = 1.0,
                     head: nn.Module | None = None) -> list[dict]:
    """Param groups of ``backbone`` (a timm ViT: ``blocks``, ``no_weight_decay()``) and ``head``.

    ``scale`` multiplies every backbone group's ``lr_scale`` (``--hos 1``: the backbone at lr/5);
    the head is layer ``num_layers`` (scale 1). Frozen parameters are left out.
    """
    num_layers = len(backbone.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    no_decay = set(backbone.no_weight_decay())
    groups: dict[str, dict] = {}

    def add(part: str, name: str, p: nn.Parameter, layer: int, mult: float, skip_names: set[str]) -> None:
        if not p.requires_grad:
            return
        skip = p.ndim == 1 or name in skip_names
        key = f"{part}_layer_{layer}_{'no_decay' if skip else 'decay'}"
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr_scale": scales[layer] * mult}
            if skip:
                groups[key].update(weight_decay=0.0, lars_exclude=True)
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)

    for name, p in backbone.named_parameters():
        add("backbone", name, p, layer_id_for_vit(name, num_layers, no_decay), scale, no_decay)
    if head is not None:
        for name, p in head.named_parameters():
            add("head", name, p, num_layers, 1.0, set())
    return list(groups.values())
