"""The data view of the multi-task pretext (mode 920): one raw image -> the triplet and a label.

``MultiTaskView(x)`` returns ``(perturbed, image, copy, label)``, all normalised
``C x size x size`` float32 tensors for any band count, and ``label`` an int in 0..5:

* ``image``: a random resized crop of ``x`` (scale 0.5-1 of the area, probability 0.8,
  else a plain resize), normalised per band;
* ``perturbed``: ``image`` with one random square block (side 20-33 % of the image side)
  colour-jittered and flipped or rotated in place, i.e. the block's content is
  transformed and put back at the same place; every other pixel is unchanged;
* ``copy``: ``image`` under recognition transform ``label`` (:data:`RECOG_TRANSFORMS`),
  then a random crop of 70-95 % of the area resized back, and colour jitter and grayscale
  in random order, so that borders, interpolation or colour give no shortcut to the label.

All steps act on raw units (as every step of :mod:`datasets.transforms`), and the
per-band normalisation is applied last; since it is a per-pixel affine map, ``perturbed``
and ``image`` still differ only inside the block.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from datasets.photometric import ColorJitter, Grayscale
from datasets.plans import DEFAULT_P, check_rgb_index
from datasets.transforms import Normalize, RandomResizedCrop, RotateFlip, check_size

# Recognition classes, in label order. Rotations are counter-clockwise (torch.rot90).
RECOG_TRANSFORMS = ("hflip", "vflip", "rot0", "rot90", "rot180", "rot270")
BLOCK_FRACTION = (0.20, 0.33)      # side of the inpainting block, as a fraction of the image side
BASE_CROP_SCALE = (0.5, 1.0)       # the image: random resized crop (area fraction)
COPY_CROP_SCALE = (0.70, 0.95)     # the transformed copy: crop (area fraction), resized back


def apply_recog_transform(x: Tensor, label: int) -> Tensor:
    """Recognition transform ``RECOG_TRANSFORMS[label]`` on the last two dims of ``x``."""
    if label == 0:
        return torch.flip(x, dims=(-1,))
    if label == 1:
        return torch.flip(x, dims=(-2,))
    if 2 <= label <= 5:
        k = label - 2
        return torch.rot90(x, k, dims=(-2, -1)) if k else x
    raise ValueError(f"recognition label {label} is outside 0..{len(RECOG_TRANSFORMS) - 1}")


def block_side_range(size: int) -> tuple[int, int]:
    """Smallest and largest inpainting block side for a ``size x size`` image (20-33 %, at least 1 px)."""
    lo = max(1, math.ceil(BLOCK_FRACTION[0] * size))
    hi = max(lo, math.floor(BLOCK_FRACTION[1] * size))
    return lo, hi


class MultiTaskView:
    """Raw ``C x H x W`` image -> ``(perturbed, image, copy, label)`` (see the module docstring).

    Args:
        size: output side (the dataset's input size).
        mean, std: per-band statistics in raw units (one per band).
        rgb_index: positions of R, G, B for hue/saturation (None: per-band ops only).
        base_crop_p: probability of the image's random resized crop (else a plain resize).
        copy_crop_p, color_p, gray_p: probabilities of the copy's crop, colour jitter and
            grayscale (0 switches a step off; the tests use that to check the label).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 rgb_index: tuple[int, int, int] | None, base_crop_p: float = DEFAULT_P["crop"],
                 copy_crop_p: float = 1.0, color_p: float = DEFAULT_P["color"],
                 gray_p: float = DEFAULT_P["gray"]) -> None:
        self.size = check_size(size)
        self.normalize = Normalize(mean, std)
        rgb = check_rgb_index(rgb_index, self.normalize.bands)
        self.base = RandomResizedCrop(self.size, BASE_CROP_SCALE, base_crop_p)
        self.block_jitter = ColorJitter(1.0, rgb)
        self.block_geometry = RotateFlip(1.0)
        self.copy_crop = RandomResizedCrop(self.size, COPY_CROP_SCALE, copy_crop_p)
        self.copy_color = ColorJitter(color_p, rgb)
        self.copy_gray = Grayscale(gray_p, self.normalize.mean, self.normalize.std)

    def perturb(self, img: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """``img`` with one random square block colour-jittered and flipped/rotated in place.

        Returns the new tensor and the block as ``(top, left, side)``; ``img`` is not modified.
        """
        height, width = img.shape[-2:]
        lo, hi = block_side_range(min(height, width))
        side = int(torch.randint(lo, hi + 1, ()))
        top = int(torch.randint(0, height - side + 1, ()))
        left = int(torch.randint(0, width - side + 1, ()))
        block = img[..., top:top + side, left:left + side]
        out = img.clone()
        out[..., top:top + side, left:left + side] = self.block_geometry(self.block_jitter(block))
        return out, (top, left, side)

    def transformed_copy(self, img: Tensor, label: int) -> Tensor:
        """Recognition transform ``label``, crop resized back, then colour jitter and grayscale in random order."""
        x = self.copy_crop(apply_recog_transform(img, label))
        steps = (self.copy_color, self.copy_gray) if bool(torch.rand(()) < 0.5) else (self.copy_gray, self.copy_color)
        for step in steps:
            x = step(x)
        return x

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """The triplet and the recognition label of one raw ``C x H x W`` image."""
        self.normalize.check(x)
        img = self.base(x.float())
        perturbed, _ = self.perturb(img)
        label = int(torch.randint(0, len(RECOG_TRANSFORMS), ()))
        copy = self.transformed_copy(img, label)
        return self.normalize(perturbed), self.normalize(img), self.normalize(copy), label

    def __repr__(self) -> str:
        return f"MultiTaskView(size={self.size}, bands={self.normalize.bands})"
