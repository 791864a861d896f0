"""The pretraining kNN monitor: validation-slice labels only, input-resolution cache, cadence, `best`."""
from __future__ import annotations

import argparse
import csv

import pytest
import torch

import main_cls_ss_train
from datasets.options import get_opt
from datasets.folder import prepare_dataset
from datasets.plans import plain
from config.errors import UserError
from engine import monitors, pretrain_flags
from engine.knn import knn_loo_accuracy
from engine.labels import monitor_set
from engine.runtime import Runtime


def demo(demo_root, size: int = 24):
    args = argparse.Namespace(data_root=str(demo_root), input_size=size)
    return prepare_dataset(get_opt("demo", args))


def test_reads_only_the_validation_slice_cached_at_input_size(demo_root):
    """The monitor's images and labels are the validation slice and nothing else (no pool label, no test
    image): the SPEC's only labels a monitor may read."""
    opt, index = demo(demo_root, 24)
    mon = monitors.KnnMonitor(opt, index, Runtime(torch.device("cpu")), workers=0)
    images = monitor_set(index)
    assert {s.path for s in images} == {s.path for s in index.val}
    assert mon.images.shape == (len(images), opt.n_bands, 24, 24) and mon.images.dtype == torch.float16
    from datasets.reader import read_raw
    raw = torch.from_numpy(read_raw(images[0].path, opt.band_index, len(opt.band_names)).astype("float32"))
    assert raw.shape[-1] != 24                                            # the cache is not at native size
    expect = plain(24, opt.mean, opt.std)(raw)
    assert torch.allclose(mon.images[0].float(), expect, atol=2e-3 * expect.abs().max().item())
    assert mon.labels.tolist() == [s.label for s in images]


def test_leave_one_out_knn_never_counts_an_image_as_its_own_neighbour():
    """Two well-separated classes of 3, plus one image labelled 1 that lies among the class-0 images:
    leave-one-out it is classified by its neighbour (0: wrong) and is the nearest neighbour of one class-0
    image (wrong too): 5 of 7, where images voting for themselves would all be right (7 of 7)."""
    f = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0], [0.1, 0.99], [-0.1, 0.98]])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert knn_loo_accuracy(f, y, 2, k=2) == 100.0
    odd = torch.cat([f, torch.tensor([[0.97, -0.2]])])
    assert knn_loo_accuracy(odd, torch.cat([y, torch.tensor([1])]), 2, k=1) == pytest.approx(100 * 5 / 7)


def test_auto_cadence_keeps_the_monitor_near_five_percent():
    assert monitors.auto_interval(0.5, 10.0) == 1        # 5 % of a 10 s epoch: every epoch
    assert monitors.auto_interval(0.51, 10.0) == 2
    assert monitors.auto_interval(3.0, 10.0) == 6        # 3 s every 6 epochs of 10 s = 5 %
    mon = monitors.KnnMonitor.__new__(monitors.KnnMonitor)
    mon.freq, mon.next_due = "auto", None
    assert mon.due(1, 10)                                # the first epoch is measured
    mon.next_due, ran = 1 + monitors.auto_interval(3.0, 10.0), []
    for e in range(2, 11):
        if mon.due(e, 10):
            ran.append(e)
            mon.next_due = e + monitors.auto_interval(3.0, 10.0)
    assert ran == [7, 10]                                # 7 by the budget, 10 = the last epoch
    mon.freq = 4
    assert [e for e in range(1, 11) if mon.due(e, 10)] == [4, 8, 10]


def test_knn_freq_flag():
    assert pretrain_flags.parse_knn_freq("auto") == "auto" and pretrain_flags.parse_knn_freq("3") == 3
    with pytest.raises(UserError, match="--knn-freq -1 must be >= 0 epochs"):
        pretrain_flags.parse_knn_freq("-1")


def test_best_is_chosen_on_the_validation_knn(demo_root, tmp_path):
    main_cls_ss_train.main(["--mode", "910", "--ds", "demo", "--data-root", str(demo_root), "--netnum", "000000",
                            "--input_size", "24", "--bs", "16", "--mepoch", "2", "--lr", "1e-3", "--workers", "0",
                            "--knn-freq", "1", "--ckpt", str(tmp_path), "--no-progress",
                            "--expnum", "5_pretrain"])
    with open(tmp_path / "000000_5_pretrain_log.csv") as f:
        knn = {int(r["epoch"]): float(r["knn_top1"]) for r in csv.DictReader(f)}
    best = torch.load(tmp_path / "000000_5_pretrain_best.pth", weights_only=True)["meta"]
    assert best["selected_by"] == "val-knn" and knn[best["selected_epoch"]] == max(knn.values())
    last = torch.load(tmp_path / "000000_5_pretrain_2.pth", weights_only=True)["meta"]
    assert last["selected_by"] == "last"
