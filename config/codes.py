"""Mode and netnum codes: the ONE place where numeric codes are decoded.

``--mode``: the first digit names the job (1 train, 2 val, 3 test, 4 finetune,
9 pretrain); for pretraining the whole code names the pretext (table ``PRETEXTS``).
``--netnum``: a 6-digit string; digit 1 is the network family, digit 2 the backbone,
digits 3-6 are reserved and must be ``0``. Each family has its own digit-2 table:
families 0 and 9 share ``BACKBONES`` (the CNNs), family 1 reads ``VIT_BACKBONES``.
"""
from __future__ import annotations

from dataclasses import dataclass

from config.errors import UserError

JOBS: dict[int, str] = {
    1: "train",
    2: "val",
    3: "test",
    4: "finetune",
    9: "pretrain",
}

# Pretraining modes: code -> (name, description).  A pretext is added by one row here
# and one module under models/pretext (see engine/pretrain.py for the dispatch).
PRETEXTS: dict[int, tuple[str, str]] = {
    910: ("simclr", "SimCLR: two augmented views, projection head, NT-Xent"),
    920: ("multitask", "multi-task triplet Siamese: inpainting + augmentation recognition + exemplar"),
    96: ("inpaint", "inpainting (context encoder): centre masked, masked MSE"),
    972: ("jigsaw4", "jigsaw 2x2 tiles, all 24 permutations"),
    973: ("jigsaw9", "jigsaw 3x3 tiles, 1000 maximal-Hamming permutations"),
    98: ("colorize", "colorization: predict all bands from one band"),
    990: ("gan", "GAN (MARTA-GAN style), discriminator kept as backbone"),
    991: ("gan_fm", "GAN (MARTA-GAN style) with feature-matching generator loss"),
    911: ("moco", "MoCo v2: momentum key encoder, queue of negatives, InfoNCE"),
    912: ("byol", "BYOL: predictor, EMA target on a cosine schedule, symmetric loss"),
    913: ("simsiam", "SimSiam: predictor, stop-gradient, no negatives"),
    914: ("barlow", "Barlow Twins: cross-correlation to the identity over the global batch"),
    915: ("vicreg", "VICReg: invariance / variance / covariance over the global batch"),
    916: ("dino", "DINO: EMA teacher, centring + sharpening, multi-crop"),
    930: ("mae", "MAE: ViT, random 75 % patch masking, light decoder, per-band normalised pixel loss on masked patches"),
    931: ("mae_grouped", "grouped-channel MAE (SatMAE): one patch embedding per band group, group encoding, "
                         "masking independent across groups"),
}

FAMILIES: dict[str, str] = {
    "0": "scene network: backbone, global average pool, linear head; first conv rebuilt for any band count",
    "1": "vision transformer (timm): patch embedding built for any band count, CLS token or mean of patch "
         "tokens, linear head; input side a multiple of the patch",
    "9": "plain torchvision model (RGB only)",
}
FAMILY_NAMES: dict[str, str] = {"0": "scene", "1": "vit", "9": "torchvision"}

# Digit 2 of --netnum.  1-8 are the seed's fixed meanings; 9 and 0 were unused and now
# name ResNet-18 and its small-stem variant.
BACKBONES: dict[str, str] = {
    "1": "resnet34",
    "2": "resnet50",
    "3": "resnet34_small",
    "4": "resnet101",
    "5": "vgg16_bn",
    "6": "googlenet",
    "7": "alexnet",
    "8": "alexnet_small",
    "9": "resnet18",
    "0": "resnet18_small",
}

BACKBONE_NOTES: dict[str, str] = {
    "resnet34_small": "3x3 stride-1 first conv, no max-pool (64x64 inputs)",
    "resnet18_small": "3x3 stride-1 first conv, no max-pool (64x64 inputs, 2-core CPU)",
    "alexnet_small": "AlexNet with 3x3 stride-1 first conv (64x64 inputs)",
}




@dataclass(frozen=True)
class ViTSpec:
    """One ViT of family 1: timm's registered architecture and its size (timm 1.0.31, vision_transformer.py)."""

    name: str            # our backbone name, e.g. vit_small_patch16
    size: str            # tiny | small
    patch: int
    timm_arch: str       # the timm architecture whose layer layout (and ImageNet files) it shares
    embed_dim: int
    depth: int
    heads: int


# Digit 2 of --netnum in family 1. Sizes are timm's vit_tiny_patch16_224 (192-d, 12 blocks, 3 heads)
# and vit_small_patch16_224 (384-d, 12 blocks, 6 heads); timm registers no vit_tiny_patch8, so
# ViT-Tiny/8 is vit_tiny_patch16_224 with patch_size=8 (its ImageNet files do not fit it).
VIT_BACKBONES: dict[str, ViTSpec] = {
    "1": ViTSpec("vit_tiny_patch16", "tiny", 16, "vit_tiny_patch16_224", 192, 12, 3),
    "2": ViTSpec("vit_tiny_patch8", "tiny", 8, "vit_tiny_patch16_224", 192, 12, 3),
    "3": ViTSpec("vit_small_patch16", "small", 16, "vit_small_patch16_224", 384, 12, 6),
    "4": ViTSpec("vit_small_patch8", "small", 8, "vit_small_patch8_224", 384, 12, 6),
}


