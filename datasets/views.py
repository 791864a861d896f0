"""What a pretext sees: the two views of ``--aug``, DINO's multi-crop, and the test-time dihedral views.

``build_views`` pairs the plain view and the ``--aug_p`` plan of :mod:`datasets.transforms`
as the SPEC's ``--aug`` table says (``--aug 6``: BYOL's asymmetric pair); ``MultiCrop``
makes DINO's global and local crops; ``tta_views`` gives the 8 flips/rotations that
``--tta`` averages over.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from config.errors import UserError
from datasets.photometric import ColorJitter, GaussianBlur, Grayscale, Solarize
from datasets.plans import AUG_CODES, PLAN_STEPS, Plan, check_rgb_index, build_plan, merge_p, plain
from datasets.transforms import Normalize, RandomResizedCrop, RotateFlip, check_size, random_crop

SHARED_CROP_SCALE = (0.5, 0.9)     # --aug 1 and 4: the one crop both views start from
OWN_CROP_SCALE = (0.5, 1.0)        # --aug 3: view a's own random resized crop
# --aug 6, BYOL's asymmetric views (Grill et al. 2020, table 6): (blur p, solarize p) of view a, view b
ASYMMETRIC = ((1.0, 0.0), (0.1, 0.2))


class _CropView:
    """--aug 3 view a: with probability ``p`` a random resized crop (scale 0.5-1), else a resize; normalised."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], p: float) -> None:
        self.crop = RandomResizedCrop(size, OWN_CROP_SCALE, p)
        self.normalize = Normalize(mean, std)

    def __call__(self, x: Tensor) -> Tensor:
        self.normalize.check(x)
        return self.normalize(self.crop(x.float()))


class TwoViews:
    """Make the pair ``(view_a(x), view_b(x))``, optionally both from one shared random crop of ``x``."""

    def __init__(
        self,
        aug: int,
        view_a: Callable[[Tensor], Tensor],
        view_b: Callable[[Tensor], Tensor],
        shared_crop: tuple[float, float] | None,
    ) -> None:
        self.aug, self.view_a, self.view_b, self.shared_crop = aug, view_a, view_b, shared_crop

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Two normalised ``C x size x size`` views of one raw ``C x H x W`` image."""
        if self.shared_crop is not None:
            x = random_crop(x, self.shared_crop)
        return self.view_a(x), self.view_b(x)

    def __repr__(self) -> str:
        return f"TwoViews(aug={self.aug}, a={self.view_a!r}, b={self.view_b!r}, shared_crop={self.shared_crop})"


def parse_scale(text: str, flag: str) -> list[float]:
    """``"0.2,1"`` -> ``[0.2, 1.0]``: a crop's area range as shares of the image, 0 < lo <= hi <= 1."""
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"{flag} {text!r} must be two numbers LO,HI, e.g. {flag} 0.2,1") from None
    if not 0 < lo <= hi <= 1:
        raise UserError(f"{flag} {text} must satisfy 0 < LO <= HI <= 1 (shares of the image area), e.g. 0.2,1")
    return [lo, hi]


def crop_scale_of(args) -> tuple[float, float] | None:
    """The crop area range a namespace's ``crop_scale`` asks for: None (unset, or ``plan``: the plan's own crop)."""
    value = getattr(args, "crop_scale", None)
    return None if value is None or value == "plan" else (float(value[0]), float(value[1]))


