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
    from datasets.transforms import plain
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
