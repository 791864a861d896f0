"""``--recipe paper|small``: fill every pretraining setting the user did not give from the pretext's recipe.

Each pretext module carries ``RECIPES = {"paper": {...}, "small": {...}}`` (flag dest -> value)
and a parallel ``SOURCES`` dict naming where each value comes from; ``docs/recipes.md`` is the
same tables for a reader. ``paper`` is the method's own settings (the official repository or
the paper), ``small`` the settings for batches <= 256 and a few thousand optimiser steps
(solo-learn's ResNet-18 configs and the authors' own small-data runs). A flag the user gives
always wins: the flags concerned default to None in the parser, and only Nones are filled.

Two recipe keys are not flags: ``lr_base`` and ``lr_rule`` give ``--lr`` as
``linear``: ``lr_base * global_batch / 256`` (the papers' rule), ``sqrt``:
``lr_base * sqrt(global_batch)`` (SimCLR's alternative), ``none``: ``lr_base`` as is (the
source's batch, no scaling stated), ``dataset``: the dataset option's lr (no number in the
source: this repository's behaviour before recipes). A recipe value may depend on the
backbone family, written ``{"convnet": a, "vit": b}`` (None for a family: the setting does not
apply to it, e.g. MoCo v2's queue on a ViT, and its flag keeps its default), and a head width may be
``"backbone"``: the backbone's feature width (MoCo v2's and SimSiam's hidden layers).

Epoch counts a recipe fills are capped at a share of ``--mepoch`` (:data:`EPOCH_CAPS`,
rounded down to whole epochs), so a source's 10 warm-up epochs of a 100-1000-epoch run do
not eat a short run. The resolved values, the recipe's name and the list of settings it
filled (``recipe_filled``) stay in the namespace, which the checkpoint's meta records.
"""
from __future__ import annotations

import argparse
import logging
import math
from types import ModuleType
from typing import Any

import torch

from config.codes import decode_netnum
from config.errors import UserError
from models import build_backbone

log = logging.getLogger(__name__)

RECIPE_NAMES: tuple[str, ...] = ("paper", "small")
DEFAULT_RECIPE = "paper"
LR_RULES: tuple[str, ...] = ("linear", "sqrt", "none", "dataset")
REFERENCE_BATCH = 256
BACKBONE_KINDS: tuple[str, ...] = ("convnet", "vit")
# What the optimisation flags meant before recipes; main_cls.py keeps them (engine.cli.CLS_DEFAULTS),
# and a pretext whose recipe leaves one unset (a GAN's own Adam) gets it here.
CLASSIC: dict[str, Any] = {"optimizer": "adam", "momentum": 0.9, "wd": 1e-6, "warmup": 0.0,
                           "exclude_bias_norm": True, "bias_lr_scale": 1.0}
# Shares of --mepoch that an epoch count FROM A RECIPE may take, rounded down:
# lr warm-up 10 % (SimCLR: 10 of 100 epochs, tf2/run.py), teacher-temperature warm-up 30 %
# (DINO main_dino.py defaults: 30 of 100 epochs), frozen last layer 10 % (DINO: 1 of 100 epochs).
EPOCH_CAPS: dict[str, float] = {"warmup": 0.1, "warmup_teacher_temp_epochs": 0.3, "dino_freeze_last": 0.1}
LARS_KEYS: tuple[str, ...] = ("lars_eta", "lars_clip")
ADAM_KEYS: tuple[str, ...] = ("beta2",)
OWN_OPTIMIZER_KEYS: tuple[str, ...] = ("exclude_bias_norm", "bias_lr_scale", "lars_eta", "lars_clip")
NOT_FLAGS: tuple[str, ...] = ("lr_base", "lr_rule")


def backbone_kind(netnum: str) -> str:
    """``vit`` for Vision Transformer codes, else ``convnet`` (the recipes' two families)."""
    return "vit" if decode_netnum(netnum).backbone.startswith("vit") else "convnet"


def backbone_width(netnum: str) -> int:
    """The pooled feature width of ``--netnum``'s backbone, read from a copy built on the meta device."""
    with torch.device("meta"):
        _, width = build_backbone(netnum, 3)
    return int(width)


def recipe_of(module: ModuleType, name: str, kind: str = "convnet") -> dict[str, Any]:
    """The recipe ``name`` of a pretext module with per-family values picked for ``kind``."""
    table = getattr(module, "RECIPES", None)
    if not table:
        raise UserError(f"pretext {module.__name__} has no recipes; add RECIPES to it")
    if name not in table:
        raise UserError(f"--recipe {name} is unknown; use one of: {', '.join(RECIPE_NAMES)}")
    return {k: pick(v, kind) for k, v in table[name].items()}


def pick(value: Any, kind: str) -> Any:
    """A per-family value ``{"convnet": a, "vit": b}`` -> the one for ``kind``; anything else as is."""
    if isinstance(value, dict) and value and set(value) <= set(BACKBONE_KINDS):
        return value.get(kind, value.get("convnet"))
    return value


