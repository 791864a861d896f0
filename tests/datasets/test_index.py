import argparse
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from config.errors import UserError
from datasets.index import build_index, few_shot, shots_per_class
from datasets.options import get_opt
from tests.conftest import REPO, SHARED, needs_aid, needs_eurosat
from tests.datasets.trees import class_tree, eurosat_tree, write_tif


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


# ----------------------------------------------------------------------------- scene-keyed split, validation slice

def keys(samples):
    return sorted(s.key for s in samples)


def test_scene_key_is_class_folder_and_stem(tmp_path):
    from datasets.index import scene_key
    assert scene_key(tmp_path / "Forest" / "Forest_7.jpg", tmp_path) == "Forest/Forest_7"
    assert scene_key(tmp_path / "Forest" / "Forest_7.tif", tmp_path) == "Forest/Forest_7"
    assert scene_key(tmp_path / "a" / "b" / "img.v2.tif", tmp_path) == "a/b/img.v2"   # unlabelled: stem path
    assert scene_key(tmp_path / "img.png", tmp_path) == "img"
    with pytest.raises(ValueError, match="not inside"):
        scene_key(Path("/elsewhere/x.tif"), tmp_path)


def test_jpg_and_tif_releases_split_identically(tmp_path):
    """The same scenes as .jpg (eurorgb) and .tif (euroms) land on the same side, in every split."""
    eurosat_tree(tmp_path, 12, ".jpg")
    eurosat_tree(tmp_path, 12, ".tif")
    rgb = build_index(get_opt("eurorgb", argparse.Namespace(data_root=str(tmp_path))))
    ms = build_index(get_opt("euroms", argparse.Namespace(data_root=str(tmp_path))))
    assert rgb.train[0].path.suffix == ".jpg" and ms.train[0].path.suffix == ".tif"
    for split in ("train", "val", "pool", "test"):
        assert keys(rgb.split(split)) == keys(ms.split(split)), split
    assert rgb.split_version == ms.split_version and rgb.split_version.startswith("v2-")
    # and a draw with one seed picks the same scenes in both releases
    assert keys(few_shot(rgb.pool, 3, seed=5)) == keys(few_shot(ms.pool, 3, seed=5))


SIZES = {"One": 1, "Two": 2, "Three": 3, "Ten": 10, "TwentyFive": 25, "Fifty": 50}


def test_validation_slice_sizes_and_disjointness(tmp_path):
    idx = build_index(get_opt(str(class_tree(tmp_path / "mine", SIZES))))
    got = {c: (idx.counts("train")[c], idx.counts("val")[c], idx.counts("test")[c]) for c in idx.classes}
    # train = round(0.8 n) (both sides non-empty from 2 on); val = round(0.1 train), >= 1 from 2 training images
    assert got == {"One": (1, 0, 0), "Two": (1, 0, 1), "Three": (2, 1, 1), "Ten": (8, 1, 2),
                   "TwentyFive": (20, 2, 5), "Fifty": (40, 4, 10)}
    tr, va, te, po = (set(idx.split(n)) for n in ("train", "val", "test", "pool"))
    assert va <= tr and not tr & te and po == tr - va and len(idx.pool) == len(po)


def test_few_shot_draws_never_touch_the_validation_slice_and_stay_nested(tmp_path):
    idx = build_index(get_opt(str(class_tree(tmp_path / "mine", SIZES))))
    val = set(idx.val)
    for seed in range(5):
        for ts in (1, 2, 5, 20, 0.5, 1.0):
            assert not set(few_shot(idx.pool, ts, seed)) & val, (ts, seed)
        five, twenty = few_shot(idx.pool, 5, seed), few_shot(idx.pool, 20, seed)
        assert set(five) <= set(twenty) and len(five) < len(twenty)
    assert len(few_shot(idx.pool, 1.0, 0)) == len(idx.pool)       # ts 1: the whole pool, no slice image


VAL_SNIPPET = """
from datasets.options import get_opt
from datasets.index import build_index
i = build_index(get_opt(%r))
print(i.split_version, sorted(s.key for s in i.val))
"""


