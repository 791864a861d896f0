"""The batched on-device augmentation against the per-image CPU path: the same parameter
distributions (KS and frequency tests, fixed seeds) and, for given parameters, the same pixels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kstest, ks_2samp

from config.errors import UserError
from datasets import gpu_aug as G
from datasets import photometric as P
from datasets import transforms as T
from datasets.views import build_views

MEAN, STD = [100.0, 110.0, 120.0, 900.0], [50.0, 45.0, 40.0, 300.0]
RGB = (0, 1, 2)


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("h,w,scale", [(150, 150, (0.5, 1.0)), (64, 64, (0.4, 1.0)), (90, 160, (0.5, 0.9))])
def test_crop_boxes_have_the_cpu_distribution(h, w, scale):
    n = 3000
    torch.manual_seed(1)
    cpu = np.array([T.random_resized_crop_box(h, w, scale) for _ in range(n)], dtype=float)
    hh, ww = torch.full((n,), float(h)), torch.full((n,), float(w))
    # float64 on both sides: a float32 log(4/3) would not tie with the float64 one and KS would see a shift
    top, left, bh, bw = (t.double().numpy() for t in G.resized_crop_boxes(hh, ww, scale, gen(2)))
    assert ((bh >= 1) & (bh <= h) & (bw >= 1) & (bw <= w) & (top >= 0) & (top + bh <= h) & (left + bw <= w)).all()
    assert (bh == np.round(bh)).all() and (top == np.round(top)).all()
    for gpu_v, cpu_v in [(bh * bw / (h * w), cpu[:, 2] * cpu[:, 3] / (h * w)),      # scale
                         (np.log(bw / bh), np.log(cpu[:, 3] / cpu[:, 2])),          # aspect
                         (top / (h - bh + 1), cpu[:, 0] / (h - cpu[:, 2] + 1)),     # position
                         (left / (w - bw + 1), cpu[:, 1] / (w - cpu[:, 3] + 1))]:
        assert ks_2samp(gpu_v, cpu_v).pvalue > 1e-4      # 12 comparisons in this test: family-wise ~1e-3


def test_crop_fallback_is_the_centred_box():
    """A 10 x 200 strip: no try fits the aspect range, both paths take the same centred box."""
    torch.manual_seed(0)
    expect = T.random_resized_crop_box(10, 200, (0.5, 1.0))
    out = G.resized_crop_boxes(torch.tensor([10.0]), torch.tensor([200.0]), (0.5, 1.0), gen())
    assert tuple(int(t.item()) for t in out) == expect


def test_dihedral_matches_the_cpu_numbering():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(1, 2, 5, 5)
    for code in range(8):
        k, flip = code % 4, code >= 4
        ref = torch.rot90(x, k, dims=(-2, -1)) if k else x
        ref = torch.flip(ref, dims=(-1,)) if flip else ref
        assert torch.equal(G.dihedral(x, torch.tensor([code])), ref)


def test_rotate_flip_frequencies():
    """Plan D without crop, p rotate 0.5: identity half the time, each of the 7 others 1/14."""
    n, size = 2800, 4
    x = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size).repeat(n, 4, 1, 1) * 10 + 100
    plan = G.BatchPlan("D", size, MEAN, STD, RGB, {"crop": 0.0, "rotate": 0.5})
    out = plan(x, G.Box.whole(n, size, size, x.device), gen(3)) * torch.tensor(STD).view(1, -1, 1, 1) \
        + torch.tensor(MEAN).view(1, -1, 1, 1)
    variants = torch.stack([G.dihedral(x[:1], torch.tensor([c]))[0] for c in range(8)])
    found = torch.stack([(out - v).abs().amax(dim=(1, 2, 3)) < 1e-3 for v in variants], dim=1)
    assert (found.sum(1) == 1).all()
    counts = found.sum(0).numpy()
    expect = np.array([0.5] + [0.5 / 7] * 7) * n
    assert (np.abs(counts - expect) < 4 * np.sqrt(expect)).all(), counts


def test_brightness_factor_distribution_and_band_rule():
    """Colour jitter on constant images: contrast, hue and saturation leave them alone (no RGB
    triplet), so out/in is the brightness factor: one per image, equal on every band, U(0.6, 1.4)."""
    n = 2000
    x = torch.tensor(MEAN).view(1, -1, 1, 1).repeat(n, 1, 6, 6)
    plan = G.BatchPlan("S1", 6, MEAN, STD, None, {"color": 1.0})
    out = plan(x, G.Box.whole(n, 6, 6, x.device), gen(4)) * torch.tensor(STD).view(1, -1, 1, 1) \
        + torch.tensor(MEAN).view(1, -1, 1, 1)
    factor = (out / x)[:, :, 0, 0]
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), rtol=1e-5)      # one factor for every band
    assert kstest(factor[:, 0].numpy(), "uniform", args=(0.6, 0.8)).pvalue > 1e-3
    torch.manual_seed(5)
    cpu = P.ColorJitter(1.0, None)
    cpu_f = np.array([cpu(x[0])[0, 0, 0].item() / MEAN[0] for _ in range(n)])
    assert ks_2samp(factor[:, 0].numpy(), cpu_f).pvalue > 1e-3


def test_colour_jitter_equals_the_cpu_ops_for_given_factors():
    torch.manual_seed(6)
    n = 6
    x = torch.rand(n, 4, 9, 9) * 200 + 20
    order = torch.stack([torch.randperm(4) for _ in range(n)])
    b, c, s = (0.6 + 0.8 * torch.rand(n) for _ in range(3))
    h = -0.1 + 0.2 * torch.rand(n)
    out = G.color_jitter(x, order, b, c, s, h, RGB)
    for i in range(n):
        ref = P.color_jitter(x[i], order[i].tolist(), b[i].item(), c[i].item(), s[i].item(), h[i].item(), RGB)
        assert torch.allclose(out[i], ref, atol=1e-3 * ref.abs().max().item()), i
    assert torch.equal(out[:, 3], G.color_jitter(x, order, b, c, s, h, None)[:, 3])   # band 4 is not RGB


def test_blur_equals_the_cpu_blur_for_given_sigma():
    x = torch.rand(3, 4, 32, 32) * 100
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = G.gaussian_blur(x, sigma, P.blur_kernel_size(32))
    step = P.GaussianBlur(1.0, 32)
    for i, s_ in enumerate(sigma.tolist()):
        step.sigma = (s_, s_)
        assert torch.allclose(out[i], step(x[i]), atol=1e-3 * 100), i


def test_grayscale_frequency_and_rule():
    n = 2000
    x = torch.rand(n, 4, 5, 5) * torch.tensor(STD).view(1, -1, 1, 1) + torch.tensor(MEAN).view(1, -1, 1, 1)
    plan = G.BatchPlan("S2", 5, MEAN, STD, RGB, {"color": 0.0, "gray": 0.2, "blur": 0.0})
    out = plan(x, G.Box.whole(n, 5, 5, x.device), gen(7))
    gray = (out - out.mean(dim=1, keepdim=True)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert abs(gray.float().mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    ref = ((x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)).mean(dim=1)
    assert torch.allclose(out[gray][:, 0], ref[gray], atol=1e-5)


def test_resize_and_whole_view_match_the_cpu_resample():
    """No crop: the batched view of the whole image is the CPU path's resize: identical at equal size,
    close when shrinking a natural (smooth) image. The kernels differ slightly: roi_align averages
    bilinear samples over each output pixel's footprint (a box), the CPU resize uses a triangle."""
    low = torch.rand(2, 4, 6, 6, generator=gen(12))
    x = torch.nn.functional.interpolate(low, size=32, mode="bicubic", align_corners=False) * 100 + 50
    same = G.sample(x, G.Box.whole(2, 32, 32, x.device), 32)
    assert torch.allclose(same, x, atol=1e-4)
    half = G.sample(x, G.Box.whole(2, 32, 32, x.device), 16)
    ref = torch.stack([T.resize(xi, 16) for xi in x])
    assert (half - ref).abs().mean() < 0.015 * 100 and (half - ref).abs().max() < 0.08 * 100     # range ~100


