"""Batched, on-device augmentation: the ``--aug``/``--aug_p`` views of a whole batch at once.

The CPU path (:mod:`datasets.transforms`, :mod:`datasets.views`) augments one image at a time
in the DataLoader workers; at 224 px a 16-core node feeds about 1,000 images/s that way, less
than one modern GPU trains. With ``--gpu-aug`` the workers only decode, and this module makes
the two views of the whole batch on the device, with the SAME distributions:

* geometry: every view is a box per image in the raw image's coordinates (the shared crop of
  ``--aug 1/4``, then the plan's random resized crop, fixed-fraction crop or plain resize,
  drawn with :func:`datasets.transforms.random_resized_crop_box`'s rule, vectorised), resampled
  to ``size x size`` in one ``roi_align`` call (bilinear, averaged over ~1 sample per source
  pixel: antialiased when shrinking, as the CPU path's resize);
* one of the 7 non-identity dihedral transforms with probability p (rotate/flip);
* colour jitter in a random order per image: brightness (one factor, every band), contrast
  (each band towards its own mean), saturation and hue on the RGB triplet only;
* gaussian / salt & pepper noise (plan B); grayscale = every band replaced by the mean of the
  standardised bands; gaussian blur with sigma uniform in [0.1, 2];
* per-band normalisation.

Randomness comes from one ``torch.Generator`` on the device (seeded per step by the loop), and
no step reads a value back to the host: the whole view is a fixed sequence of batched kernels.
Plan A (local-variance/speckle noise, affine jitter) exists on the CPU path only.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from config.errors import UserError
from datasets.photometric import BLUR_SIGMA, NOISE_STD, SALT_PEPPER_FRACTION, blur_kernel_size
from datasets.plans import (CROP_KINDS, FIXED_CROP_FRACTION, PLAN_STEPS, S6_MARGIN, STEP_P_KEY, check_rgb_index,
                            merge_p)
from datasets.transforms import CROP_RATIO, Normalize, check_size
from datasets.views import OWN_CROP_SCALE, SHARED_CROP_SCALE

GEOMETRY = {"resize", "resize+30", "crop", "crop40", "fixedcrop"}
SUPPORTED = GEOMETRY | {"rotate", "color", "noise2", "gray", "blur", "boxblur"}
GPU_PLANS = tuple(code for code, steps in PLAN_STEPS.items() if set(steps) <= SUPPORTED)
GPU_AUGS = (1, 2, 3, 4, 5)   # --aug codes made here (6, BYOL's asymmetric pair, runs on the CPU path)
TRIES = 10                   # RandomResizedCrop's attempts before its central fallback


def _rand(n: int, g: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=g, device=device)


def _coins(n: int, p: float, g, device) -> Tensor:
    """Bool per image, True with probability ``p`` (no draw when certain, as the CPU path)."""
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    if p >= 1:
        return torch.ones(n, dtype=torch.bool, device=device)
    return _rand(n, g, device) < p


# ----------------------------------------------------------------------------- geometry (boxes)
def resized_crop_boxes(h: Tensor, w: Tensor, scale: tuple[float, float], g=None,
                       ratio: tuple[float, float] = CROP_RATIO) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per image (top, left, height, width) of a RandomResizedCrop of an ``h x w`` region (float tensors
    holding whole numbers): torchvision's rule, the first of 10 tries that fits, else the centre fallback."""
    n, dev = h.shape[0], h.device
    area = h * w
    u = torch.rand(n, 2, TRIES, generator=g, device=dev)
    target = area[:, None] * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    ws = torch.sqrt(target * aspect).round()
    hs = torch.sqrt(target / aspect).round()
    ok = (ws > 0) & (ws <= w[:, None]) & (hs > 0) & (hs <= h[:, None])
    first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)       # first True (0 when none)
    found = ok.any(dim=1)
    ch, cw = hs.gather(1, first)[:, 0], ws.gather(1, first)[:, 0]
    # the fallback: the largest centred box with an aspect inside ``ratio``
    in_ratio = w / h
    fw = torch.where(in_ratio < ratio[0], w, torch.where(in_ratio > ratio[1], (h * ratio[1]).round(), w))
    fh = torch.where(in_ratio < ratio[0], (w / ratio[0]).round(), h)
    ch, cw = torch.where(found, ch, fh), torch.where(found, cw, fw)
    v = torch.rand(n, 2, generator=g, device=dev)
    top = torch.where(found, torch.floor(v[:, 0] * (h - ch + 1)), torch.div(h - ch, 2, rounding_mode="floor"))
    left = torch.where(found, torch.floor(v[:, 1] * (w - cw + 1)), torch.div(w - cw, 2, rounding_mode="floor"))
    return top, left, ch, cw


