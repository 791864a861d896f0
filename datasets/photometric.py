"""Photometric steps for any band count: colour jitter (with the band rules), noise, grey, blur, solarisation.

Like :mod:`datasets.transforms`, each step takes one float32 ``C x H x W`` image in raw units (Solarize:
normalised values), works on all bands at once and draws from torch's global generator only. Hue and
saturation touch only the RGB triplet a ``--dtype`` names; grey is the mean over STANDARDISED bands.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import (
    adjust_hue_image,
    adjust_saturation_image,
)

from datasets.transforms import coin, pad_mode, uniform

NOISE_STD = 0.1                    # gaussian noise, in units of each band's std
LOCAL_NOISE_GAIN = 0.3             # local-variance noise: sigma = gain * local 3x3 std
SPECKLE_STD = 0.1                  # speckle: x * (1 + n), n ~ N(0, SPECKLE_STD^2)
SALT_PEPPER_FRACTION = 0.01        # share of pixels set to a band's min or max
BLUR_SIGMA = (0.1, 2.0)


def _hue_saturation(rgb: Tensor, hue: float | None, saturation: float | None) -> Tensor:
    """Hue/saturation on a raw-unit RGB triplet: map to [0, 1], use torchvision, map back.

    Both ops are invariant to a common scale, so dividing by the triplet's range keeps
    them valid for 0..255, 0..10000 or any other raw unit.
    """
    lo = torch.clamp(rgb.min(), max=0.0)
    span = rgb.max() - lo + 1e-6
    unit = (rgb - lo) / span
    if hue is not None:
        unit = adjust_hue_image(unit, hue)
    if saturation is not None:
        unit = adjust_saturation_image(unit, saturation)
    return unit * span + lo


def color_jitter(
    x: Tensor,
    order: Sequence[int],
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    rgb_index: tuple[int, int, int] | None,
) -> Tensor:
    """Apply the four colour ops with the given factors in ``order`` (0 brightness, 1 contrast,
    2 saturation, 3 hue, torchvision's numbering).

    Brightness multiplies every band by one factor; contrast blends each band with its
    own spatial mean; saturation and hue touch only the bands ``rgb_index`` (skipped
    when it is None). No clamping: raw units have no common upper bound.
    """
    idx = None if rgb_index is None else torch.tensor(rgb_index)
    for op in order:
        if op == 0:
            x = x * brightness
        elif op == 1:
            mean = x.mean(dim=(-2, -1), keepdim=True)
            x = torch.lerp(mean, x, contrast)
        elif idx is not None:
            rgb = x.index_select(-3, idx)
            rgb = _hue_saturation(rgb, hue if op == 3 else None, saturation if op == 2 else None)
            x = x.index_copy(-3, idx, rgb)
    return x


class ColorJitter:
    """With probability ``p``: brightness, contrast, saturation, hue (ColorJitter's ranges and random order)."""

    def __init__(
        self,
        p: float,
        rgb_index: tuple[int, int, int] | None,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
    ) -> None:
        self.p, self.rgb_index = p, rgb_index
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, x: Tensor) -> Tensor:
        if not coin(self.p):
            return x
        order = torch.randperm(4).tolist()
        b = uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        c = uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        s = uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        h = uniform(-self.hue, self.hue)
        return color_jitter(x, order, b, c, s, h, self.rgb_index)


def _box3(x: Tensor) -> Tensor:
    """3x3 mean filter on every band (reflect borders); shifted sums beat avg_pool2d ~8x on CPU."""
    p = F.pad(x[None], (1, 1, 1, 1), mode=pad_mode(x, 1))[0]
    rows = p[..., :-2] + p[..., 1:-1] + p[..., 2:]
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) * (1.0 / 9.0)


def _local_std(x: Tensor) -> Tensor:
    """Per-band standard deviation over each pixel's 3x3 neighbourhood (centred first for float32 accuracy)."""
    centred = x - x.mean(dim=(-2, -1), keepdim=True)
    m1 = _box3(centred)
    return (_box3(centred * centred) - m1 * m1).clamp(min=0).sqrt()


