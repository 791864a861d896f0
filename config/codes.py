"""Mode and netnum codes: the ONE place where numeric codes are decoded.

``--mode``: the first digit names the job (1 train, 2 val, 3 test, 4 finetune,
9 pretrain); for pretraining the whole code names the pretext (table ``PRETEXTS``).
``--netnum``: a 6-digit string; digit 1 is the network family, digit 2 the backbone,
digits 3-6 are reserved and must be ``0``.
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
}

FAMILIES: dict[str, str] = {
    "0": "scene network: backbone, global average pool, linear head; first conv rebuilt for any band count",
    "9": "plain torchvision model (RGB only)",
}

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
    family: str          # "scene" | "torchvision"
    backbone: str        # e.g. "resnet50"


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
    return NetCode(text, "scene" if fam == "0" else "torchvision", BACKBONES[bb])


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
    lines.append("  digit 2 (backbone):")
    for k, v in sorted(BACKBONES.items()):
        note = BACKBONE_NOTES.get(v)
        lines.append(f"    {k}  {v}" + (f"  ({note})" if note else ""))
    lines.append("  example: 020000 = scene network on resnet50; 000000 = scene network on resnet18_small")
    return "\n".join(lines)


def format_tables(script: str = "any") -> str:
    """What ``--list-codes`` prints."""
    return format_modes(script) + "\n\n" + format_netnums()