class Box:
    """One region per image: float tensors ``top, left, h, w`` in raw-image pixels (whole numbers in
    the region's own pixel grid, scaled by ``unit`` raw pixels per region pixel after a resize)."""

    def __init__(self, top: Tensor, left: Tensor, h: Tensor, w: Tensor, unit_y: Tensor, unit_x: Tensor) -> None:
        self.top, self.left, self.h, self.w, self.unit_y, self.unit_x = top, left, h, w, unit_y, unit_x

    @classmethod
    def whole(cls, n: int, height: int, width: int, device) -> "Box":
        z = torch.zeros(n, device=device)
        return cls(z, z.clone(), z + height, z + width, z + 1, z + 1)

    def where(self, mask: Tensor, other: "Box") -> "Box":
        f = lambda a, b: torch.where(mask, a, b)  # noqa: E731
        return Box(f(self.top, other.top), f(self.left, other.left), f(self.h, other.h), f(self.w, other.w),
                   f(self.unit_y, other.unit_y), f(self.unit_x, other.unit_x))

    def sub(self, top: Tensor, left: Tensor, h: Tensor, w: Tensor) -> "Box":
        """The sub-box ``(top, left, h, w)`` given in this region's pixel grid."""
        return Box(self.top + top * self.unit_y, self.left + left * self.unit_x, h, w, self.unit_y, self.unit_x)

    def resized(self, size: int) -> "Box":
        """The same region seen as a ``size x size`` image (what a resize makes of it)."""
        return Box(self.top, self.left, self.h.new_full(self.h.shape, size), self.w.new_full(self.w.shape, size),
                   self.h * self.unit_y / size, self.w * self.unit_x / size)

    def extent(self) -> tuple[Tensor, Tensor]:
        """Height and width in raw pixels."""
        return self.h * self.unit_y, self.w * self.unit_x


def sample(x: Tensor, box: Box, size: int) -> Tensor:
    """Resample each image's box to ``size x size``: bilinear, about one sample per source pixel
    (an area average when shrinking: the antialiasing of the CPU path's resize)."""
    hh, ww = box.extent()
    n = x.shape[0]
    rois = torch.stack([torch.arange(n, device=x.device, dtype=x.dtype), box.left.to(x.dtype),
                        box.top.to(x.dtype), (box.left + ww).to(x.dtype), (box.top + hh).to(x.dtype)], dim=1)
    ratio = max(1, math.ceil(max(x.shape[-2:]) / size))      # a fixed count: no per-box host read
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=ratio, aligned=True)


# ----------------------------------------------------------------------------- pixel steps
def dihedral(x: Tensor, code: Tensor) -> Tensor:
    """Per image ``g`` in 0..7: rotate by ``(g % 4) * 90`` degrees, then h-flip when ``g >= 4``
    (:class:`datasets.transforms.RotateFlip`'s numbering); square images."""
    k = (code % 4)[:, None, None, None]
    out = x
    for r in (1, 2, 3):
        out = torch.where(k == r, torch.rot90(x, r, dims=(-2, -1)), out)
    return torch.where((code >= 4)[:, None, None, None], torch.flip(out, dims=(-1,)), out)


