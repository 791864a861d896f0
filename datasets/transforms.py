"""Per-sample augmentation plans for any band count (RGB, 13-band Sentinel-2, SAR, ...).

A plan takes one float32 tensor ``C x H x W`` in RAW units (Sentinel-2 digital numbers,
0..255 RGB, ...) and returns a NORMALISED float32 tensor ``C x size x size``. Every
step is written with tensor ops on all bands at once (no band loop, no pixel loop) and
draws its randomness from torch's global generator only, so ``torch.manual_seed`` (and
the per-worker seeding of ``DataLoader``) makes every plan reproducible.

The plan codes (``--aug_p``) and the step probabilities are the SPEC's "Augmentation
codes" table; :data:`PLAN_STEPS` is that table in code. Plans and steps are small
callable objects rather than closures so that they pickle into spawned workers.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import adjust_hue_image, adjust_saturation_image

from config.errors import UserError

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

CROP_RATIO = (3 / 4, 4 / 3)
FIXED_CROP_FRACTION = 0.8          # plan E: side of the random crop, as a fraction
NOISE_STD = 0.1                    # gaussian noise, in units of each band's std
LOCAL_NOISE_GAIN = 0.3             # local-variance noise: sigma = gain * local 3x3 std
SPECKLE_STD = 0.1                  # speckle: x * (1 + n), n ~ N(0, SPECKLE_STD^2)
SALT_PEPPER_FRACTION = 0.01        # share of pixels set to a band's min or max
BLUR_SIGMA = (0.1, 2.0)
S6_MARGIN = 30                     # plan S6 first resizes to size + 30


def _coin(p: float) -> bool:
    """True with probability ``p``; no draw is spent when the outcome is certain."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return bool(torch.rand(()) < p)


def _uniform(low: float, high: float) -> float:
    """One float uniform in [low, high) from torch's generator."""
    return low + (high - low) * float(torch.rand(()))


def _pad_mode(x: Tensor, pad: int) -> str:
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
        if _coin(self.p):
            x = random_crop(x, self.scale)
        return resize(x, self.size)


class FixedFractionCrop:
    """Plan E: with probability ``p`` a crop of ``fraction`` of each side at a random place, then resize."""

    def __init__(self, size: int, fraction: float, p: float) -> None:
        self.size, self.fraction, self.p = size, fraction, p

    def __call__(self, x: Tensor) -> Tensor:
        if _coin(self.p):
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
        if not _coin(self.p):
            return x
        g = int(torch.randint(1, 8, ()))
        k, flip = g % 4, g >= 4
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
        if flip:
            x = torch.flip(x, dims=(-1,))
        return x


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
        if not _coin(self.p):
            return x
        order = torch.randperm(4).tolist()
        b = _uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        c = _uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        s = _uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        h = _uniform(-self.hue, self.hue)
        return color_jitter(x, order, b, c, s, h, self.rgb_index)


def _box3(x: Tensor) -> Tensor:
    """3x3 mean filter on every band (reflect borders); shifted sums beat avg_pool2d ~8x on CPU."""
    p = F.pad(x[None], (1, 1, 1, 1), mode=_pad_mode(x, 1))[0]
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
        if not _coin(self.p):
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


class AffineJitter:
    """Plan A: with probability ``p`` shift (+-10 % of the side), zoom (0.9..1.8) and aspect (+-25 %) jitter.

    One ``grid_sample`` resamples all bands; borders are filled by reflection.
    """

    def __init__(self, p: float, shift: float = 0.1, scale: tuple[float, float] = (0.9, 1.8), aspect: float = 0.25) -> None:
        self.p, self.shift, self.scale, self.aspect = p, shift, scale, aspect

    def __call__(self, x: Tensor) -> Tensor:
        if not _coin(self.p):
            return x
        u = torch.rand(4).tolist()
        zoom = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        aspect = math.sqrt(1 - self.aspect + 2 * self.aspect * u[1])
        sx, sy = zoom * aspect, zoom / aspect
        tx, ty = (2 * u[2] - 1) * 2 * self.shift, (2 * u[3] - 1) * 2 * self.shift
        theta = torch.tensor([[[1 / sx, 0.0, tx], [0.0, 1 / sy, ty]]], dtype=x.dtype)
        grid = F.affine_grid(theta, [1, *x.shape[-3:]], align_corners=False)
        return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


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
        if not _coin(self.p):
            return x
        gray = ((x - self.mean) / self.std).mean(dim=-3, keepdim=True)
        return self.mean + self.std * gray


class BoxBlur:
    """Plan A: with probability ``p`` a 3x3 mean filter on every band."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        if not _coin(self.p):
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
        if not _coin(self.p):
            return x
        sigma = _uniform(*self.sigma)
        half = min(self.kernel_size // 2, max(1, math.ceil(4 * sigma)))
        offsets = torch.arange(-half, half + 1, dtype=x.dtype)
        w = torch.exp(-0.5 * (offsets / sigma) ** 2)
        w = w / w.sum()
        c = x.shape[-3]
        padded = F.pad(x[None], (half, half, half, half), mode=_pad_mode(x, half))
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
        if not _coin(self.p):
            return x
        return -x.abs()

    def __repr__(self) -> str:
        return f"Solarize(p={self.p})"


# ----------------------------------------------------------------------------- plans
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


def _check_rgb_index(rgb_index: Sequence[int] | None, bands: int) -> tuple[int, int, int] | None:
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
    triplet = _check_rgb_index(rgb_index, norm.bands)
    steps = [
        _make_step(kind, size, probs[STEP_P_KEY[kind]] if kind in STEP_P_KEY else 1.0, norm, triplet,
                   tuple(crop_scale) if crop_scale is not None else None)
        for kind in PLAN_STEPS[code]
    ]
    return Plan(code, steps, norm, [Solarize(solarize)] if solarize > 0 else [])