class Noise:
    """With probability ``p`` one noise kind, drawn uniformly from ``kinds``.

    Amplitudes follow each band's scale (``band_std`` is the dataset std, so gaussian
    noise is ``NOISE_STD`` in normalised units whatever the raw unit).
    """

    KINDS = ("gaussian", "local", "saltpepper", "speckle")

    def __init__(self, p: float, kinds: Sequence[str], band_std: Tensor) -> None:
        self.p, self.kinds = p, tuple(kinds)
        self.band_std = band_std[:, None, None]

    def __call__(self, x: Tensor) -> Tensor:
        if not coin(self.p):
            return x
        kind = self.kinds[int(torch.randint(0, len(self.kinds), ()))]
        if kind == "gaussian":
            return x + torch.randn_like(x) * (NOISE_STD * self.band_std)
        if kind == "local":
            return x + torch.randn_like(x) * (LOCAL_NOISE_GAIN * _local_std(x))
        if kind == "speckle":
            return x * (1 + SPECKLE_STD * torch.randn_like(x))
        u = torch.rand(x.shape[-2:])
        salt = u < SALT_PEPPER_FRACTION / 2
        pepper = (u >= SALT_PEPPER_FRACTION / 2) & (u < SALT_PEPPER_FRACTION)
        x = torch.where(salt, x.amax(dim=(-2, -1), keepdim=True), x)
        return torch.where(pepper, x.amin(dim=(-2, -1), keepdim=True), x)



class Grayscale:
    """With probability ``p`` every band becomes the per-pixel mean over bands.

    The mean is taken over STANDARDISED bands and written back in each band's raw unit,
    so after normalisation all bands are equal. A raw-unit mean would put e.g. ~1500 DN
    into Sentinel-2 B10 (mean 12, std 5): a 300-sigma outlier after normalisation.
    """

    def __init__(self, p: float, mean: Tensor, std: Tensor) -> None:
        self.p = p
        self.mean, self.std = mean[:, None, None], std[:, None, None]

    def __call__(self, x: Tensor) -> Tensor:
        if not coin(self.p):
            return x
        gray = ((x - self.mean) / self.std).mean(dim=-3, keepdim=True)
        return self.mean + self.std * gray


class BoxBlur:
    """Plan A: with probability ``p`` a 3x3 mean filter on every band."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        if not coin(self.p):
            return x
        return _box3(x)


def blur_kernel_size(size: int) -> int:
    """Gaussian kernel side: about 10 % of the image side, odd, at least 3 (SimCLR's rule)."""
    k = int(0.1 * size)
    return max(3, k + 1 if k % 2 == 0 else k)


class GaussianBlur:
    """With probability ``p`` a separable gaussian blur, sigma uniform in [0.1, 2.0], on every band.

    The kernel spans about 10 % of the side (:func:`blur_kernel_size`) but taps further
    than 4 sigma from the centre (weight < 3e-4 of the peak) are dropped: same image to
    ~1e-4 relative, up to 3x less work for small sigmas at 224 px.
    """

    def __init__(self, p: float, size: int, sigma: tuple[float, float] = BLUR_SIGMA) -> None:
        self.p, self.sigma = p, sigma
        self.kernel_size = blur_kernel_size(size)

    def __call__(self, x: Tensor) -> Tensor:
        if not coin(self.p):
            return x
        sigma = uniform(*self.sigma)
        half = min(self.kernel_size // 2, max(1, math.ceil(4 * sigma)))
        offsets = torch.arange(-half, half + 1, dtype=x.dtype)
        w = torch.exp(-0.5 * (offsets / sigma) ** 2)
        w = w / w.sum()
        c = x.shape[-3]
        padded = F.pad(x[None], (half, half, half, half), mode=pad_mode(x, half))
        out = F.conv2d(padded, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(out, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


class Solarize:
    """With probability ``p``, solarisation for any band count, on NORMALISED values.

    Classic solarisation inverts the pixels above mid-range of a [0, 1] image
    (``x -> 1 - x`` for ``x >= 0.5``): a reflection about the threshold. Raw
    multispectral units have no common range, so here the threshold is each band's
    dataset mean, i.e. 0 after the per-band normalisation, and every band is reflected
    about it: ``x -> -x`` where ``x >= 0``, i.e. ``x -> -|x|``. For an RGB band whose
    mean sits near mid-range this is the classic operation. Applied after
    :class:`Normalize` (:class:`Plan` takes it as ``post``).
    """

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        if not coin(self.p):
            return x
        return -x.abs()

    def __repr__(self) -> str:
        return f"Solarize(p={self.p})"