def _rgb_to_hsv(rgb: Tensor) -> Tensor:
    r, g, b = rgb.unbind(dim=-3)
    maxc, _ = rgb.max(dim=-3)
    minc, _ = rgb.min(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    h, s, v = hsv.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    mask = i[..., None, :, :] == torch.arange(6, device=i.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum("...ijk,...xijk->...xjk", mask.to(hsv.dtype), a4)


def hue_saturation(rgb: Tensor, hue: Tensor | None, saturation: Tensor | None) -> Tensor:
    """Per image hue shift / saturation factor on a raw-unit RGB batch ``N x 3 x H x W``, mapped to
    [0, 1] by each image's own range like :func:`datasets.transforms._hue_saturation` (torchvision's
    formulas: saturation blends with the ITU-R 601 gray and clamps; hue rotates in HSV)."""
    lo = torch.clamp(rgb.amin(dim=(-3, -2, -1), keepdim=True), max=0.0)
    span = rgb.amax(dim=(-3, -2, -1), keepdim=True) - lo + 1e-6
    unit = (rgb - lo) / span
    if hue is not None:
        hsv = _rgb_to_hsv(unit)
        h = torch.remainder(hsv[:, :1] + hue.view(-1, 1, 1, 1), 1.0)
        unit = _hsv_to_rgb(torch.cat([h, hsv[:, 1:]], dim=1))
    if saturation is not None:
        gray = (0.2989 * unit[:, 0] + 0.587 * unit[:, 1] + 0.114 * unit[:, 2]).unsqueeze(1)
        unit = (saturation.view(-1, 1, 1, 1) * unit + (1 - saturation.view(-1, 1, 1, 1)) * gray).clamp(0.0, 1.0)
    return unit * span + lo


def color_jitter(x: Tensor, order: Tensor, b: Tensor, c: Tensor, s: Tensor, h: Tensor,
                 rgb_index: tuple[int, int, int] | None) -> Tensor:
    """The four colour ops in each image's own ``order`` (N x 4, torchvision's numbering: 0 brightness,
    1 contrast, 2 saturation, 3 hue), with per-image factors; see :func:`datasets.transforms.color_jitter`."""
    idx = None if rgb_index is None else list(rgb_index)
    for slot in range(4):
        op = order[:, slot].view(-1, 1, 1, 1)
        out = torch.where(op == 0, x * b.view(-1, 1, 1, 1), x)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        out = torch.where(op == 1, torch.lerp(mean, x, c.view(-1, 1, 1, 1)), out)
        if idx is not None:
            rgb = x[:, idx]
            sat = hue_saturation(rgb, None, s)
            hue = hue_saturation(rgb, h, None)
            new = torch.where(op == 2, sat, torch.where(op == 3, hue, rgb))
            out = out.clone()
            out[:, idx] = torch.where((op == 2) | (op == 3), new, out[:, idx])
        x = out
    return x


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable gaussian blur with one sigma per image (reflect borders, kernel ``kernel_size``)."""
    n, c = x.shape[:2]
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    w = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    w = w / w.sum(dim=1, keepdim=True)
    w = w.repeat_interleave(c, dim=0)                          # (N*C) x K
    mode = "reflect" if min(x.shape[-2:]) > half else "replicate"
    y = F.pad(x.reshape(1, n * c, *x.shape[-2:]), (half, half, half, half), mode=mode)
    y = F.conv2d(y, w.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, w.view(n * c, 1, -1, 1), groups=n * c)
    return y.view_as(x)


def box_blur(x: Tensor) -> Tensor:
    """3x3 mean filter on every band (reflect borders)."""
    mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode=mode), 3, stride=1)


# ----------------------------------------------------------------------------- plans and views
class BatchPlan:
    """An ``--aug_p`` plan on a batch: boxes in, normalised ``N x C x size x size`` views out."""

    def __init__(self, code: str, size: int, mean: Sequence[float], std: Sequence[float],
                 rgb_index: tuple[int, int, int] | None, p: Mapping[str, float] | None = None,
                 crop_scale: tuple[float, float] | None = None) -> None:
        if code not in PLAN_STEPS:
            raise UserError(f"augmentation plan --aug_p {code!r} is unknown; use one of {', '.join(PLAN_STEPS)}.")
        missing = [s for s in PLAN_STEPS[code] if s not in SUPPORTED]
        if missing:
            raise UserError(f"--gpu-aug does not implement plan {code}'s step(s) {', '.join(missing)}; use one of "
                            f"{', '.join(GPU_PLANS)} or --no-gpu-aug (the CPU path has every plan)")
        self.code, self.size = code, check_size(size)
        self.normalize = Normalize(mean, std)
        self.rgb_index = check_rgb_index(rgb_index, self.normalize.bands)
        if crop_scale is not None and not set(CROP_KINDS) & set(PLAN_STEPS[code]):
            raise UserError(f"--crop-scale replaces the crop step of the --aug_p plan, but {code} has none; use a plan "
                            "with a crop (S3-S6, A-E) or --crop-scale plan")
        probs = merge_p(p)
        self.steps = [(kind, probs[STEP_P_KEY[kind]] if kind in STEP_P_KEY else 1.0) for kind in PLAN_STEPS[code]]
        if crop_scale is not None:        # as datasets.transforms.build_plan: an always-applied crop of that range
            self.steps = [("crop", 1.0) if kind in CROP_KINDS else (kind, q) for kind, q in self.steps]
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else None
        self.kernel = blur_kernel_size(size)

    def geometry(self, box: Box, g) -> Box:
        """Apply the plan's crop / resize steps to the region ``box`` (no pixels touched yet)."""
        n, dev = box.h.shape[0], box.h.device
        for kind, p in self.steps:
            if kind == "resize":
                box = box.resized(self.size)
            elif kind == "resize+30":
                box = box.resized(self.size + S6_MARGIN)
            elif kind in ("crop", "crop40"):
                scale = self.crop_scale or ((0.5, 1.0) if kind == "crop" else (0.4, 1.0))
                crop = box.sub(*resized_crop_boxes(box.h, box.w, scale, g))
                box = crop.where(_coins(n, p, g, dev), box)
            elif kind == "fixedcrop":
                fh = torch.clamp((box.h * FIXED_CROP_FRACTION).round(), min=1)
                fw = torch.clamp((box.w * FIXED_CROP_FRACTION).round(), min=1)
                v = torch.rand(n, 2, generator=g, device=dev)
                crop = box.sub(torch.floor(v[:, 0] * (box.h - fh + 1)), torch.floor(v[:, 1] * (box.w - fw + 1)), fh, fw)
                box = crop.where(_coins(n, p, g, dev), box)
        return box

    def pixels(self, x: Tensor, g) -> Tensor:
        """The plan's non-geometric steps on ``size x size`` raw-unit views, then the normalisation."""
        n, dev = x.shape[0], x.device
        norm_mean = self.normalize.mean.to(dev).view(1, -1, 1, 1)
        norm_std = self.normalize.std.to(dev).view(1, -1, 1, 1)
        for kind, p in self.steps:
            on = _coins(n, p, g, dev)
            m = on.view(-1, 1, 1, 1)
            if kind == "rotate":
                code = torch.randint(1, 8, (n,), generator=g, device=dev)
                x = torch.where(m, dihedral(x, code), x)
            elif kind == "color":
                order = torch.argsort(torch.rand(n, 4, generator=g, device=dev), dim=1)
                u = torch.rand(n, 4, generator=g, device=dev)
                b, c, s = 0.6 + 0.8 * u[:, 0], 0.6 + 0.8 * u[:, 1], 0.6 + 0.8 * u[:, 2]
                h = -0.1 + 0.2 * u[:, 3]
                x = torch.where(m, color_jitter(x, order, b, c, s, h, self.rgb_index), x)
            elif kind == "noise2":
                kind_gauss = torch.rand(n, generator=g, device=dev) < 0.5
                gauss = x + torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype) * (NOISE_STD * norm_std)
                u = torch.rand((n, 1, *x.shape[-2:]), generator=g, device=dev)
                salt = u < SALT_PEPPER_FRACTION / 2
                pepper = (u >= SALT_PEPPER_FRACTION / 2) & (u < SALT_PEPPER_FRACTION)
                sp = torch.where(salt, x.amax(dim=(-2, -1), keepdim=True), x)
                sp = torch.where(pepper, x.amin(dim=(-2, -1), keepdim=True), sp)
                x = torch.where(m, torch.where(kind_gauss.view(-1, 1, 1, 1), gauss, sp), x)
            elif kind == "gray":
                gray = ((x - norm_mean) / norm_std).mean(dim=1, keepdim=True)
                x = torch.where(m, norm_mean + norm_std * gray, x)
            elif kind == "blur":
                sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * torch.rand(n, generator=g, device=dev)
                x = torch.where(m, gaussian_blur(x, sigma, self.kernel), x)
            elif kind == "boxblur":
                x = torch.where(m, box_blur(x), x)
        return (x - norm_mean) / norm_std

    def __call__(self, x: Tensor, box: Box, g=None) -> Tensor:
        return self.pixels(sample(x, self.geometry(box, g), self.size), g)


class BatchViews:
    """The two views of ``--aug`` (:func:`datasets.views.build_views`) for a batch of raw images.

    ``views(x)`` takes ``N x C x H x W`` raw units (any dtype, on the device) and returns the pair
    of normalised ``N x C x size x size`` batches.
    """

    def __init__(self, aug: int, plan: str, size: int, mean: Sequence[float], std: Sequence[float],
                 rgb_index: tuple[int, int, int] | None, p: Mapping[str, float] | None = None,
                 crop_scale: tuple[float, float] | None = None) -> None:
        if aug not in GPU_AUGS:
            raise UserError(f"--gpu-aug makes the views of --aug {', '.join(map(str, GPU_AUGS))}, not --aug {aug!r}; "
                            "use --no-gpu-aug (the CPU path has every --aug)")
        self.aug, self.size = aug, check_size(size)
        self.plan = BatchPlan(plan, size, mean, std, rgb_index, p, crop_scale)
        self.crop_p = merge_p(p)["crop"]
        self.generator: torch.Generator | None = None

    def seed(self, device: torch.device, seed: int) -> None:
        """Draw from a generator on ``device`` seeded with ``seed`` (the loop reseeds it every step)."""
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        g = self.generator
        x = x.float()
        n, dev = x.shape[0], x.device
        if x.dim() != 4 or x.shape[1] != self.plan.normalize.bands:
            raise UserError(f"--gpu-aug takes a batch N x {self.plan.normalize.bands} x H x W, got {tuple(x.shape)}")
        whole = Box.whole(n, x.shape[-2], x.shape[-1], dev)
        norm = self.plan.normalize
        if self.aug in (1, 4):
            shared = whole.sub(*resized_crop_boxes(whole.h, whole.w, SHARED_CROP_SCALE, g))
        else:
            shared = whole
        if self.aug in (1, 2):
            a = (sample(x, shared, self.size) - norm.mean.to(dev).view(1, -1, 1, 1)) / norm.std.to(dev).view(1, -1, 1, 1)
        elif self.aug == 3:
            own = shared.sub(*resized_crop_boxes(shared.h, shared.w, OWN_CROP_SCALE, g))
            box = own.where(_coins(n, self.crop_p, g, dev), shared)
            a = (sample(x, box, self.size) - norm.mean.to(dev).view(1, -1, 1, 1)) / norm.std.to(dev).view(1, -1, 1, 1)
        else:
            a = self.plan(x, shared, g)
        return a, self.plan(x, shared, g)
