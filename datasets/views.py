"""What a pretext sees: the two SimCLR views of ``--aug`` and the test-time dihedral views.

``build_views`` pairs the plain view and the ``--aug_p`` plan of :mod:`datasets.transforms`
as the SPEC's ``--aug`` table says; ``tta_views`` gives the 8 flips/rotations that
``--tta`` averages over.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from config.errors import UserError
from datasets.transforms import (
    AUG_CODES,
    Normalize,
    RandomResizedCrop,
    check_size,
    build_plan,
    merge_p,
    plain,
    random_crop,
)

SHARED_CROP_SCALE = (0.5, 0.9)     # --aug 1 and 4: the one crop both views start from
OWN_CROP_SCALE = (0.5, 1.0)        # --aug 3: view a's own random resized crop


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


def build_views(
    aug: int,
    plan: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    rgb_index: tuple[int, int, int] | None,
    p: Mapping[str, float] | None = None,
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The two SimCLR views for ``--aug`` ``aug`` with augmentation plan ``plan`` (``--aug_p``).

    1: a = plain, b = plan, both from one shared random crop (scale 0.5-0.9);
    2: a = plain, b = plan; 3: a = its own random crop (scale 0.5-1, probability
    ``p["crop"]``, 0.8 by default) else a resize, b = plan; 4: both plan, from one shared
    random crop; 5: both plan, independent.
    """
    if aug not in AUG_CODES:
        raise UserError(f"--aug {aug!r} is unknown; use one of {', '.join(map(str, AUG_CODES))}.")
    size = check_size(size)
    augmented = build_plan(plan, size, mean, std, rgb_index, p)
    if aug in (1, 2):
        view_a = plain(size, mean, std)
    elif aug == 3:
        view_a = _CropView(size, mean, std, merge_p(p)["crop"])
    else:
        view_a = augmented
    shared = SHARED_CROP_SCALE if aug in (1, 4) else None
    return TwoViews(aug, view_a, augmented, shared)


def tta_views(x: Tensor) -> list[Tensor]:
    """The 8 dihedral variants of a batch ``N x C x H x W``: rotations by 0/90/180/270 degrees,
    each without and with a horizontal flip. The first is ``x`` itself."""
    if x.dim() != 4:
        raise UserError(f"tta_views takes a batch N x C x H x W, got shape {tuple(x.shape)}; add the batch dimension.")
    rotations = [x] + [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3)]
    return rotations + [torch.flip(r, dims=(-1,)) for r in rotations]