def cap_epochs(key: str, value: Any, mepoch: int) -> Any:
    """An epoch count from a recipe, at most ``EPOCH_CAPS[key] * mepoch`` whole epochs."""
    if key not in EPOCH_CAPS or value is None:
        return value
    return min(value, math.floor(EPOCH_CAPS[key] * mepoch))


def resolve(args: argparse.Namespace, module: ModuleType) -> None:
    """Fill every recipe setting left None in ``args`` (all but ``--lr``: :func:`resolve_lr` needs the batch).

    Also: a view plan the user names (``--aug``/``--aug_p``) keeps its own crop unless
    ``--crop-scale`` is given too; LARS-only settings are dropped when the optimiser is not
    LARS; a pretext with its own optimiser refuses the param-group flags it cannot honour.
    """
    name = args.recipe or DEFAULT_RECIPE
    if name not in RECIPE_NAMES:
        raise UserError(f"--recipe {name} is unknown; use one of: {', '.join(RECIPE_NAMES)}")
    netnum = getattr(args, "netnum", None) or "000000"
    recipe = recipe_of(module, name, backbone_kind(netnum))
    if hasattr(module, "build_optimizer"):
        given = [k for k in OWN_OPTIMIZER_KEYS if getattr(args, k, None) is not None]
        if given:
            pretext = module.__name__.rsplit(".", 1)[-1]
            raise UserError(f"--{given[0].replace('_', '-')} does not apply to {pretext}: it builds its own "
                            "optimiser (see its row in docs/recipes.md); drop it")
    if ("crop_scale" in recipe and getattr(args, "crop_scale", None) is None
            and (args.aug is not None or args.aug_p is not None)):
        args.crop_scale = "plan"            # the user's --aug/--aug_p mean what they always meant
        log.info("--aug/--aug_p given: their plan's own crop is kept (add --crop-scale LO,HI to replace it)")
    filled = []
    width = None
    for key, value in recipe.items():
        if key in NOT_FLAGS or value is None:          # None: the setting does not apply to this family
            continue
        if not hasattr(args, key):
            raise UserError(f"recipe {name} of {module.__name__} sets {key}, which no flag defines")
        if getattr(args, key) is not None:
            continue
        if value == "backbone":
            width = width or backbone_width(netnum)
            value = width
        setattr(args, key, cap_epochs(key, value, args.mepoch))
        filled.append(key)
    if args.optimizer is None:
        args.optimizer = CLASSIC["optimizer"]
    args.lr_base, args.lr_rule = recipe.get("lr_base"), recipe.get("lr_rule", "dataset")
    if "optimizer" not in filled and args.optimizer.lower() != str(recipe.get("optimizer", args.optimizer)).lower():
        log.info("--optimizer %s differs from recipe %s's %s: its lr rule and bias lr factor do not apply, --lr "
                 "defaults to the dataset's", args.optimizer, name, recipe.get("optimizer"))
        args.lr_base, args.lr_rule = None, "dataset"
        if "bias_lr_scale" in filled:
            args.bias_lr_scale = CLASSIC["bias_lr_scale"]
            filled.remove("bias_lr_scale")
    if args.optimizer.lower() != "lars":
        for key in LARS_KEYS:
            if key in filled:
                setattr(args, key, None)
                filled.remove(key)
    if args.optimizer.lower() not in ("adam", "adamw"):
        for key in ADAM_KEYS:
            if key in filled:
                setattr(args, key, None)
                filled.remove(key)
    for key, value in CLASSIC.items():
        if getattr(args, key, None) is None and not (hasattr(module, "build_optimizer") and key in OWN_OPTIMIZER_KEYS):
            setattr(args, key, value)
    args.recipe, args.recipe_filled = name, sorted(filled)


def resolve_lr(args: argparse.Namespace, global_bs: int, dataset_lr: float) -> float:
    """``--lr``, or the recipe's rule applied to the global batch; sets and returns ``args.lr``."""
    if args.lr is not None:
        args.lr_rule = "given"
        return args.lr
    rule, base = getattr(args, "lr_rule", "dataset"), getattr(args, "lr_base", None)
    if rule not in LR_RULES:
        raise UserError(f"lr rule {rule!r} is unknown; use one of {', '.join(LR_RULES)}")
    if rule == "dataset" or base is None:
        args.lr_rule, args.lr_base, args.lr = "dataset", dataset_lr, dataset_lr
    elif rule == "linear":
        args.lr = base * global_bs / REFERENCE_BATCH
    elif rule == "sqrt":
        args.lr = base * math.sqrt(global_bs)
    else:
        args.lr = base
    if "lr" not in getattr(args, "recipe_filled", []):
        args.recipe_filled = sorted([*getattr(args, "recipe_filled", []), "lr"])
    log.info("recipe %s: --lr %.4g (%s rule, base %s, global batch %d)", getattr(args, "recipe", DEFAULT_RECIPE),
             args.lr, args.lr_rule, args.lr_base, global_bs)
    return args.lr


def recipe_arg(text: str) -> str:
    """``--recipe`` value check at parse time."""
    if text not in RECIPE_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a recipe; use one of: {', '.join(RECIPE_NAMES)}")
    return text
