"""engine/features.py: frozen features paired with images by path, and a cache keyed by what they
were made from."""
from __future__ import annotations

import logging
import shutil
import warnings

import numpy as np
import torch

from engine import features


def test_feature_table_takes_rows_by_path():
    from datasets.index import Sample
    from pathlib import Path
    paths = [f"/d/c{i % 2}/img{i}.tif" for i in range(6)]
    feats = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    table = features.FeatureTable(paths[::-1], feats[::-1].copy())           # stored in another order
    want = [Sample(Path(paths[i]), i % 2) for i in (4, 1, 3)]
    x, y = table.take(want)
    assert x[:, 0].tolist() == [4.0, 1.0, 3.0] and y.tolist() == [0, 1, 1]
    assert not table.covers([Sample(Path("/d/c0/new.tif"), 0)])


def _probe_job(root, cache, *extra):
    from engine import evaljob
    from engine.cli import base_parser
    args = evaljob.add_args(base_parser("", "cls")).parse_args(
        ["--ds", "demo", "--data-root", str(root), "--cache-dir", str(cache), "--mode", "11", "--netnum", "090000",
         "--input_size", "32", "--workers", "0", "--probe", "logreg", "--no-progress", *extra])
    return evaljob.resolve(args)


def _features(root, cache, caplog):
    from engine.runtime import init_runtime
    job = _probe_job(root, cache)
    rt = init_runtime(None, None, job.procs)
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            table = features.probe_features(job, rt)
    finally:
        rt.close()
    return table, job, caplog.text


def _direct(job, samples) -> np.ndarray:
    """Each image through the backbone on its own (the model probe_features builds)."""
    from datasets.folder import make_dataset
    from datasets.plans import plain
    from engine.classifier import build_classifier
    from engine.runtime import reseed
    reseed(job.seeds[0], 0, 0)
    backbone = build_classifier(job).backbone.eval()
    ds = make_dataset(job.opt, samples, lambda o: plain(o.input_size, o.mean, o.std))
    with torch.no_grad():
        return np.stack([backbone(ds[i][0][None])[0].numpy() for i in range(len(samples))])


def test_changed_file_list_misses_the_cache_and_keeps_pairs(demo_root, tmp_path, caplog):
    torch.set_num_threads(1)
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    cache = tmp_path / "cache"
    first, job1, _ = _features(root, cache, caplog)
    again, _, text = _features(root, cache, caplog)
    assert "frozen features from cache" in text
    assert np.array_equal(again.feats, first.feats) and again.paths == first.paths
    # remove the first training image: every later position shifts by one
    gone = sorted(job1.index.train, key=lambda s: s.path.as_posix())[0].path
    gone.unlink()
    changed, job2, text = _features(root, cache, caplog)
    assert "from cache" not in text and "frozen features of" in text
    assert len(list((cache / job2.opt.cache_key / "features").glob("*.npz"))) == 2
    assert gone.as_posix() not in changed.row and len(changed.paths) == len(first.paths) - 1
    # each image keeps its own features: compare with the images run one by one
    check = sorted(job2.index.train + job2.index.test, key=lambda s: s.path.as_posix())[:3]
    x, _ = changed.take(check)
    np.testing.assert_allclose(x, _direct(job2, check), rtol=1e-4, atol=1e-5)


def test_cache_entry_for_other_inputs_is_not_used(tmp_path, caplog):
    from datasets.index import Sample
    from pathlib import Path
    path = tmp_path / "f.npz"
    table = features.FeatureTable(["/a.tif", "/b.tif"], np.ones((2, 3), np.float32))
    features.save_cache(path, {"format": features.FEATURE_FORMAT, "weights": "x"}, table)
    samples = [Sample(Path("/a.tif"), 0), Sample(Path("/b.tif"), 1)]
    assert features.load_cache(path, {"format": features.FEATURE_FORMAT, "weights": "x"}, samples) is not None
    with caplog.at_level(logging.WARNING):
        assert features.load_cache(path, {"format": features.FEATURE_FORMAT, "weights": "y"}, samples) is None
        assert features.load_cache(path, {"format": features.FEATURE_FORMAT, "weights": "x"},
                                samples + [Sample(Path("/c.tif"), 0)]) is None
    assert not list(tmp_path.glob(".*tmp"))                          # no temporary file left behind


