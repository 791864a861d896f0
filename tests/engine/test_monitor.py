"""The pretraining kNN monitor: validation-slice labels only, input-resolution cache, cadence, `best`."""
from __future__ import annotations

import argparse
import csv

import pytest
import torch

import main_cls_ss_train
from datasets.options import get_opt
from datasets.folder import prepare_dataset
from datasets.transforms import plain
from config.errors import UserError
from engine import monitors, pretrain_flags
from engine.labels import monitor_sets
from engine.runtime import Runtime


def demo(demo_root, size: int = 24):
    args = argparse.Namespace(data_root=str(demo_root), input_size=size)
    return prepare_dataset(get_opt("demo", args))


def test_reads_only_the_validation_slice_cached_at_input_size(demo_root):
    opt, index = demo(demo_root, 24)
    mon = monitors.KnnMonitor(opt, index, Runtime(torch.device("cpu")), per_class=3, seed=0, workers=0)
    memory, queries = monitor_sets(index)
    test_paths = {s.path for s in index.test}
    assert not test_paths & {s.path for s in memory + queries}          # no test label is read
    assert not {s.path for s in memory} & {s.path for s in queries}     # queries are not in the memory
    assert mon.queries.shape == (len(queries), opt.n_bands, 24, 24) and mon.queries.dtype == torch.float16
    assert len(mon.memory) == len(mon.memory_y) <= 3 * len(index.classes)
    from datasets.reader import read_raw
    raw = torch.from_numpy(read_raw(queries[0].path, opt.band_index, len(opt.band_names)).astype("float32"))
    assert raw.shape[-1] != 24                                            # the cache is not at native size
    expect = plain(24, opt.mean, opt.std)(raw)
    assert torch.allclose(mon.queries[0].float(), expect, atol=2e-3 * expect.abs().max().item())
    assert mon.query_y.tolist() == [s.label for s in queries]


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
                            "--knn-freq", "1", "--knn-per-class", "4", "--ckpt", str(tmp_path), "--no-progress",
                            "--expnum", "5_pretrain"])
    with open(tmp_path / "000000_5_pretrain_log.csv") as f:
        knn = {int(r["epoch"]): float(r["knn_top1"]) for r in csv.DictReader(f)}
    best = torch.load(tmp_path / "000000_5_pretrain_best.pth", weights_only=True)["meta"]
    assert best["selected_by"] == "val-knn" and knn[best["selected_epoch"]] == max(knn.values())
    last = torch.load(tmp_path / "000000_5_pretrain_2.pth", weights_only=True)["meta"]
    assert last["selected_by"] == "last"