@pytest.mark.parametrize("aug,plan", [(5, "S5"), (1, "C"), (3, "S6")])
def test_views_have_the_cpu_moments(aug, plan):
    """Whole view pipelines: per-band mean and std of the normalised views agree with the CPU path's."""
    n = 400
    low = torch.rand(n, 4, 6, 6, generator=gen(8))
    x = torch.nn.functional.interpolate(low, size=40, mode="bilinear") * torch.tensor(STD).view(1, -1, 1, 1) * 3 \
        + torch.tensor(MEAN).view(1, -1, 1, 1) - torch.tensor(STD).view(1, -1, 1, 1)
    views = G.BatchViews(aug, plan, 24, MEAN, STD, RGB)
    views.generator = gen(9)
    ga, gb = views(x)
    torch.manual_seed(10)
    cpu = build_views(aug, plan, 24, MEAN, STD, RGB)
    pairs = [cpu(xi) for xi in x]
    ca, cb = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    for g_, c_ in ((ga, ca), (gb, cb)):
        assert g_.shape == c_.shape
        # per image and band: mean and std of the view; compare their averages within 4 standard errors
        for stat in (lambda v: v.mean(dim=(2, 3)), lambda v: v.std(dim=(2, 3))):
            a_, b_ = stat(g_).double(), stat(c_).double()
            se = (a_.var(dim=0) / n + b_.var(dim=0) / n).sqrt()
            assert ((a_.mean(0) - b_.mean(0)).abs() < 4 * se + 1e-6).all(), (a_.mean(0), b_.mean(0), se)


