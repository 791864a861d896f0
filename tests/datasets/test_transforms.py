"""Tests for datasets/transforms.py: every plan on RGB and 13-band inputs, each step, normalisation."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import adjust_hue_image, adjust_saturation_image

from config.errors import UserError
from datasets import photometric as P
from datasets import plans
from datasets import transforms as T
from datasets.plans import DEFAULT_P, PLAN_CODES, build_plan, plain
from datasets.transforms import Normalize

SIZE = 64
# EuroSAT-like 13-band statistics (raw DN), B10 near-constant; and 0..255 RGB statistics.
MS_MEAN = (1354.4, 1118.2, 1042.9, 947.6, 1199.5, 1999.8, 2369.2, 2296.8, 732.1, 12.1, 1819.0, 1118.9, 2594.1)
MS_STD = (245.7, 333.0, 395.1, 593.8, 566.4, 861.2, 1086.6, 1118.0, 404.9, 4.8, 1002.6, 761.3, 1231.6)
RGB_MEAN = (123.7, 116.3, 103.5)
RGB_STD = (58.4, 57.1, 57.4)
ZERO_P = {key: 0.0 for key in DEFAULT_P}


def make_case(bands: int, seed: int = 0) -> tuple[torch.Tensor, tuple, tuple, tuple[int, int, int]]:
    """A raw-unit random image of ``bands`` x 80 x 80 with its statistics and RGB triplet."""
    g = torch.Generator().manual_seed(seed)
    if bands == 13:
        mean, std = torch.tensor(MS_MEAN), torch.tensor(MS_STD)
        x = (mean[:, None, None] + std[:, None, None] * torch.randn(13, 80, 80, generator=g)).clamp(min=0)
        return x, MS_MEAN, MS_STD, (3, 2, 1)
    return torch.rand(3, 80, 80, generator=g) * 255, RGB_MEAN, RGB_STD, (0, 1, 2)


def plan_keys(code: str) -> list[str]:
    """The DEFAULT_P keys the plan ``code`` draws with."""
    return sorted({plans.STEP_P_KEY[k] for k in plans.PLAN_STEPS[code] if k in plans.STEP_P_KEY})


def run(code: str, x: torch.Tensor, mean, std, rgb, p: dict | None, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return build_plan(code, SIZE, mean, std, rgb, p)(x)


def test_plan_table_matches_codes() -> None:
    assert tuple(plans.PLAN_STEPS) == PLAN_CODES
    assert plan_keys("S5") == ["blur", "color", "crop", "gray", "rotate"]
    assert plan_keys("A") == ["blur", "color", "crop", "gray", "noise"]
    assert plan_keys("C") == ["blur", "color", "crop", "gray", "rotate"]
    assert "noise" in plan_keys("B")


@pytest.mark.parametrize("bands", [3, 13])
@pytest.mark.parametrize("code", PLAN_CODES)
@pytest.mark.parametrize("force", [False, True])
def test_plan_output_shape_dtype_finite(code: str, bands: int, force: bool) -> None:
    x, mean, std, rgb = make_case(bands)
    p = {key: 1.0 for key in DEFAULT_P} if force else None
    for seed in range(3):
        y = run(code, x, mean, std, rgb, p, seed)
        assert y.shape == (bands, SIZE, SIZE)
        assert y.dtype == torch.float32
        assert torch.isfinite(y).all()
        # Normalised units: the bulk of the values is O(1), not raw DN.
        assert y.abs().median() < 5


@pytest.mark.parametrize("bands", [3, 13])
@pytest.mark.parametrize("code", PLAN_CODES)
def test_each_forced_step_changes_output(code: str, bands: int) -> None:
    x, mean, std, rgb = make_case(bands)
    base = run(code, x, mean, std, rgb, ZERO_P)
    for key in plan_keys(code):
        y = run(code, x, mean, std, rgb, {**ZERO_P, key: 1.0})
        assert (y - base).abs().max() > 1e-2, f"plan {code} step {key} at p=1 left the image unchanged"


@pytest.mark.parametrize("bands", [3, 13])
@pytest.mark.parametrize("code", [c for c in PLAN_CODES if c != "S6"])
def test_all_zero_probabilities_give_plain(code: str, bands: int) -> None:
    x, mean, std, rgb = make_case(bands)
    expected = plain(SIZE, mean, std)(x)
    assert torch.allclose(run(code, x, mean, std, rgb, ZERO_P), expected, atol=1e-6)


def test_s6_resizes_to_size_plus_30_first() -> None:
    x, mean, std, rgb = make_case(13)
    expected = Normalize(mean, std)(T.resize(T.resize(x, SIZE + 30), SIZE))
    assert torch.allclose(run("S6", x, mean, std, rgb, ZERO_P), expected, atol=1e-6)
    assert not torch.allclose(expected, plain(SIZE, mean, std)(x), atol=1e-3)


def test_plain_is_antialiased_bilinear_resize_and_normalise() -> None:
    x, mean, std, _ = make_case(13)
    # The floor 1e-3 * median(std) = 0.594 only guards against ~0: B10's real std 4.78 is kept.
    floored = torch.tensor(std).clamp(min=0.001 * sorted(std)[6])
    assert abs(float(floored[9]) - std[9]) < 1e-6
    for size in (SIZE, 100):
        ref = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        ref = (ref - torch.tensor(mean)[:, None, None]) / floored[:, None, None]
        assert torch.allclose(plain(size, mean, std)(x), ref, atol=1e-4)


@pytest.mark.parametrize("bands", [3, 13])
def test_grayscale_makes_all_bands_equal_to_the_band_mean(bands: int) -> None:
    x, mean, std, rgb = make_case(bands)
    y = run("S2", x, mean, std, rgb, {**ZERO_P, "gray": 1.0})
    expected = plain(SIZE, mean, std)(x).mean(dim=0)
    for band in y:
        assert torch.allclose(band, expected, atol=1e-4)
    # Blur after grayscale keeps the bands equal.
    y = run("S5", x, mean, std, rgb, {**ZERO_P, "gray": 1.0, "blur": 1.0, "color": 1.0})
    assert (y - y[0]).abs().max() < 1e-3


def test_normalize_matches_hand_values_and_floors_zero_std() -> None:
    norm = Normalize([1.0, 2.0], [2.0, 0.0])
    # floor = 1e-3 * median(2, 0) = 1e-3 * 1.0
    assert torch.allclose(norm.std, torch.tensor([2.0, 0.001]))
    assert torch.equal(norm.mean, torch.tensor([1.0, 2.0]))
    x = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[2.0, 2.0], [2.0, 2.5]]])
    expected = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 500.0]]])
    assert torch.allclose(norm(x), expected)
    assert torch.allclose(norm(x[None])[0], expected)
    assert torch.allclose(Normalize([0.0, 0.0], [0.0, 0.0]).std, torch.tensor([1e-6, 1e-6]))


@pytest.mark.parametrize("code", PLAN_CODES)
def test_constant_band_with_zero_std_stays_finite(code: str) -> None:
    x, mean, std, rgb = make_case(13)
    x[9] = 12.0
    std = tuple(0.0 if i == 9 else s for i, s in enumerate(std))
    for p in (None, {key: 1.0 for key in DEFAULT_P}):
        y = run(code, x, mean, std, rgb, p)
        assert torch.isfinite(y).all()
        assert y[9].abs().max() < 1e4


def test_hue_and_saturation_touch_only_the_rgb_bands() -> None:
    x, _, _, rgb = make_case(13)
    for order in ([2], [3], [2, 3]):
        y = P.color_jitter(x, order, 1.0, 1.0, 1.4, 0.08, rgb)
        others = [b for b in range(13) if b not in rgb]
        assert torch.equal(y[others], x[others])
        assert (y[list(rgb)] - x[list(rgb)]).abs().max() > 1.0
    # Without an RGB triplet hue and saturation are skipped.
    assert torch.equal(P.color_jitter(x, [2, 3], 1.0, 1.0, 1.4, 0.08, None), x)


def test_hue_saturation_is_torchvision_on_unit_range_and_scale_invariant() -> None:
    g = torch.Generator().manual_seed(3)
    rgb = torch.rand(3, 32, 32, generator=g)
    rgb[0, 0, 0] = 1.0
    ref = adjust_saturation_image(adjust_hue_image(rgb, 0.07), 0.7)
    out = P._hue_saturation(P._hue_saturation(rgb, 0.07, None), None, 0.7)
    assert torch.allclose(out, ref, atol=1e-4)
    assert torch.allclose(P._hue_saturation(rgb * 5000, 0.07, None), P._hue_saturation(rgb, 0.07, None) * 5000, rtol=1e-4, atol=0.05)


def test_brightness_and_contrast_formulas() -> None:
    x, _, _, rgb = make_case(13)
    assert torch.allclose(P.color_jitter(x, [0], 1.3, 1.0, 1.0, 0.0, rgb), x * 1.3)
    y = P.color_jitter(x, [1], 1.0, 0.5, 1.0, 0.0, rgb)
    band_mean = x.mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(y, band_mean + 0.5 * (x - band_mean), atol=1e-2)
    assert torch.allclose(y.mean(dim=(1, 2)), band_mean.flatten(), rtol=1e-5)


def test_color_jitter_factors_within_ranges() -> None:
    jitter = P.ColorJitter(1.0, (0, 1, 2))
    x = torch.full((3, 8, 8), 100.0)
    torch.manual_seed(0)
    for _ in range(50):
        y = jitter(x)
        # A uniform gray image: contrast/hue/saturation keep it, brightness scales by 0.6..1.4.
        assert 60.0 - 1e-3 <= float(y.mean()) <= 140.0 + 1e-3
        assert float(y.std()) < 1e-2


@pytest.mark.parametrize("kind", P.Noise.KINDS)
def test_each_noise_kind_scales_with_the_band(kind: str) -> None:
    x, mean, std, _ = make_case(13)
    x = x[:, :SIZE, :SIZE]
    norm = Normalize(mean, std)
    torch.manual_seed(0)
    y = P.Noise(1.0, (kind,), norm.std)(x)
    diff = norm(y) - norm(x)
    assert diff.abs().max() > 1e-2
    if kind == "gaussian":
        # 0.1 of each band's std: 0.1 in normalised units, whatever the raw unit.
        assert torch.allclose(diff.std(dim=(1, 2)), torch.full((13,), 0.1), atol=0.01)
    if kind == "saltpepper":
        changed = (y != x).any(dim=0)
        assert 0.003 < changed.float().mean() < 0.02
        lo, hi = x.amin(dim=(1, 2)), x.amax(dim=(1, 2))
        hit = y[:, changed]
        assert ((hit == lo[:, None]) | (hit == hi[:, None])).all()
    if kind == "speckle":
        assert torch.allclose(((y - x) / x.clamp(min=1)).std(), torch.tensor(0.1), atol=0.01)


def test_local_std_matches_unfold_reference() -> None:
    x = torch.rand(2, 10, 12) * 1000
    ref = F.unfold(F.pad(x[:, None], (1, 1, 1, 1), mode="reflect"), 3).std(dim=1, unbiased=False).view(2, 10, 12)
    assert torch.allclose(P._local_std(x), ref, rtol=1e-3, atol=1e-2)


def test_box_blur_is_3x3_mean() -> None:
    x = torch.rand(13, 20, 20)
    ref = F.avg_pool2d(x[None], 3, stride=1)[0]
    assert torch.allclose(P.BoxBlur(1.0)(x)[:, 1:-1, 1:-1], ref, atol=1e-6)


def test_gaussian_blur_kernel_size_and_effect() -> None:
    assert [P.blur_kernel_size(s) for s in (16, 64, 80, 224)] == [3, 7, 9, 23]
    blur = P.GaussianBlur(1.0, 64)
    assert torch.allclose(blur(torch.full((13, 64, 64), 7.0)), torch.full((13, 64, 64), 7.0))
    x = torch.rand(13, 64, 64)
    torch.manual_seed(0)
    y = blur(x)
    assert y.shape == x.shape
    assert y.var() < x.var()
    assert torch.allclose(y.mean(dim=(1, 2)), x.mean(dim=(1, 2)), atol=1e-2)


def test_rotate_flip_at_p1_is_a_non_identity_dihedral_transform() -> None:
    x = torch.rand(4, 16, 16)
    variants = [torch.rot90(x, k, dims=(1, 2)) for k in range(4)]
    variants += [torch.flip(v, dims=(2,)) for v in variants]
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        y = T.RotateFlip(1.0)(x)
        matches = [i for i, v in enumerate(variants) if torch.equal(y, v)]
        assert len(matches) == 1 and matches[0] != 0
        seen.add(matches[0])
    assert seen == set(range(1, 8))


def test_random_resized_crop_box_respects_scale_and_ratio() -> None:
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_box(80, 80, (0.4, 1.0))
        assert 0 <= top and top + h <= 80 and 0 <= left and left + w <= 80
        assert 0.4 * 6400 * 0.95 <= h * w <= 6400
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_plan_e_is_a_random_080_crop() -> None:
    x, mean, std, rgb = make_case(13)
    y = run("E", x, mean, std, rgb, {"crop": 1.0}, seed=5)
    norm = Normalize(mean, std)
    windows = [(t, l) for t in range(17) for l in range(17) if torch.allclose(y, norm(x[:, t:t + 64, l:l + 64]), atol=1e-5)]
    assert len(windows) == 1


def test_seeding_reproduces_every_plan() -> None:
    x, mean, std, rgb = make_case(13)
    p = {"noise": 0.5}
    for code in PLAN_CODES:
        assert torch.equal(run(code, x, mean, std, rgb, p, seed=7), run(code, x, mean, std, rgb, p, seed=7))
    outs = {run("S5", x, mean, std, rgb, None, seed=s).sum().item() for s in range(5)}
    assert len(outs) > 1


def test_plan_pickles_and_leaves_input_untouched() -> None:
    x, mean, std, rgb = make_case(3)
    before = x.clone()
    plan = build_plan("A", SIZE, mean, std, rgb, {key: 1.0 for key in DEFAULT_P})
    clone = pickle.loads(pickle.dumps(plan))
    torch.manual_seed(2)
    a = plan(x)
    torch.manual_seed(2)
    assert torch.equal(a, clone(x))
    assert torch.equal(x, before)
    same = x[:, :SIZE, :SIZE].contiguous()
    kept = same.clone()
    build_plan("S1", SIZE, mean, std, rgb, {"color": 1.0})(same)
    assert torch.equal(same, kept)


def test_single_band_and_uint8_inputs() -> None:
    y = build_plan("S5", 32, [0.5], [0.2], None, {key: 1.0 for key in DEFAULT_P})(torch.rand(1, 40, 40))
    assert y.shape == (1, 32, 32) and torch.isfinite(y).all()
    y = plain(32, RGB_MEAN, RGB_STD)((torch.rand(3, 40, 40) * 255).to(torch.uint8))
    assert y.dtype == torch.float32


def test_user_errors_name_the_value() -> None:
    with pytest.raises(UserError, match="'S7'.*S1, S2"):
        build_plan("S7", SIZE, RGB_MEAN, RGB_STD, (0, 1, 2))
    with pytest.raises(UserError, match="'colour'"):
        build_plan("S5", SIZE, RGB_MEAN, RGB_STD, (0, 1, 2), {"colour": 1.0})
    with pytest.raises(UserError, match="crop=1.5"):
        build_plan("S5", SIZE, RGB_MEAN, RGB_STD, (0, 1, 2), {"crop": 1.5})
    with pytest.raises(UserError, match=r"rgb_index \(3, 2, 1\)"):
        build_plan("S5", SIZE, RGB_MEAN, RGB_STD, (3, 2, 1))
    with pytest.raises(UserError, match="input size 0"):
        build_plan("S5", 0, RGB_MEAN, RGB_STD, None)
    with pytest.raises(UserError, match="3 means and 2 stds"):
        Normalize(RGB_MEAN, RGB_STD[:2])
    with pytest.raises(UserError, match=r"\(13, 80, 80\).*3 bands"):
        plain(SIZE, RGB_MEAN, RGB_STD)(make_case(13)[0])


def _position_image(bands: int, side: int = 96) -> torch.Tensor:
    """Band 0 holds the row index, band 1 the column index, the others noise: crops can be measured."""
    x = torch.rand(bands, side, side) * 10
    x[0] = torch.arange(side, dtype=torch.float32)[:, None].expand(side, side)
    x[1] = torch.arange(side, dtype=torch.float32)[None, :].expand(side, side)
    return x


def _crop_areas(plan, side: int = 96, draws: int = 300) -> torch.Tensor:
    """Area share of the region each draw shows (from the extremes of the row/column bands)."""
    x = _position_image(plan.normalize.bands, side)
    areas = []
    for seed in range(draws):
        torch.manual_seed(seed)
        y = plan(x)
        rows, cols = y[0], y[1]
        areas.append(((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)) / side**2)
    return torch.stack(areas)


@pytest.mark.parametrize("bands", [3, 13])
def test_crop_scale_crops_every_view_within_the_range(bands: int) -> None:
    """--crop-scale 0.2,1 (a recipe's crop): the plan's crop becomes a random resized crop applied ALWAYS with
    that area range, for any band count; without it plan S3 keeps its own (p 0.8, scale 0.5-1)."""
    stats = (tuple([0.0] * bands), tuple([1.0] * bands))
    recipe = build_plan("S3", 32, *stats, None, crop_scale=(0.2, 1.0))
    crop = recipe.steps[0]
    assert isinstance(crop, T.RandomResizedCrop) and (crop.scale, crop.p) == ((0.2, 1.0), 1.0)
    whole = _crop_areas(plain(32, *stats), draws=1)[0]       # the uncropped view (antialiasing trims the edges)
    areas = _crop_areas(recipe)
    assert areas.min() > 0.2 - 0.03 and areas.max() <= whole + 1e-4
    assert (areas > whole - 1e-3).float().mean() < 0.03     # a whole-image view only when the draw is ~1
    assert areas.min() < 0.3 and (areas < 0.5).float().mean() > 0.2
    own = build_plan("S3", 32, *stats, None)
    assert (own.steps[0].scale, own.steps[0].p) == ((0.5, 1.0), 0.8)
    own_areas = _crop_areas(own)
    assert own_areas.min() > 0.5 - 0.03
    assert 0.12 < (own_areas > whole - 1e-3).float().mean() < 0.3   # ~20 % uncropped, as the SPEC's S3 says


def test_crop_scale_replaces_every_crop_kind_and_needs_one() -> None:
    x, mean, std, rgb = make_case(13)
    for code in ("A", "B", "C", "D", "E", "S4", "S5", "S6"):
        plan = build_plan(code, SIZE, mean, std, rgb, crop_scale=(0.08, 1.0))
        crops = [s for s in plan.steps if isinstance(s, (T.RandomResizedCrop, T.FixedFractionCrop))]
        assert len(crops) == 1 and isinstance(crops[0], T.RandomResizedCrop), code
        assert (crops[0].scale, crops[0].p) == ((0.08, 1.0), 1.0)
        assert plan(x).shape == (13, SIZE, SIZE)
    for code in ("S1", "S2"):
        with pytest.raises(UserError, match=f"--crop-scale replaces the crop step .* {code} has none"):
            build_plan(code, SIZE, mean, std, rgb, crop_scale=(0.2, 1.0))
