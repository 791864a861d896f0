"""MoCo v3's ViT optimisation, which the contrastive and Siamese methods (910-915) take on a ViT,
and :func:`with_vit`, which joins a method's convnet recipes and its ViT settings into one table.

MoCo v3 (Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021) is the study of Siamese self-supervised learning on ViTs. Its ViT-S/B commands
(facebookresearch/moco-v3 CONFIG.md) train with AdamW, lr 1.5e-4 x batch / 256, weight decay
0.1 on every parameter, 40 warm-up epochs and the patch embedding frozen at its random
initialisation (``--stop-grad-conv1``, the paper's "random patch projection", which it shows
stabilises MoCo v3, SimCLR and BYOL on ViTs). Its Table 4 ran SimCLR and BYOL on ViT-B in this
setting (two 224 px crops). SimSiam, Barlow Twins and VICReg have no published ViT recipe; their
losses only see the pooled embedding, so on a ViT they take MoCo v3's optimisation as well
(docs/recipes.md), and :func:`note_unpublished` says so in the log.

Not a pretext (no row in config.codes.PRETEXTS).
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from config.codes import decode_netnum

log = logging.getLogger(__name__)

_CONFIG = "facebookresearch/moco-v3 CONFIG.md @38aae447 (ViT-Small/Base pre-training commands)"
_MAIN = "facebookresearch/moco-v3 main_moco.py @7074f47f"
_SOLO = "vturrisi/solo-learn scripts/pretrain/imagenet-100/mocov3_vit.yaml @72c172b8"
TABLE4 = "MoCo v3 (Chen, Xie & He 2021) Table 4 ran {method} on ViT-B/16 with MoCo v3's ViT optimisation"
UNPUBLISHED = "no published ViT recipe; MoCo v3's ViT optimiser"

PAPER: dict[str, Any] = {"optimizer": "adamw", "lr_base": 1.5e-4, "lr_rule": "linear", "momentum": 0.9, "wd": 0.1,
                         "exclude_bias_norm": False, "bias_lr_scale": 1.0, "warmup": 40, "freeze_patch_embed": True,
                         "lars_eta": None, "lars_clip": None}
PAPER_SOURCES: dict[str, str] = {
    "optimizer": f"{_CONFIG}: --optimizer=adamw", "lr_base": f"{_CONFIG}: --lr=1.5e-4",
    "lr_rule": f"{_MAIN}: args.lr = args.lr * args.batch_size / 256",
    "momentum": f"{_MAIN}: torch.optim.AdamW's default betas (0.9, 0.999)", "wd": f"{_CONFIG}: --weight-decay=.1",
    "exclude_bias_norm": f"{_MAIN}: AdamW(model.parameters(), weight_decay=...) decays every parameter",
    "bias_lr_scale": f"{_MAIN}: one lr for every parameter", "warmup": f"{_CONFIG}: --warmup-epochs=40",
    "freeze_patch_embed": f"{_CONFIG}: --stop-grad-conv1 (vits.py @38aae447: patch_embed.proj weight and bias "
                          "requires_grad False), the paper's random patch projection",
    "lars_eta": "does not apply: AdamW has no trust ratio", "lars_clip": "does not apply: AdamW has no trust ratio"}
SMALL: dict[str, Any] = {**PAPER, "lr_base": 3e-4, "warmup": 10}
SMALL_SOURCES: dict[str, str] = {
    **PAPER_SOURCES, "optimizer": f"{_SOLO}: adamw", "lr_base": f"{_SOLO}: lr 3.0e-4 (per 256; batch 128 x 8)",
    "lr_rule": "solo-learn solo/args/pretrain.py @07458e52: lr x batch / 256",
    "momentum": "torch.optim.AdamW's default beta1 0.9 (solo-learn sets no betas)", "wd": f"{_SOLO}: weight_decay 0.1",
    "exclude_bias_norm": "solo-learn solo/args/pretrain.py @07458e52: exclude_bias_n_norm_wd False (every parameter "
                         "decayed, as MoCo v3)",
    "bias_lr_scale": f"{_SOLO}: one lr", "warmup": "solo-learn solo/methods/base.py @c980e9e3: warmup_epochs 10",
    "freeze_patch_embed": f"MoCo v3's random patch projection ({_CONFIG} --stop-grad-conv1), kept for short runs: "
                          "the paper finds it stabilises MoCo v3, SimCLR and BYOL (solo-learn's yaml has no switch)"}


def moco_v3(why: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """MoCo v3's ViT optimisation for both recipes (``paper``: its commands; ``small``: solo-learn's
    ImageNet-100 ViT-S MoCo v3 config), each source prefixed with ``why`` (why a method takes them)."""
    tables = {"paper": dict(PAPER), "small": dict(SMALL)}
    sources = {name: {k: f"{why}: {v}" for k, v in src.items()}
               for name, src in (("paper", PAPER_SOURCES), ("small", SMALL_SOURCES))}
    return tables, sources


def with_vit(convnet: dict[str, dict[str, Any]], convnet_sources: dict[str, dict[str, str]],
             vit: dict[str, dict[str, Any]], vit_sources: dict[str, dict[str, str]]
             ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """``RECIPES`` and ``SOURCES`` of a method: its convnet settings, with ``vit``'s replacing them on ViTs.

    A setting that differs becomes ``{"convnet": a, "vit": b}`` (None: does not apply to that family,
    engine/recipes.py leaves the flag alone); a source that differs reads ``convnet: ...; vit: ...``.
    Settings that apply to neither family are left out.
    """
    tables: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    for name, conv in convnet.items():
        on_vit, conv_src = {**conv, **vit[name]}, convnet_sources[name]
        on_vit_src = {**conv_src, **vit_sources[name]}
        tables[name], sources[name] = {}, {}
        for key in {**conv, **on_vit}:
            a, b = conv.get(key), on_vit.get(key)
            if a is None and b is None:
                continue
            tables[name][key] = a if a == b else {"convnet": a, "vit": b}
            sa = conv_src.get(key, "does not apply") if a is not None else "does not apply"
            sb = on_vit_src[key]
            sources[name][key] = sa if sa == sb else f"convnet: {sa}; vit: {sb}"
    return tables, sources


def note_unpublished(args: argparse.Namespace, method: str) -> None:
    """Log that ``method`` on a ViT runs on MoCo v3's optimisation, its paper having no ViT recipe."""
    netnum = getattr(args, "netnum", None)
    if netnum and decode_netnum(netnum).vit is not None and "optimizer" in getattr(args, "recipe_filled", ()):
        log.info("%s has no published ViT recipe: --recipe %s gives it MoCo v3's ViT optimisation (AdamW, wd 0.1, "
                 "random patch projection; docs/recipes.md)", method, args.recipe)