def test_cache_key_names_what_the_features_depend_on(demo_root, tmp_path):
    job = _probe_job(demo_root, tmp_path)
    base = features.feature_identity(job)
    for extra, field in [(["--seed", "3"], "weights"), (["--input_size", "24"], "input_size"),
                         (["--dtype", "RGB"], "bands"), (["--netnum", "000000"], "netnum")]:
        job2 = _probe_job(demo_root, tmp_path, *extra)
        ident = features.feature_identity(job2)
        assert ident[field] != base[field], extra
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert base["train_files"] == features.samples_digest(list(reversed(job.index.train)))   # order-free


def test_images_rewritten_in_place_miss_the_cache(demo_root, tmp_path, caplog):
    """Same names, other pixels (issue 19): the cache must not hand out the old images' features."""
    torch.set_num_threads(1)
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    cache = tmp_path / "cache"
    first, job, _ = _features(root, cache, caplog)
    a, b = sorted(job.index.test, key=lambda s: s.path.as_posix())[:2]
    a.path.write_bytes(b.path.read_bytes())                     # a's file now shows b's pixels
    again, job2, text = _features(root, cache, caplog)
    assert "from cache" not in text and "frozen features of" in text
    x, _ = again.take([a, b])
    np.testing.assert_allclose(x[0], x[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(first.take([a])[0], x[0])


def _nan_tree(root, bad: str):
    """A Float32 class tree; the file named ``bad`` holds one NaN pixel."""
    from osgeo import gdal

    from tests.datasets.trees import write_tif
    rng = np.random.default_rng(0)
    for c in ("Fields", "Forest", "Water"):
        for i in range(8):
            arr = rng.normal(100 * (1 + ("Fields", "Forest", "Water").index(c)), 5, (3, 8, 8))
            if f"{c}/{c.lower()}_{i}" == bad:
                arr[1, 2, 3] = np.nan
            write_tif(root / c / f"{c.lower()}_{i}.tif", 3, arr, dtype=gdal.GDT_Float32, size=8)
    return root


def test_a_test_image_with_nan_pixels_is_refused_naming_it(tmp_path, capsys):
    import pytest

    import main_cls
    from datasets.folder import prepare_dataset
    from datasets.options import get_opt
    root = _nan_tree(tmp_path / "mine", "")
    _, index = prepare_dataset(get_opt(str(root)))
    victim = index.test[0].path
    _nan_tree(tmp_path / "mine", f"{victim.parent.name}/{victim.stem}")
    with pytest.raises(SystemExit) as e:
        main_cls.main(["--ds", str(root), "--mode", "11", "--netnum", "000000", "--probe", "knn", "--ts", "2",
                       "--workers", "0", "--results", str(tmp_path / "r.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(victim) in err and "NaN" in err and "Traceback" not in err
    assert not (tmp_path / "r.csv").exists()


def test_weights_holding_nan_are_refused_naming_the_file(demo_root, tmp_path, capsys):
    import pytest
    import torchvision

    import main_cls
    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "resnet18-nan.pth"
    torch.save(state, path)
    with pytest.raises(SystemExit) as e:
        main_cls.main(["--ds", "demo", "--data-root", str(demo_root), "--dtype", "RGB", "--mode", "11",
                       "--netnum", "090000", "--weights", str(path), "--probe", "knn", "--ts", "2", "--input_size", "32",
                       "--workers", "0", "--results", str(tmp_path / "r.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(path) in err and "NaN" in err and "Traceback" not in err
    assert not (tmp_path / "r.csv").exists()


def test_non_finite_features_are_refused_naming_the_images(tmp_path):
    """Whatever made them (an overflow, a damaged checkpoint), NaN features never reach a probe."""
    import pytest

    from config.errors import UserError
    from datasets.index import Sample
    from pathlib import Path
    samples = [Sample(Path(f"/d/c/img{i}.tif"), 0) for i in range(4)]
    feats = np.ones((4, 3), np.float32)
    feats[2, 1] = np.inf
    with pytest.raises(UserError, match=r"1 of the 4 images.*img2\.tif"):
        features.check_finite(feats, samples, "checkpoint x.pth")
    with pytest.raises(UserError, match=r"checkpoint x\.pth.*every image"):
        features.check_finite(np.full((4, 3), np.nan, np.float32), samples, "checkpoint x.pth")