def test_same_generator_seed_same_views_and_unsupported_plan():
    x = torch.rand(4, 4, 30, 30) * 100
    v = G.BatchViews(5, "S5", 16, MEAN, STD, RGB)
    v.seed(torch.device("cpu"), 11)
    a1, b1 = v(x)
    v.seed(torch.device("cpu"), 11)
    a2, b2 = v(x)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and not torch.equal(a1, b1)
    with pytest.raises(UserError, match="--gpu-aug does not implement plan A"):
        G.BatchViews(5, "A", 16, MEAN, STD, RGB)


def test_crop_scale_makes_every_device_view_a_crop_of_that_range():
    """As the CPU path (datasets.transforms.build_plan): --crop-scale replaces the plan's crop by one applied
    to every view, with that area range; a plan without a crop refuses it."""
    n = 2000
    plan = G.BatchPlan("S5", 32, MEAN, STD, RGB, crop_scale=(0.2, 1.0))
    assert ("crop", 1.0) in plan.steps and plan.crop_scale == (0.2, 1.0)
    whole = G.Box.whole(n, 96, 96, "cpu")
    box = plan.geometry(whole, gen(3))
    h, w = box.extent()
    area = (h * w) / 96**2
    assert area.min() >= 0.2 - 0.02 and area.max() <= 1.0
    assert (area > 0.995).float().mean() < 0.03                 # never the plan's 20 % of uncropped views
    own = G.BatchPlan("S5", 32, MEAN, STD, RGB).geometry(whole, gen(3))
    oh, ow = own.extent()
    assert 0.15 < ((oh * ow) / 96**2 > 0.995).float().mean() < 0.25
    views = G.BatchViews(5, "S5", 32, MEAN, STD, RGB, crop_scale=(0.2, 1.0))
    assert views.plan.crop_scale == (0.2, 1.0)
    with pytest.raises(UserError, match="--crop-scale replaces the crop step .* S2 has none"):
        G.BatchPlan("S2", 32, MEAN, STD, RGB, crop_scale=(0.2, 1.0))
