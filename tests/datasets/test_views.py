"""Tests for datasets/views.py: the --aug view pairs and the test-time dihedral views."""
from __future__ import annotations

import pytest
import torch

from config.errors import UserError
from datasets.photometric import Solarize
from datasets.plans import AUG_CODES, DEFAULT_P, plain
from datasets.views import build_views, tta_views

SIZE = 64
MEAN = (1000.0,) * 12 + (12.0,)
STD = (300.0,) * 12 + (4.8,)
RGB = (3, 2, 1)
ZERO_P = {key: 0.0 for key in DEFAULT_P}


def image(bands: int = 13, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(bands, 80, 80, generator=g) * 2000


def views(aug: int, plan: str = "S5", p: dict | None = None, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return build_views(aug, plan, SIZE, MEAN, STD, RGB, p)(image())


@pytest.mark.parametrize("aug", AUG_CODES)
@pytest.mark.parametrize("plan", ["S5", "B"])
def test_every_aug_gives_two_views_of_the_right_shape(aug: int, plan: str) -> None:
    a, b = views(aug, plan)
    for v in (a, b):
        assert v.shape == (13, SIZE, SIZE) and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert not torch.equal(a, b)


def test_aug2_view_a_is_plain() -> None:
    expected = plain(SIZE, MEAN, STD)(image())
    for seed in range(3):
        a, b = views(2, seed=seed)
        assert torch.equal(a, expected)
        assert not torch.allclose(b, expected, atol=1e-3)


@pytest.mark.parametrize("aug", [1, 4])
def test_shared_crop_views_start_from_the_same_region(aug: int) -> None:
    # With every plan step off, both views are the same shared crop, resized.
    a, b = views(aug, p=ZERO_P)
    assert torch.allclose(a, b)
    assert not torch.allclose(a, plain(SIZE, MEAN, STD)(image()), atol=1e-3)


def test_shared_crop_is_scale_05_to_09() -> None:
    from datasets import views as V

    assert V.SHARED_CROP_SCALE == (0.5, 0.9)
    torch.manual_seed(0)
    x = image()
    for _ in range(50):
        crop = V.random_crop(x, V.SHARED_CROP_SCALE)
        assert 0.5 * 0.95 <= crop.shape[1] * crop.shape[2] / 6400 <= 0.9 * 1.05


def test_independent_views_without_augmentation_are_plain() -> None:
    expected = plain(SIZE, MEAN, STD)(image())
    for aug in (2, 5):
        a, b = views(aug, p=ZERO_P)
        assert torch.equal(a, expected) and torch.equal(b, expected)


def test_aug3_view_a_is_its_own_crop() -> None:
    expected = plain(SIZE, MEAN, STD)(image())
    a, _ = views(3, p={"crop": 0.0})
    assert torch.allclose(a, expected, atol=1e-6)
    a, b = views(3, p={**ZERO_P, "crop": 1.0})
    assert not torch.allclose(a, expected, atol=1e-3)
    assert not torch.allclose(a, b, atol=1e-3)


def test_views_are_reproducible_with_a_seed() -> None:
    for aug in AUG_CODES:
        first, second = views(aug, seed=11), views(aug, seed=11)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_unknown_codes_raise_user_error() -> None:
    with pytest.raises(UserError, match="--aug 7.*1, 2, 3, 4, 5, 6"):
        build_views(7, "S5", SIZE, MEAN, STD, RGB)
    with pytest.raises(UserError, match="--aug 6 .*--aug_p S4 has no blur"):
        build_views(6, "S4", SIZE, MEAN, STD, RGB)
    with pytest.raises(UserError, match="'Z'"):
        build_views(1, "Z", SIZE, MEAN, STD, RGB)


def test_tta_views_are_the_eight_dihedral_variants() -> None:
    x = torch.rand(2, 3, 8, 8)
    out = tta_views(x)
    assert len(out) == 8
    assert torch.equal(out[0], x)
    for i in range(8):
        assert out[i].shape == x.shape
        for j in range(i):
            assert not torch.equal(out[i], out[j])
    expected = [torch.rot90(x, 1, dims=(2, 3)), torch.flip(x, dims=(3,)), torch.flip(x, dims=(2,)), x.transpose(2, 3)]
    for e in expected:
        assert sum(torch.equal(e, v) for v in out) == 1
    # The set is a group: the variants of a flipped batch are the same eight images.
    flipped = tta_views(torch.flip(x, dims=(3,)))
    assert all(sum(torch.equal(f, v) for v in out) == 1 for f in flipped)
    with pytest.raises(UserError, match=r"\(3, 8, 8\)"):
        tta_views(x[0])


def test_solarize_reflects_each_normalised_band_about_its_mean() -> None:
    x = torch.tensor([[[-2.0, -0.5], [0.0, 1.5]]]).repeat(13, 1, 1)
    assert torch.equal(Solarize(1.0)(x), -x.abs())
    assert torch.equal(Solarize(0.0)(x), x)


def test_aug6_is_byols_asymmetric_pair() -> None:
    """View a: always blurred, never solarised; view b: blurred 10 %, solarised 20 % of the time."""
    from datasets.views import ASYMMETRIC
    assert ASYMMETRIC == ((1.0, 0.0), (0.1, 0.2))
    pair = build_views(6, "S5", SIZE, MEAN, STD, RGB, {"blur": 0.5})   # aug 6 sets the blur itself
    blur_a, blur_b = pair.view_a.steps[-1], pair.view_b.steps[-1]
    assert type(blur_a).__name__ == type(blur_b).__name__ == "GaussianBlur" and (blur_a.p, blur_b.p) == (1.0, 0.1)
    assert pair.view_a.post == () and [type(s).__name__ for s in pair.view_b.post] == ["Solarize"]
    assert pair.view_b.post[0].p == 0.2 and pair.shared_crop is None
    # what comes out: with the other steps off, view b is the plain view or (20 %) its solarisation
    expected = plain(SIZE, MEAN, STD)(image())
    solarised = plain_b = 0
    runs = 100
    for seed in range(runs):
        torch.manual_seed(seed)
        _, b = build_views(6, "S5", SIZE, MEAN, STD, RGB, {**ZERO_P, "blur": 0.0})(image())
        solarised += int((b <= 0).all())
        plain_b += int(torch.allclose(b, expected, atol=1e-3))
    assert 0.08 * runs < solarised < 0.35 * runs
    assert 0.55 * runs < plain_b <= 0.8 * runs          # neither solarised nor (noticeably) blurred


@pytest.mark.parametrize("bands,size,local", [(13, 64, 28), (3, 224, 96), (1, 32, 14)])
def test_multicrop_shapes_for_any_band_count(bands: int, size: int, local: int) -> None:
    from datasets.views import MultiCrop, local_crop_size
    assert local_crop_size(size) == local
    mean, std = [1000.0] * bands, [300.0] * bands
    rgb = (3, 2, 1) if bands == 13 else ((0, 1, 2) if bands == 3 else None)
    torch.manual_seed(0)
    views = MultiCrop(size, mean, std, rgb, n_local=3)(torch.rand(bands, 80, 80) * 2000)
    assert [tuple(v.shape) for v in views] == [(bands, size, size)] * 2 + [(bands, local, local)] * 3
    assert all(torch.isfinite(v).all() for v in views)
    assert len(MultiCrop(size, mean, std, rgb, n_local=0)(torch.rand(bands, 80, 80))) == 2


def test_multicrop_crop_scales() -> None:
    """Global crops cover 40-100 % of the image, local ones 5-40 % (checked on the crop boxes drawn)."""
    from datasets import views as V
    assert V.GLOBAL_CROP_SCALE == (0.4, 1.0) and V.LOCAL_CROP_SCALE == (0.05, 0.4)
    mc = V.MultiCrop(64, [0.0] * 2, [1.0] * 2, None, n_local=1)
    assert mc.global_views[0].steps[0].scale == (0.4, 1.0) and mc.global_views[0].steps[0].p == 1.0
    assert mc.local_view.steps[0].scale == (0.05, 0.4) and mc.local_view.steps[0].size == 28
    blur = [type(s).__name__ for s in mc.global_views[1].steps][-1]
    assert blur == "GaussianBlur" and [v.steps[-1].p for v in (*mc.global_views, mc.local_view)] == [1.0, 0.1, 0.5]
    assert [len(v.post) for v in (*mc.global_views, mc.local_view)] == [0, 1, 0]


@pytest.mark.parametrize("aug", [3, 5, 6])
def test_crop_scale_reaches_every_plan_view(aug: int) -> None:
    """A recipe's crop (crop_scale) is applied always in both plan views of --aug 5/6 and in view b of --aug 3,
    whose own view-a crop (scale 0.5-1, p 0.8) keeps its meaning."""
    from datasets.transforms import RandomResizedCrop
    pair = build_views(aug, "S5", SIZE, MEAN, STD, RGB, crop_scale=(0.2, 1.0))
    plans = [pair.view_b] if aug == 3 else [pair.view_a, pair.view_b]
    for plan in plans:
        crop = plan.steps[0]
        assert isinstance(crop, RandomResizedCrop) and (crop.scale, crop.p) == ((0.2, 1.0), 1.0)
    if aug == 3:
        assert (pair.view_a.crop.scale, pair.view_a.crop.p) == ((0.5, 1.0), 0.8)
    default = build_views(aug, "S5", SIZE, MEAN, STD, RGB)
    assert (default.view_b.steps[0].scale, default.view_b.steps[0].p) == ((0.5, 1.0), 0.8)
    torch.manual_seed(0)
    a, b = pair(image())
    assert a.shape == b.shape == (13, SIZE, SIZE)


def test_crop_scale_values_and_errors() -> None:
    from argparse import Namespace

    from datasets.views import crop_scale_of, parse_scale
    assert parse_scale("0.2,1", "--crop-scale") == [0.2, 1.0]
    assert crop_scale_of(Namespace(crop_scale=[0.08, 1.0])) == (0.08, 1.0)
    assert crop_scale_of(Namespace(crop_scale="plan")) is None and crop_scale_of(Namespace()) is None
    for bad in ("0.2", "0,1", "0.5,0.2", "0.2,1.5", "a,b"):
        with pytest.raises(UserError, match=f"--crop-scale '?{bad}"):
            parse_scale(bad, "--crop-scale")


def test_multicrop_takes_the_recipes_scales() -> None:
    from datasets.views import MultiCrop
    mc = MultiCrop(64, [0.0] * 2, [1.0] * 2, None, n_local=2, global_scale=(0.14, 1.0), local_scale=(0.05, 0.14))
    assert [v.steps[0].scale for v in mc.global_views] == [(0.14, 1.0)] * 2 and mc.local_view.steps[0].scale == (0.05, 0.14)
    assert all(v.steps[0].p == 1.0 for v in (*mc.global_views, mc.local_view))