def test_validation_slice_is_the_same_in_every_process(tmp_path):
    root = class_tree(tmp_path / "mine", SIZES)
    out = [subprocess.run([sys.executable, "-c", VAL_SNIPPET % str(root)], cwd=REPO, capture_output=True, text=True,
                          check=True, env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": str(h),
                                           "RSSSL_CACHE": str(tmp_path / f"c{h}")}).stdout
           for h in (1, 2)]
    assert out[0] == out[1] and "Fifty/" in out[0]


def test_split_version_is_recorded_and_follows_the_file_list(tmp_path, caplog):
    root = class_tree(tmp_path / "mine", SIZES)
    opt = get_opt(str(root))
    idx = build_index(opt)
    record = opt.cache_dir / opt.cache_key / "split.csv"
    lines = record.read_text().splitlines()
    assert lines[0] == "path,class,split,split_version" and lines[1].endswith("," + idx.split_version)
    body = [line.split(",") for line in lines[1:]]
    assert len(body) == sum(SIZES.values()) and sum(r[2] == "val" for r in body) == len(idx.val) == 8
    assert ["Fifty/fifty_000.tif", "Fifty"] in [r[:2] for r in body]
    # another extension of the same scene: same split, same version
    p = root / "Ten" / "ten_003.tif"
    p.rename(p.with_suffix(".tiff"))
    assert build_index(opt).split_version == idx.split_version
    # one file fewer: a new version, and the record says so
    (root / "Fifty" / "fifty_000.tif").unlink()
    with caplog.at_level(logging.WARNING):
        new = build_index(opt)
    assert new.split_version != idx.split_version and new.split_version.startswith("v2-")
    assert "changed since" in caplog.text and idx.split_version in caplog.text
    assert record.read_text().splitlines()[1].endswith("," + new.split_version)


def test_unlabelled_imagery_keys_by_stem_path_without_a_slice(tmp_path):
    from datasets.index import scene_key
    root = tmp_path / "mine"
    for i in range(10):
        write_tif(root / ("a" if i % 2 else "b") / "deep" / f"img_{i}.tif", 3, i)
    opt = get_opt(str(root))
    idx = build_index(opt)
    assert opt.classes is None and idx.val == [] and len(idx.train) == 8 and len(idx.test) == 2
    assert all(s.key == scene_key(s.path, root) and s.key.endswith(f"/deep/{s.path.stem}") for s in idx.train)


def test_pooled_datasets_keep_each_split_and_name_both_versions(tmp_path):
    eurosat_tree(tmp_path, 5, ".jpg")
    eurosat_tree(tmp_path, 5, ".tif")
    ns = argparse.Namespace(data_root=str(tmp_path))
    pooled = build_index(get_opt("eurorgb+euromsrgb", ns))
    a, b = build_index(get_opt("eurorgb", ns)), build_index(get_opt("euromsrgb", ns))
    assert pooled.split_version == f"{a.split_version}+{b.split_version}"
    assert {s.path for s in pooled.train} == {s.path for s in a.train + b.train}   # slices included
    assert {s.path for s in pooled.test} == {s.path for s in a.test + b.test}
    assert pooled.val == [] and all(s.label == -1 for s in pooled.train)
    from datasets.folder import describe
    text = describe(get_opt("eurorgb+euromsrgb", ns), pooled)
    assert f"split     {pooled.split_version}: train {len(pooled.train)} / test {len(pooled.test)}" in text
    assert str(tmp_path / "eurosat_rgb") in text and str(tmp_path / "eurosat_ms") in text


@needs_eurosat
def test_real_eurosat_split_sizes_and_shared_by_euroms_and_euromsrgb():
    idx = build_index(euroms())
    want = {"AnnualCrop": (40, 4, 10), "Highway": (35, 4, 9), "Industrial": (36, 4, 9), "Pasture": (32, 3, 8)}
    assert {c: (idx.counts("train")[c], idx.counts("val")[c], idx.counts("test")[c]) for c in want} == want
    assert len(idx.train) == 375 and len(idx.val) == 39 and len(idx.pool) == 336 and len(idx.test) == 94
    rgb = build_index(get_opt("euromsrgb", argparse.Namespace(data_root=str(SHARED))))
    assert rgb.split_version == idx.split_version
    assert [s.path for s in rgb.val] == [s.path for s in idx.val] and [s.path for s in rgb.test] == [s.path for s in idx.test]
