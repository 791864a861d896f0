import argparse
import logging
import subprocess
import sys

import numpy as np
import pytest

from config.errors import UserError
from datasets.index import build_index, few_shot, shots_per_class
from datasets.options import get_opt
from tests.conftest import REPO, SHARED, needs_aid, needs_eurosat


def euroms():
    return get_opt("euroms", argparse.Namespace(data_root=str(SHARED)))


@needs_eurosat
def test_split_is_stratified_and_disjoint():
    idx = build_index(euroms())
    tr, te = {s.path for s in idx.train}, {s.path for s in idx.test}
    assert not tr & te and len(tr) + len(te) == 469
    for c, n_tr in idx.counts("train").items():
        n_te = idx.counts("test")[c]
        assert n_tr == round(0.8 * (n_tr + n_te))
    assert idx.counts("train")["AnnualCrop"] == 40 and idx.counts("test")["Highway"] == 9


SPLIT_SNIPPET = """
import argparse, hashlib
from datasets.options import get_opt
from datasets.index import build_index
o = get_opt('euroms', argparse.Namespace(data_root=%r))
i = build_index(o)
print(hashlib.sha1('\\n'.join(sorted(s.path.name for s in i.train)).encode()).hexdigest())
"""


@needs_eurosat
def test_split_identical_across_processes():
    out = [subprocess.run([sys.executable, "-c", SPLIT_SNIPPET % str(SHARED)], cwd=REPO, capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": str(h)}).stdout
           for h in (1, 2)]
    assert out[0] == out[1] and len(out[0].strip()) == 40


@needs_eurosat
def test_few_shot_counts_nesting_and_seeds():
    idx = build_index(euroms())
    five = few_shot(idx.pool, 5, seed=3)
    twenty = few_shot(idx.pool, 20, seed=3)
    assert len(five) == 50 and len(twenty) == 200
    assert {s.path for s in five} <= {s.path for s in twenty}
    assert np.bincount([s.label for s in five]).tolist() == [5] * 10
    assert {s.path for s in five} != {s.path for s in few_shot(idx.pool, 5, seed=4)}
    assert [s.path for s in five] == [s.path for s in few_shot(idx.pool, 5, seed=3)]
    assert all(s in set(idx.pool) for s in twenty)    # only training images outside the validation slice


@needs_eurosat
def test_clamping_warns(caplog):
    idx = build_index(euroms())
    with caplog.at_level(logging.WARNING):
        got = few_shot(idx.train, 38, seed=0, classes=idx.classes)
    # Pasture has 32 training images, Highway 35, Industrial/PermanentCrop/River 36
    assert np.bincount([s.label for s in got])[5] == 32
    assert "more images than exist" in caplog.text and "Pasture: 32" in caplog.text


def test_train_scale_semantics():
    assert shots_per_class(1, 40) == 40
    assert shots_per_class(0.1, 40) == 4
    assert shots_per_class(0.001, 40) == 1
    assert shots_per_class(5, 40) == 5
    for bad in (0, -1):
        with pytest.raises(UserError, match="must be > 0"):
            shots_per_class(bad, 40)
    with pytest.raises(UserError, match="whole number"):
        shots_per_class(2.5, 40)


@needs_aid
def test_aid_subset_index():
    o = get_opt("aid", argparse.Namespace(data_root=str(SHARED)))
    idx = build_index(o)
    assert len(idx.classes) == 30 and len(idx.train) == 1200 and len(idx.test) == 300


def _tree(tmp_path, classes, per=3):
    from datasets.demo import render
    from osgeo import gdal
    root = tmp_path / "rsssl_demo"
    for c in classes:
        (root / c).mkdir(parents=True)
        for n in range(per):
            a = render("Water", n)
            ds = gdal.GetDriverByName("GTiff").Create(str(root / c / f"{c}_{n}.tif"), 64, 64, 13, gdal.GDT_UInt16)
            for b in range(13):
                ds.GetRasterBand(b + 1).WriteArray(a[b])
            ds = None
    return root


def test_missing_extra_and_empty_class_folders(tmp_path):
    from config.category import DEMO
    _tree(tmp_path, DEMO[:-1])
    opt = get_opt("demo", argparse.Namespace(data_root=str(tmp_path)))
    with pytest.raises(UserError, match="lacks class folder"):
        build_index(opt)
    (tmp_path / "rsssl_demo" / DEMO[-1]).mkdir()
    with pytest.raises(UserError, match="holds no"):
        build_index(opt)
    (tmp_path / "rsssl_demo" / "Clouds").mkdir()
    with pytest.raises(UserError, match="not classes"):
        build_index(opt)