def vit_spec(backbone: str) -> ViTSpec | None:
    """The :class:`ViTSpec` of a family-1 backbone name, or None for a CNN."""
    return next((v for v in VIT_BACKBONES.values() if v.name == backbone), None)


def vit_netnum(backbone: str) -> str | None:
    """The --netnum of a ViT backbone name (``vit_small_patch16`` -> ``130000``), or None."""
    digit = next((d for d, v in VIT_BACKBONES.items() if v.name == backbone), None)
    return f"1{digit}0000" if digit else None


@dataclass(frozen=True)
class Mode:
    code: int
    job: str            # train | val | test | finetune | pretrain
    pretext: str | None  # pretext name for pretraining modes, else None

    @property
    def name(self) -> str:
        """Name used in expnum, e.g. ``pretrain`` or ``finetune``."""
        return self.job


@dataclass(frozen=True)
class NetCode:
    code: str
    family: str          # "scene" | "vit" | "torchvision"
    backbone: str        # e.g. "resnet50", "vit_small_patch16"

    @property
    def vit(self) -> ViTSpec | None:
        """The ViT's size and patch (family 1), None for the CNN families."""
        return vit_spec(self.backbone) if self.family == "vit" else None

    @property
    def patch(self) -> int:
        """The input side must be a multiple of this (the ViT's patch; 1 for CNNs)."""
        return self.vit.patch if self.vit else 1


def decode_mode(mode: int | str, script: str = "any") -> Mode:
    """Decode ``--mode``; ``script`` is ``pretrain``/``cls``/``any`` to restrict the jobs."""
    text = str(mode).strip()
    if not text.isdigit() or text.startswith("0"):
        raise UserError(f"--mode {mode!r} is not a number; valid codes:\n{format_modes(script)}")
    code = int(text)
    job = JOBS.get(int(text[0]))
    if job is None:
        raise UserError(f"--mode {code}: first digit {text[0]} names no job; valid codes:\n{format_modes(script)}")
    if job == "pretrain":
        if code not in PRETEXTS:
            raise UserError(f"--mode {code} is not a pretraining mode; valid codes:\n{format_modes(script)}")
        if script == "cls":
            raise UserError(f"--mode {code} is a pretraining mode: run it with main_cls_ss_train.py, not main_cls.py")
        return Mode(code, job, PRETEXTS[code][0])
    if script == "pretrain":
        raise UserError(f"--mode {code} is a {job} mode: run it with main_cls.py; main_cls_ss_train.py takes:\n{format_modes(script)}")
    return Mode(code, job, None)


def decode_netnum(netnum: str | int) -> NetCode:
    """Decode a 6-digit ``--netnum`` string, e.g. ``020000`` -> scene network, resnet50."""
    text = str(netnum).strip()
    if len(text) != 6 or not text.isdigit():
        raise UserError(f"--netnum {netnum!r} must be a 6-digit string such as 020000; valid codes:\n{format_netnums()}")
    fam, bb, rest = text[0], text[1], text[2:]
    if fam not in FAMILIES:
        raise UserError(f"--netnum {text}: digit 1 must be one of {sorted(FAMILIES)}; valid codes:\n{format_netnums()}")
    if rest != "0000":
        raise UserError(f"--netnum {text}: digits 3-6 are reserved and must be 0000; valid codes:\n{format_netnums()}")
    if FAMILY_NAMES[fam] == "vit":
        if bb not in VIT_BACKBONES:
            raise UserError(f"--netnum {text}: digit 2 of family 1 (ViT) must be one of {sorted(VIT_BACKBONES)}; "
                            f"valid codes:\n{format_netnums()}")
        return NetCode(text, "vit", VIT_BACKBONES[bb].name)
    return NetCode(text, FAMILY_NAMES[fam], BACKBONES[bb])


def format_modes(script: str = "any") -> str:
    lines = ["--mode  job / pretext"]
    if script in ("any", "cls"):
        for d, job in JOBS.items():
            if job != "pretrain":
                lines.append(f"  {d}x     {job}" + ("  (--ptcp 1: ImageNet weights)" if job == "train" else ""))
    if script in ("any", "pretrain"):
        for code, (name, desc) in PRETEXTS.items():
            lines.append(f"  {code:<6} {name}: {desc}")
    return "\n".join(lines)


def format_netnums() -> str:
    lines = ["--netnum  6 digits: <family><backbone>0000", "  digit 1 (family):"]
    lines += [f"    {k}  {v}" for k, v in FAMILIES.items()]
    lines.append("  digit 2 (backbone) of families 0 and 9:")
    for k, v in sorted(BACKBONES.items()):
        note = BACKBONE_NOTES.get(v)
        lines.append(f"    {k}  {v}" + (f"  ({note})" if note else ""))
    lines.append("  digit 2 (backbone) of family 1 (ViT, timm):")
    for k, v in sorted(VIT_BACKBONES.items()):
        lines.append(f"    {k}  vit {v.size} patch {v.patch}  ({v.name}: {v.embed_dim}-d, {v.depth} blocks, "
                     f"{v.heads} heads; input side a multiple of {v.patch})")
    lines.append("  example: 020000 = scene network on resnet50; 000000 = scene network on resnet18_small; "
                 "110000 = vit tiny patch 16")
    return "\n".join(lines)


def format_tables(script: str = "any") -> str:
    """What ``--list-codes`` prints."""
    return format_modes(script) + "\n\n" + format_netnums()
