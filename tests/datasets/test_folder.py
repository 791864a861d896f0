"""Normalisation statistics: measured on the training split only, cached per split version."""
import argparse
import json

import numpy as np

from datasets.folder import band_stats, make_dataset, prepare_dataset, stats_path
from datasets.index import build_index
from datasets.options import get_opt
from datasets.reader import read_raw
from tests.datasets.trees import class_tree, eurosat_tree, write_tif

SIZES = {"Fields": 12, "Forest": 20, "Water": 7}


def numpy_stats(paths):
    """Independent formula: stack every pixel of every file per band, float64 mean and population std."""
    a = np.concatenate([read_raw(p).reshape(3, -1).astype(np.float64) for p in paths], axis=1)
    return a.mean(1), a.std(1)


def test_statistics_come_from_training_files_only(tmp_path, monkeypatch):
    root = class_tree(tmp_path / "mine", SIZES)
    monkeypatch.setenv("RSSSL_CACHE", str(tmp_path / "cache1"))
    opt, idx = prepare_dataset(get_opt(str(root)))
    mean, std = numpy_stats([s.path for s in idx.train])
    assert np.allclose(opt.mean, mean, rtol=1e-12) and np.allclose(opt.std, std, rtol=1e-9)
    all_mean, _ = numpy_stats([s.path for s in idx.train + idx.test])
    assert not np.allclose(opt.mean, all_mean, rtol=1e-6)        # the test files would have moved them
    # an extreme TEST image does not move the statistics (fresh cache: measured again)
    write_tif(idx.test[0].path, 3, 65535)
    monkeypatch.setenv("RSSSL_CACHE", str(tmp_path / "cache2"))
    opt2, idx2 = prepare_dataset(get_opt(str(root)))
    assert idx2.split_version == idx.split_version
    assert np.array_equal(opt2.mean, opt.mean) and np.array_equal(opt2.std, opt.std)
    # ... while an extreme TRAINING image does (the check above can fail)
    write_tif(idx.train[0].path, 3, 65535)
    monkeypatch.setenv("RSSSL_CACHE", str(tmp_path / "cache3"))
    opt3, _ = prepare_dataset(get_opt(str(root)))
    assert (opt3.mean > opt.mean + 100).all()


def test_statistics_are_cached_per_split_version(tmp_path):
    root = class_tree(tmp_path / "mine", SIZES)
    opt, idx = prepare_dataset(get_opt(str(root)))
    cached = json.loads(stats_path(opt, idx.split_version).read_text())
    assert cached["split_version"] == idx.split_version and cached["split"] == "train"
    assert cached["files"] == cached["of"] == len(idx.train) and np.allclose(cached["mean"], opt.mean)
    (root / "Forest" / "forest_000.tif").unlink()                 # a new file list: a new version, new stats
    opt2, idx2 = prepare_dataset(get_opt(str(root)))
    assert idx2.split_version != idx.split_version and stats_path(opt2, idx2.split_version).exists()
    assert np.allclose(opt2.mean, numpy_stats([s.path for s in idx2.train])[0])


def test_band_stats_subsample_is_seeded_and_counted(tmp_path):
    root = class_tree(tmp_path / "mine", SIZES)
    opt = get_opt(str(root))
    idx = build_index(opt)
    m1, s1, n1 = band_stats(opt, idx.train, max_files=5, seed=3)
    m2, _, _ = band_stats(opt, idx.train, max_files=5, seed=3)
    m_all, _, n_all = band_stats(opt, idx.train, max_files=None)
    assert n1 == 5 and n_all == len(idx.train) and np.array_equal(m1, m2) and not np.allclose(m1, m_all)


def test_every_named_dataset_is_measured_and_pools_keep_their_own(tmp_path):
    eurosat_tree(tmp_path, 5, ".jpg")
    eurosat_tree(tmp_path, 5, ".tif")          # values 1000 + n in every band
    ns = argparse.Namespace(data_root=str(tmp_path))
    ms, idx = prepare_dataset(get_opt("euromsrgb", ns))
    n = np.array([int(s.path.stem.split("_")[1]) for s in idx.train], dtype=np.float64)
    assert np.allclose(ms.mean, 1000 + n.mean()) and np.allclose(ms.std, n.std())
    rgb, _ = prepare_dataset(get_opt("eurorgb", ns))
    assert np.allclose(rgb.mean, 100, atol=1)          # the jpgs are a flat 100, not ImageNet's 124/116/104
    pooled, pidx = prepare_dataset(get_opt("eurorgb+euromsrgb", ns))
    assert np.allclose(pooled.parts[0].mean, rgb.mean) and np.allclose(pooled.parts[1].mean, ms.mean)
    # one numbering over the parts: an item's index is its position in the pooled dataset (MoCo's queue)
    data = make_dataset(pooled, pidx.train, lambda o: None)
    assert [data[i][2] for i in range(len(data))] == list(range(len(data))) and data[-1][2] == len(data) - 1
    assert len(pooled.parts) == 2 and 0 < len(data.datasets[0]) < len(data)


# ---- issue 19: caches keyed by content, nodata honoured, one pixel type per dataset ----

def test_statistics_follow_training_images_rewritten_in_place(tmp_path):
    """Same names, same cache: rewriting a training image re-measures the statistics."""
    root = class_tree(tmp_path / "mine", SIZES)
    opt, idx = prepare_dataset(get_opt(str(root)))
    write_tif(idx.train[0].path, 3, 65535)
    opt2, idx2 = prepare_dataset(get_opt(str(root)))
    assert idx2.split_version == idx.split_version and stats_path(opt2, idx2.split_version) == stats_path(opt, idx.split_version)
    assert (opt2.mean > opt.mean + 100).all()
    assert np.allclose(opt2.mean, numpy_stats([s.path for s in idx2.train])[0])


def test_pixels_at_the_nodata_value_are_refused_naming_the_file(tmp_path):
    import pytest
    from osgeo import gdal

    from config.errors import UserError
    root = class_tree(tmp_path / "mine", SIZES)
    _, idx = prepare_dataset(get_opt(str(root)))
    tagged = idx.train[1].path                   # a nodata tag with no such pixel is fine
    ds = gdal.Open(str(tagged), gdal.GA_Update)
    for b in range(3):
        ds.GetRasterBand(b + 1).SetNoDataValue(65000)
    ds = None
    assert read_raw(tagged).shape == (3, 4, 4)
    bad = idx.train[0].path
    arr = read_raw(bad).astype(np.float64)
    arr[2, 1, 1] = 0
    write_tif(bad, 3, arr)
    ds = gdal.Open(str(bad), gdal.GA_Update)
    for b in range(3):
        ds.GetRasterBand(b + 1).SetNoDataValue(0)
    ds = None
    with pytest.raises(UserError, match=f"{bad}.*1 pixel.*nodata value 0"):
        prepare_dataset(get_opt(str(root)))


def test_a_dataset_mixing_bit_depths_is_refused(tmp_path):
    import pytest
    from PIL import Image

    from config.errors import UserError
    root = tmp_path / "pngs"
    for c in ("A", "B"):
        for i in range(5):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), 10 * i, np.uint8)).save(root / c / f"{c}_{i}.png")
    prepare_dataset(get_opt(str(root)))
    odd = root / "B" / "B_3.png"
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(odd)        # a 16-bit png among 8-bit ones
    with pytest.raises(UserError, match=r"mixes pixel types.*uint8.*uint16.*B_3\.png"):
        prepare_dataset(get_opt(str(root)))
