"""The ``--aug_p`` augmentation plans: which steps, in which order, with which probabilities.

A plan takes one float32 tensor ``C x H x W`` in RAW units and returns a NORMALISED float32 tensor
``C x size x size``. The plan codes (``--aug_p``) and the step probabilities are the SPEC's "Augmentation
codes" table; :data:`PLAN_STEPS` is that table in code. The steps themselves are in
:mod:`datasets.transforms` (geometry, normalisation) and :mod:`datasets.photometric`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from torch import Tensor

from config.errors import UserError
from datasets.photometric import (
    BoxBlur,
    ColorJitter,
    GaussianBlur,
    Grayscale,
    Noise,
    Solarize,
)
from datasets.transforms import (
    AffineJitter,
    FixedFractionCrop,
    Normalize,
    RandomResizedCrop,
    Resize,
    RotateFlip,
    check_size,
)

PLAN_CODES = ("A", "B", "C", "D", "E", "S1", "S2", "S3", "S4", "S5", "S6")
AUG_CODES = (1, 2, 3, 4, 5, 6)
DEFAULT_P = {"crop": 0.8, "rotate": 0.5, "color": 0.8, "noise": 0.0, "gray": 0.2, "blur": 0.5}

# What each --aug_p code does, in order, before the per-band normalisation. The names
# are the step kinds built by _make_step; a step draws with the probability of its
# DEFAULT_P key in STEP_P_KEY (plan A's affine jitter shares the crop probability;
# the resizes have no key and always run).
PLAN_STEPS: dict[str, tuple[str, ...]] = {
    "A": ("crop", "noise4", "affine", "color", "gray", "boxblur"),
    "B": ("crop40", "rotate", "color", "noise2", "gray", "blur"),
    "C": ("crop40", "rotate", "color", "gray", "blur"),
    "D": ("crop", "rotate"),
    "E": ("fixedcrop",),
    "S1": ("resize", "color"),
    "S2": ("resize", "color", "gray", "blur"),
    "S3": ("crop",),
    "S4": ("crop", "rotate"),
    "S5": ("crop", "rotate", "color", "gray", "blur"),
    "S6": ("resize+30", "crop", "rotate", "color", "gray", "blur"),
}
CROP_KINDS = ("crop", "crop40", "fixedcrop")      # the steps a crop-scale setting replaces
STEP_P_KEY = {
    "crop": "crop", "crop40": "crop", "fixedcrop": "crop", "affine": "crop",
    "rotate": "rotate", "color": "color", "noise4": "noise", "noise2": "noise",
    "gray": "gray", "blur": "blur", "boxblur": "blur",
}


FIXED_CROP_FRACTION = 0.8          # plan E: side of the random crop, as a fraction
S6_MARGIN = 30                     # plan S6 first resizes to size + 30


class Plan:
    """A sequence of steps on raw units followed by the per-band normalisation."""

    def __init__(self, code: str, steps: Sequence[Callable[[Tensor], Tensor]], normalize: Normalize,
                 post: Sequence[Callable[[Tensor], Tensor]] = ()) -> None:
        self.code, self.steps, self.normalize, self.post = code, tuple(steps), normalize, tuple(post)

    def __call__(self, x: Tensor) -> Tensor:
        """Augment and normalise one ``C x H x W`` image (then the ``post`` steps); the input is never modified."""
        if x.dim() != 3:
            raise UserError(f"a plan takes one C x H x W image, got shape {tuple(x.shape)}; apply it per sample in the Dataset.")
        self.normalize.check(x)
        x = x.float()
        for step in self.steps:
            x = step(x)
        x = self.normalize(x)
        for step in self.post:
            x = step(x)
        return x

    def __repr__(self) -> str:
        names = ", ".join(type(s).__name__ for s in self.steps)
        post = "".join(f" -> {s!r}" for s in self.post)
        return f"Plan({self.code!r}: {names} -> {self.normalize!r}{post})"


def plain(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Tensor], Tensor]:
    """The un-augmented view: bilinear antialiased resize to ``size x size``, then normalise."""
    return Plan("plain", [Resize(check_size(size))], Normalize(mean, std))


def merge_p(p: Mapping[str, float] | None) -> dict[str, float]:
    """DEFAULT_P with the entries of ``p`` replaced; unknown keys or values outside [0, 1] are user errors."""
    merged = dict(DEFAULT_P)
    for key, value in (p or {}).items():
        if key not in DEFAULT_P:
            raise UserError(f"augmentation probability {key!r} is unknown; use one of {', '.join(DEFAULT_P)}.")
        if not 0.0 <= float(value) <= 1.0:
            raise UserError(f"augmentation probability {key}={value} is outside [0, 1]; give a probability.")
        merged[key] = float(value)
    return merged


def check_rgb_index(rgb_index: Sequence[int] | None, bands: int) -> tuple[int, int, int] | None:
    """Validate the RGB triplet against the band count."""
    if rgb_index is None:
        return None
    triplet = tuple(int(i) for i in rgb_index)
    if len(triplet) != 3 or len(set(triplet)) != 3 or not all(0 <= i < bands for i in triplet):
        raise UserError(
            f"rgb_index {tuple(rgb_index)} is not three distinct band positions below {bands}; "
            "name the red, green and blue bands of the chosen --dtype (or None if it has no RGB)."
        )
    return triplet


def _make_step(kind: str, size: int, p: float, norm: Normalize, rgb_index: tuple[int, int, int] | None,
               crop_scale: tuple[float, float] | None = None) -> Callable[[Tensor], Tensor]:
    """Build one step of PLAN_STEPS (a crop step becomes an always-applied ``crop_scale`` crop when given)."""
    if kind in CROP_KINDS and crop_scale is not None:
        return RandomResizedCrop(size, crop_scale, 1.0)
    if kind == "resize":
        return Resize(size)
    if kind == "resize+30":
        return Resize(size + S6_MARGIN)
    if kind == "crop":
        return RandomResizedCrop(size, (0.5, 1.0), p)
    if kind == "crop40":
        return RandomResizedCrop(size, (0.4, 1.0), p)
    if kind == "fixedcrop":
        return FixedFractionCrop(size, FIXED_CROP_FRACTION, p)
    if kind == "rotate":
        return RotateFlip(p)
    if kind == "color":
        return ColorJitter(p, rgb_index)
    if kind == "noise4":
        return Noise(p, Noise.KINDS, norm.std)
    if kind == "noise2":
        return Noise(p, ("gaussian", "saltpepper"), norm.std)
    if kind == "affine":
        return AffineJitter(p)
    if kind == "gray":
        return Grayscale(p, norm.mean, norm.std)
    if kind == "boxblur":
        return BoxBlur(p)
    if kind == "blur":
        return GaussianBlur(p, size)
    raise ValueError(f"no step kind {kind!r}")


def build_plan(
    code: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    rgb_index: tuple[int, int, int] | None,
    p: Mapping[str, float] | None = None,
    solarize: float = 0.0,
    crop_scale: tuple[float, float] | None = None,
) -> Plan:
    """The ``--aug_p`` plan ``code`` for ``size x size`` outputs, normalised with ``mean``/``std``.

    ``rgb_index`` names the red, green, blue band positions for hue/saturation (None:
    skip them). ``p`` overrides entries of :data:`DEFAULT_P`. ``solarize`` > 0 appends
    :class:`Solarize` with that probability after the normalisation. ``crop_scale``
    (``--crop-scale``, a recipe's crop) replaces the plan's crop step (:data:`CROP_KINDS`)
    by a random resized crop of that area range applied to every view, as the SSL papers
    crop; None keeps the plan exactly as the table above defines it.
    """
    if code not in PLAN_STEPS:
        raise UserError(f"augmentation plan --aug_p {code!r} is unknown; use one of {', '.join(PLAN_CODES)}.")
    if crop_scale is not None and not set(CROP_KINDS) & set(PLAN_STEPS[code]):
        raise UserError(f"--crop-scale replaces the crop step of the --aug_p plan, but {code} has none; use a plan with "
                        "a crop (S3-S6, A-E) or --crop-scale plan")
    size = check_size(size)
    norm = Normalize(mean, std)
    probs = merge_p(p)
    triplet = check_rgb_index(rgb_index, norm.bands)
    steps = [
        _make_step(kind, size, probs[STEP_P_KEY[kind]] if kind in STEP_P_KEY else 1.0, norm, triplet,
                   tuple(crop_scale) if crop_scale is not None else None)
        for kind in PLAN_STEPS[code]
    ]
    return Plan(code, steps, norm, [Solarize(solarize)] if solarize > 0 else [])
