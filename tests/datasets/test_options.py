import argparse

import numpy as np
import pytest

from config.dataset_cfg import available
from config.errors import UserError
from datasets.folder import prepare_dataset
from datasets.options import get_opt
from tests.conftest import SHARED, needs_aid, needs_eurosat

README_MEAN = [1351.4, 1117.8, 1047.8, 950.3, 1206.9, 2014.3, 2387.1, 2314.9, 742.0, 12.1, 1838.8, 1136.8, 2610.0]


def ns(**kw):
    return argparse.Namespace(**kw)


def test_all_option_modules_exist():
    assert {"aid", "nr", "ucm", "eurorgb", "euroms", "euromsrgb", "demo"} <= set(available())


@needs_eurosat
def test_euroms_bands_and_statistics():
    o = get_opt("euroms", ns(data_root=str(SHARED)))
    assert o.n_bands == 13 and o.bands[-1] == "B8A" and o.rgb_index == (3, 2, 1)
    assert o.mean is None and o.std is None           # no built-in constant: measured on the training split
    o, idx = prepare_dataset(o)
    # the training split's statistics (375 of 469 files) agree with the whole subset's within 1 %
    assert np.allclose(o.mean, README_MEAN, rtol=0.01)
    assert o.std.min() > 4.0          # B10 is small but never ~0
    rgb, idx_rgb = prepare_dataset(get_opt("euromsrgb", ns(data_root=str(SHARED))))
    assert rgb.bands == ("B04", "B03", "B02") and rgb.band_index == (3, 2, 1) and rgb.rgb_index == (0, 1, 2)
    assert np.allclose(rgb.mean, o.mean[[3, 2, 1]]) and idx_rgb.split_version == idx.split_version


@needs_eurosat
@pytest.mark.parametrize("dtype,n", [("MS", 13), ("ALL", 12), ("TEN", 10), ("RGB", 3), ("NIR", 1)])
def test_dtype_band_counts(dtype, n):
    o = get_opt("euroms", ns(data_root=str(SHARED), dtype=dtype))
    assert o.n_bands == n
    if dtype == "ALL":
        assert "B10" not in o.bands


@needs_eurosat
def test_bad_dtype():
    with pytest.raises(UserError, match="SAR is not available"):
        get_opt("euroms", ns(data_root=str(SHARED), dtype="SAR"))
    with pytest.raises(UserError, match="not a band group"):
        get_opt("euroms", ns(data_root=str(SHARED), dtype="XYZ"))


def test_flags_override_defaults(demo_root):
    o = get_opt("demo", ns(data_root=str(demo_root), input_size=32, bs=16, lr=0.5))
    assert (o.input_size, o.batch_size, o.lr) == (32, 16, 0.5)
    o = get_opt("demo", ns(data_root=str(demo_root)))
    assert (o.input_size, o.batch_size) == (64, 64)


def test_data_root_from_environment(demo_root, monkeypatch):
    monkeypatch.setenv("RSSSL_DATA", str(demo_root))
    assert get_opt("demo").root == demo_root / "rsssl_demo"


def test_unknown_and_missing(tmp_path):
    with pytest.raises(UserError, match="not a known dataset"):
        get_opt("nope", ns(data_root=str(tmp_path)))
    with pytest.raises(UserError, match="dataset aid not found: looked in"):
        get_opt("aid", ns(data_root=str(tmp_path)))


@needs_aid
@needs_eurosat
def test_pooling(tmp_path):
    o = get_opt("aid+euromsrgb", ns(data_root=str(SHARED)))
    assert len(o.parts) == 2 and o.classes is None and o.n_bands == 3
    with pytest.raises(UserError, match="different band counts"):
        get_opt("aid+euroms", ns(data_root=str(SHARED)))
    with pytest.raises(UserError, match="pools several"):
        get_opt("aid+euromsrgb", ns(data_root=str(SHARED), split_file=str(tmp_path)))


def test_rgb_bands_are_one_based_and_in_range(demo_root, tmp_path):
    """Band 0 would silently pick the last band through a negative index."""
    import shutil
    root = tmp_path / "mine"
    shutil.copytree(demo_root / "rsssl_demo", root, ignore=shutil.ignore_patterns(".*"))
    for bad in ("0,3,2", "4,3,14", "4,3"):
        with pytest.raises(UserError, match=f"--rgb-bands '{bad}' must"):
            get_opt(str(root), ns(rgb_bands=bad))
    assert get_opt(str(root), ns(rgb_bands="4,3,2")).rgb_bands == ("B4", "B3", "B2")
