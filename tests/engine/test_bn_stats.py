"""--bn-stats: a frozen backbone's BatchNorm statistics as trained, or re-estimated on plain training views.

A random-init network carries no statistics of the data and a pretrained one carries those of
augmented training views; re-estimating both on the same plain views is what makes the random
row a like-for-like baseline (issue 17). The statistics must be the exact averages, must change
the features of an untrained network, and must reach the row and the feature-cache key.
"""
from __future__ import annotations

import csv

import pytest
import torch
from torch.utils.data import DataLoader

import main_cls
from config.errors import UserError
from datasets.folder import make_dataset, prepare_dataset
from datasets.options import get_opt
from datasets.plans import plain
from engine.classifier import reestimate_bn
from models import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def _demo(demo_root, size=32):
    import argparse
    return prepare_dataset(get_opt("demo", argparse.Namespace(data_root=str(demo_root), input_size=size)))


def test_running_statistics_are_the_exact_mean_and_variance_of_the_plain_views(demo_root):
    opt, index = _demo(demo_root)
    torch.manual_seed(0)
    backbone, _ = build_backbone("090000", opt.n_bands)
    samples = index.train[:40]
    backbone.eval()
    n = reestimate_bn(backbone, samples, opt, torch.device("cpu"), batch=len(samples))
    assert n == 40 and not backbone.training          # the caller's mode is kept
    ds = make_dataset(opt, samples, lambda o: plain(o.input_size, o.mean, o.std))
    x = next(iter(DataLoader(ds, batch_size=len(samples))))[0]
    with torch.no_grad():
        h = backbone.stem[0](x)                        # the first conv's output feeds the first BN
    bn = backbone.stem[1]
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert bn.momentum == 0.1                          # the layer's own momentum is put back


def test_several_shuffled_batches_give_the_statistics_of_all_the_images(demo_root):
    """Batches of 16 from 40 class-sorted images: shuffled with a fixed seed (each batch mixes the classes)
    and of equal size up to one image, their average is the mean and variance over all 40 up to a few
    percent, where class-sorted batches would miss the variance between classes; the same on every call."""
    opt, index = _demo(demo_root)
    torch.manual_seed(0)
    backbone, _ = build_backbone("090000", opt.n_bands)
    samples = sorted(index.train, key=lambda s: s.label)[:40]
    reestimate_bn(backbone, samples, opt, torch.device("cpu"), batch=16)
    ds = make_dataset(opt, samples, lambda o: plain(o.input_size, o.mean, o.std))
    x = next(iter(DataLoader(ds, batch_size=len(samples))))[0]
    with torch.no_grad():
        h = backbone.stem[0](x)
    bn = backbone.stem[1]
    exact_mean, exact_var = h.mean((0, 2, 3)), h.var((0, 2, 3))
    assert (bn.running_mean - exact_mean).abs().max() < 0.03 * exact_mean.abs().max()
    ratio = bn.running_var / exact_var
    assert 0.9 < ratio.median() < 1.05
    sorted_var = torch.stack([h[i:i + 14].var((0, 2, 3)) for i in (0, 14, 27)]).mean(0)   # unshuffled batches
    assert (sorted_var / exact_var).median() < ratio.median()
    again = bn.running_mean.clone()
    reestimate_bn(backbone, samples, opt, torch.device("cpu"), batch=16)
    assert torch.equal(bn.running_mean, again)


def test_policy_changes_the_features_of_an_untrained_network(demo_root):
    opt, index = _demo(demo_root)
    torch.manual_seed(0)
    a, _ = build_backbone("090000", opt.n_bands)
    b, _ = build_backbone("090000", opt.n_bands)
    b.load_state_dict(a.state_dict())
    reestimate_bn(b, index.train, opt, torch.device("cpu"))
    ds = make_dataset(opt, index.test[:8], lambda o: plain(o.input_size, o.mean, o.std))
    x = next(iter(DataLoader(ds, batch_size=8)))[0]
    with torch.no_grad():
        fa, fb = a.eval()(x), b.eval()(x)
    assert (fa - fb).abs().max() > 1e-2 * fa.abs().max()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))   # weights untouched


def _probe(demo_root, tmp_path, *extra):
    main_cls.main(["--ds", "demo", "--data-root", str(demo_root), "--mode", "11", "--netnum", "090000",
                   "--input_size", "32", "--workers", "0", "--probe", "logreg", "--ts", "3", "--no-progress",
                   "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "r.csv"), *extra])


def test_rows_record_the_policy_and_the_cache_keeps_them_apart(demo_root, tmp_path, caplog):
    _probe(demo_root, tmp_path)
    with caplog.at_level("INFO"):
        _probe(demo_root, tmp_path, "--bn-stats", "reestimated")
    assert "from cache" not in caplog.text and "re-estimated on the plain views" in caplog.text
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["bn_stats"] for r in rows] == ["as-trained", "reestimated"]
    assert len(list((tmp_path / "cache").rglob("features/*.npz"))) == 2


def test_fine_tuning_refuses_a_policy_it_would_ignore(demo_root, tmp_path):
    with pytest.raises(SystemExit) as e:
        main_cls.main(["--ds", "demo", "--data-root", str(demo_root), "--mode", "11", "--netnum", "090000",
                       "--input_size", "32", "--bn-stats", "reestimated", "--hos", "0", "--results",
                       str(tmp_path / "r.csv"), "--ckpt", str(tmp_path / "ck")])
    assert e.value.code == 2
    with pytest.raises(UserError):
        from engine import evaljob
        from engine.cli import base_parser
        evaljob.resolve(evaljob.add_args(base_parser("", "cls")).parse_args(
            ["--ds", "demo", "--data-root", str(demo_root), "--mode", "11", "--bn-stats", "reestimated"]))


def test_init_seed_sets_the_random_weights_and_the_rows_pretrain_seed(demo_root, tmp_path, caplog):
    """--init-seed: the random backbone's seed apart from the draw's; rows record it as pretrain_seed, and
    two init seeds are two feature extractions (the cache key names the seed)."""
    for s in (0, 1):
        _probe(demo_root, tmp_path, "--init-seed", str(s), "--seed", "3")
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [(r["pretrain_seed"], r["seed"]) for r in rows] == [("0", "3"), ("1", "3")]
    assert rows[0]["OA"] != rows[1]["OA"] or rows[0]["per_class"] != rows[1]["per_class"]
    assert len(list((tmp_path / "cache").rglob("features/*.npz"))) == 2
    with pytest.raises(SystemExit) as e:
        _probe(demo_root, tmp_path, "--init-seed", "1", "--ptcp", "1")
    assert e.value.code == 2
