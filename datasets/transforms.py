"""Band-agnostic image operations: the random draws, resizing, crops, the dihedral group, affine jitter
and the per-band normalisation (any band count: RGB, 13-band Sentinel-2, SAR, ...).

Every operation takes a float32 tensor ``C x H x W`` in RAW units (Sentinel-2 digital numbers, 0..255 RGB,
...), is written with tensor ops on all bands at once (no band loop, no pixel loop) and draws its randomness
from torch's global generator only, so ``torch.manual_seed`` (and the per-worker seeding of ``DataLoader``)
makes every view reproducible. The photometric steps (colour, noise, grey, blur, solarisation) are in
:mod:`datasets.photometric`; the ``--aug_p`` plans that chain them in :mod:`datasets.plans`. Steps are small
callable objects rather than closures so that they pickle into spawned workers.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from config.errors import UserError

CROP_RATIO = (3 / 4, 4 / 3)


def coin(p: float) -> bool:
    """True with probability ``p``; no draw is spent when the outcome is certain."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return bool(torch.rand(()) < p)


def uniform(low: float, high: float) -> float:
    """One float uniform in [low, high) from torch's generator."""
    return low + (high - low) * float(torch.rand(()))


def pad_mode(x: Tensor, pad: int) -> str:
    """Reflect padding (torchvision's choice for blur) unless the image is too small for it."""
    return "reflect" if min(x.shape[-2:]) > pad else "replicate"


def check_size(size: int) -> int:
    """Reject an output size that is not a positive integer."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"input size {size!r} is not a positive integer; set the dataset's INPUT_SIZE to e.g. 64 or 224.")
    return size


def resize(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear, antialiased resize of ``C x H x W`` to ``size`` (the plain view's resampler).

    Antialiasing only matters when shrinking; for pure upsampling the plain bilinear
    kernel gives the same values (to 1e-7) about a third faster.
    """
    hw = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == hw:
        return x
    shrink = x.shape[-2] > hw[0] or x.shape[-1] > hw[1]
    return F.interpolate(x[None], size=hw, mode="bilinear", antialias=shrink, align_corners=False)[0]


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float] = CROP_RATIO
) -> tuple[int, int, int, int]:
    """Top, left, height, width of a RandomResizedCrop box (torchvision's rule, 10 tries at once)."""
    area = height * width
    u = torch.rand(2, 10)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    ws = torch.sqrt(target_area * aspect).round().long()
    hs = torch.sqrt(target_area / aspect).round().long()
    ok = ((ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)).nonzero()
    if len(ok):
        k = int(ok[0, 0])
        h, w = int(hs[k]), int(ws[k])
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_crop(x: Tensor, scale: tuple[float, float], ratio: tuple[float, float] = CROP_RATIO) -> Tensor:
    """A RandomResizedCrop region of ``x`` (a view, not resized): used for shared crops."""
    top, left, h, w = random_resized_crop_box(x.shape[-2], x.shape[-1], scale, ratio)
    return x[..., top:top + h, left:left + w]


class Normalize:
    """Per-band ``(x - mean) / max(std, floor)``, ``floor = max(1e-3 * median(std), 1e-6)``.

    The floor keeps a near-constant band (Sentinel-2 B10, a dead SAR channel) from
    being divided by ~0, which would turn sensor noise into huge values.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() == 0 or mean_t.numel() != std_t.numel():
            raise UserError(
                f"band statistics have {mean_t.numel()} means and {std_t.numel()} stds; "
                "give one mean and one std per band in the dataset option module."
            )
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all()) or (std_t < 0).any():
            raise UserError(f"band statistics mean={list(mean)} std={list(std)} must be finite with std >= 0; fix MEAN/STD in the dataset option module.")
        floor = max(1e-3 * statistics.median(std_t.tolist()), 1e-6)
        self.mean = mean_t
        self.std = std_t.clamp(min=floor)
        self._mean = self.mean[:, None, None]
        self._inv_std = (1.0 / self.std)[:, None, None]

    @property
    def bands(self) -> int:
        """Number of bands these statistics describe."""
        return self.mean.numel()

    def check(self, x: Tensor) -> None:
        """Reject an image whose band count differs from the statistics' (a --dtype mismatch)."""
        if x.dim() < 3 or x.shape[-3] != self.bands:
            raise UserError(
                f"image of shape {tuple(x.shape)} does not have the {self.bands} bands the normalisation "
                "statistics describe; make --dtype match the bands the dataset's MEAN/STD list."
            )

    def __call__(self, x: Tensor) -> Tensor:
        """Normalise ``C x H x W`` or ``N x C x H x W`` (float32 out)."""
        self.check(x)
        return (x.float() - self._mean) * self._inv_std

    def __repr__(self) -> str:
        return f"Normalize(bands={self.bands})"


# ----------------------------------------------------------------------------- steps
class Resize:
    """Plain resize to ``size`` (always applied)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: Tensor) -> Tensor:
        return resize(x, self.size)


class RandomResizedCrop:
    """With probability ``p`` a scale/aspect crop resized to ``size``, else a plain resize."""

    def __init__(self, size: int, scale: tuple[float, float], p: float) -> None:
        self.size, self.scale, self.p = size, scale, p

    def __call__(self, x: Tensor) -> Tensor:
        if coin(self.p):
            x = random_crop(x, self.scale)
        return resize(x, self.size)


class FixedFractionCrop:
    """Plan E: with probability ``p`` a crop of ``fraction`` of each side at a random place, then resize."""

    def __init__(self, size: int, fraction: float, p: float) -> None:
        self.size, self.fraction, self.p = size, fraction, p

    def __call__(self, x: Tensor) -> Tensor:
        if coin(self.p):
            height, width = x.shape[-2:]
            h, w = max(1, round(height * self.fraction)), max(1, round(width * self.fraction))
            top = int(torch.randint(0, height - h + 1, ()))
            left = int(torch.randint(0, width - w + 1, ()))
            x = x[..., top:top + h, left:left + w]
        return resize(x, self.size)


class RotateFlip:
    """With probability ``p`` one of the 7 non-identity dihedral transforms (k*90 deg, optional h-flip).

    Drawing uniformly from the 7 non-identity elements is the "rotation k in 0..3 and a
    flip, forced to change when both came out identity" rule, so p = 1 always changes x.
    """

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        if not coin(self.p):
            return x
        g = int(torch.randint(1, 8, ()))
        k, flip = g % 4, g >= 4
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
        if flip:
            x = torch.flip(x, dims=(-1,))
        return x



class AffineJitter:
    """Plan A: with probability ``p`` shift (+-10 % of the side), zoom (0.9..1.8) and aspect (+-25 %) jitter.

    One ``grid_sample`` resamples all bands; borders are filled by reflection.
    """

    def __init__(self, p: float, shift: float = 0.1, scale: tuple[float, float] = (0.9, 1.8), aspect: float = 0.25) -> None:
        self.p, self.shift, self.scale, self.aspect = p, shift, scale, aspect

    def __call__(self, x: Tensor) -> Tensor:
        if not coin(self.p):
            return x
        u = torch.rand(4).tolist()
        zoom = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        aspect = math.sqrt(1 - self.aspect + 2 * self.aspect * u[1])
        sx, sy = zoom * aspect, zoom / aspect
        tx, ty = (2 * u[2] - 1) * 2 * self.shift, (2 * u[3] - 1) * 2 * self.shift
        theta = torch.tensor([[[1 / sx, 0.0, tx], [0.0, 1 / sy, ty]]], dtype=x.dtype)
        grid = F.affine_grid(theta, [1, *x.shape[-3:]], align_corners=False)
        return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