def build_views(
    aug: int,
    plan: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    rgb_index: tuple[int, int, int] | None,
    p: Mapping[str, float] | None = None,
    crop_scale: tuple[float, float] | None = None,
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The two SimCLR views for ``--aug`` ``aug`` with augmentation plan ``plan`` (``--aug_p``).

    1: a = plain, b = plan, both from one shared random crop (scale 0.5-0.9);
    2: a = plain, b = plan; 3: a = its own random crop (scale 0.5-1, probability
    ``p["crop"]``, 0.8 by default) else a resize, b = plan; 4: both plan, from one shared
    random crop; 5: both plan, independent; 6: both plan, independent, asymmetric as in
    BYOL: view a always blurred and never solarised, view b blurred with probability 0.1
    and solarised (:class:`~datasets.transforms.Solarize`) with probability 0.2.
    ``crop_scale`` replaces the plan's crop in every PLAN view by an always-applied random
    resized crop of that area range (:func:`~datasets.transforms.build_plan`); the plain view
    and ``--aug 3``'s own crop of view a are unchanged.
    """
    if aug not in AUG_CODES:
        raise UserError(f"--aug {aug!r} is unknown; use one of {', '.join(map(str, AUG_CODES))}.")
    size = check_size(size)
    if aug == 6:
        if plan in PLAN_STEPS and not {"blur", "boxblur"} & set(PLAN_STEPS[plan]):
            raise UserError(f"--aug 6 sets the blur probability of each view, but --aug_p {plan} has no blur; "
                            "use a plan with blur such as S5")
        (blur_a, sol_a), (blur_b, sol_b) = ASYMMETRIC
        view_a = build_plan(plan, size, mean, std, rgb_index, {**(p or {}), "blur": blur_a}, solarize=sol_a,
                            crop_scale=crop_scale)
        view_b = build_plan(plan, size, mean, std, rgb_index, {**(p or {}), "blur": blur_b}, solarize=sol_b,
                            crop_scale=crop_scale)
        return TwoViews(aug, view_a, view_b, None)
    augmented = build_plan(plan, size, mean, std, rgb_index, p, crop_scale=crop_scale)
    if aug in (1, 2):
        view_a = plain(size, mean, std)
    elif aug == 3:
        view_a = _CropView(size, mean, std, merge_p(p)["crop"])
    else:
        view_a = augmented
    shared = SHARED_CROP_SCALE if aug in (1, 4) else None
    return TwoViews(aug, view_a, augmented, shared)


GLOBAL_CROP_SCALE = (0.4, 1.0)     # DINO's global crops
LOCAL_CROP_SCALE = (0.05, 0.4)     # DINO's local crops
LOCAL_CROP_FRACTION = 3 / 7        # local crop side / input side (96 / 224 in the paper)
# DINO (Caron et al. 2021, as BYOL): (blur p, solarize p) of global crop 1, global crop 2, the local crops
MULTICROP_BLUR_SOLARIZE = ((1.0, 0.0), (0.1, 0.2), (0.5, 0.0))


def local_crop_size(size: int, multiple: int = 1) -> int:
    """Side of a DINO local crop: 3/7 of the input side, rounded up (96 at 224, 28 at 64); with
    ``multiple`` > 1 (a ViT's patch) the multiple of it nearest to 3/7 of the side, at least one
    patch (96 at 224 for patches of 8 or 16; 24 / 32 at 64 px for patch 8 / 16)."""
    if multiple <= 1:
        return max(1, math.ceil(size * LOCAL_CROP_FRACTION - 1e-9))
    return multiple * max(1, math.floor(size * LOCAL_CROP_FRACTION / multiple + 0.5))


class MultiCrop:
    """DINO's views of one raw image: 2 global crops at the input size, then ``n_local`` local crops.

    Each crop is a random resized crop (always; scale 0.4-1 global, 0.05-0.4 local, the
    local ones at 3/7 of the side), followed by the S5 steps (rotation/flip, colour,
    grayscale with the default probabilities) and gaussian blur, normalised; blur and
    solarisation probabilities are the paper's (:data:`MULTICROP_BLUR_SOLARIZE`). Any band
    count: hue/saturation act on ``rgb_index`` only, solarisation per band after
    normalisation (:class:`~datasets.transforms.Solarize`). ``multiple``: the local side is a
    multiple of it (a ViT's patch, :func:`local_crop_size`).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 rgb_index: tuple[int, int, int] | None, n_local: int = 6,
                 global_scale: tuple[float, float] = GLOBAL_CROP_SCALE,
                 local_scale: tuple[float, float] = LOCAL_CROP_SCALE, multiple: int = 1) -> None:
        if n_local < 0:
            raise UserError(f"--local-crops {n_local} must be >= 0")
        size = check_size(size)
        self.size, self.local_size, self.n_local = size, local_crop_size(size, multiple), n_local
        probs = merge_p(None)
        norm = Normalize(mean, std)
        triplet = check_rgb_index(rgb_index, norm.bands)

        def plan(side: int, scale: tuple[float, float], blur: float, solarize: float) -> Plan:
            steps = [RandomResizedCrop(side, scale, 1.0), RotateFlip(probs["rotate"]), ColorJitter(probs["color"], triplet),
                     Grayscale(probs["gray"], norm.mean, norm.std), GaussianBlur(blur, side)]
            return Plan("multicrop", steps, norm, [Solarize(solarize)] if solarize > 0 else [])

        (b1, s1), (b2, s2), (bl, sl) = MULTICROP_BLUR_SOLARIZE
        self.global_views = (plan(size, global_scale, b1, s1), plan(size, global_scale, b2, s2))
        self.local_view = plan(self.local_size, local_scale, bl, sl)

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        """``2 + n_local`` normalised views: two ``C x size x size``, then ``C x local x local``."""
        return tuple(v(x) for v in self.global_views) + tuple(self.local_view(x) for _ in range(self.n_local))

    def __repr__(self) -> str:
        return f"MultiCrop(2 x {self.size}px + {self.n_local} x {self.local_size}px)"


def tta_views(x: Tensor) -> list[Tensor]:
    """The 8 dihedral variants of a batch ``N x C x H x W``: rotations by 0/90/180/270 degrees,
    each without and with a horizontal flip. The first is ``x`` itself."""
    if x.dim() != 4:
        raise UserError(f"tta_views takes a batch N x C x H x W, got shape {tuple(x.shape)}; add the batch dimension.")
    rotations = [x] + [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3)]
    return rotations + [torch.flip(r, dims=(-1,)) for r in rotations]
