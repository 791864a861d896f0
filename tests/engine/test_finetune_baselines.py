"""main_cls.py with pretrained baselines: ImageNet from --weights FILE, SSL4EO-S12 weights via --encoder_cp.

The weight files are random state dicts shaped like the real ones (nothing is downloaded).
The demo data has EuroSAT's 13 Sentinel-2 bands in EuroSAT's file order.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import main_cls
from engine import evaljob
from engine.cli import base_parser

NET = "090000"


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    imagenet = d / "resnet18-f37072fd.pth"
    torch.save(tvm.resnet18().state_dict(), imagenet)
    net = tvm.resnet18()
    net.conv1 = nn.Conv2d(13, 64, 7, 2, 3, bias=False)
    ssl4eo = d / "resnet18_sentinel2_all_moco-59bfdff9.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, ssl4eo)
    return {"imagenet": imagenet, "ssl4eo": ssl4eo}


def args_for(root: Path, ck: Path, res: Path, *extra: str, size: str | None = "32") -> list[str]:
    return ["--ds", "demo", "--data-root", str(root), "--netnum", NET, "--workers", "0", "--ckpt", str(ck),
            "--results", str(res), "--no-progress", "--lr", "1e-3", "--bs", "16",
            *(["--input_size", size] if size else []), *extra]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def parse(argv: list[str]) -> argparse.Namespace:
    return evaljob.add_args(base_parser("", script="cls")).parse_args(argv)


def test_ssl4eo_weights_give_an_ssl4eo_row(demo_root, weight_files, tmp_path):
    res = tmp_path / "r.csv"
    main_cls.main(args_for(demo_root, tmp_path, res, "--mode", "41", "--ts", "5", "--probe", "logreg",
                           "--encoder_cp", str(weight_files["ssl4eo"])))
    (r,) = rows(res)
    assert r["pretext"] == "ssl4eo-moco" and r["pretrain_expnum"] == "resnet18_sentinel2_all_moco-59bfdff9"
    assert r["mode"] == "41" and r["probe"] == "logreg" and 0 <= float(r["OA"]) <= 100
    assert r["pretrain_datasets"] == "SSL4EO-S12" and r["ckpt_selected_by"] == "published" and r["input_size"] == "32"


def test_imagenet_weights_file_train_then_test(demo_root, weight_files, tmp_path):
    res, ck = tmp_path / "r.csv", tmp_path / "ck"
    main_cls.main(args_for(demo_root, ck, res, "--mode", "11", "--ts", "2", "--mepoch", "1",
                           "--weights", str(weight_files["imagenet"])))
    (saved,) = sorted(ck.glob(f"{NET}_*_ts2_s0_1.pth"))
    state = torch.load(saved, weights_only=False)
    assert state["meta"]["pretrain"] == "imagenet" and state["meta"]["input_size"] == 32
    assert "backbone.input_adapter.scale" in state["model"]         # ImageNet preprocessing travels with it
    expnum = saved.name[len(NET) + 1:-len("_1.pth")]
    main_cls.main(args_for(demo_root, ck, res, "--mode", "31", "--ts", "2", "--expnum", expnum, "--cepoch", "1",
                           size=None))                               # the size comes from the classifier
    train_row, test_row = rows(res)
    assert train_row["pretext"] == "imagenet" and train_row["OA"] == test_row["OA"]


def test_baselines_default_to_their_native_input_size(demo_root, weight_files, tmp_path):
    common = ["--ds", "demo", "--data-root", str(demo_root), "--netnum", NET, "--ts", "5"]
    job = evaljob.resolve(parse([*common, "--mode", "11", "--weights", str(weight_files["imagenet"])]))
    assert job.opt.input_size == 224 and job.pretext == "imagenet"
    job = evaljob.resolve(parse([*common, "--mode", "41", "--encoder_cp", str(weight_files["ssl4eo"])]))
    assert job.opt.input_size == 224 and job.pretext == "ssl4eo-moco"
    job = evaljob.resolve(parse([*common, "--mode", "41", "--encoder_cp", str(weight_files["ssl4eo"]),
                                  "--input_size", "96"]))
    assert job.opt.input_size == 96                                  # the user's size wins
    job = evaljob.resolve(parse([*common, "--mode", "11"]))
    assert job.opt.input_size == 64 and job.pretext == "random"     # random init: the dataset's size
    small = ["--ds", "demo", "--data-root", str(demo_root), "--netnum", "000000", "--ts", "5"]
    assert evaljob.resolve(parse([*small, "--mode", "11", "--weights", str(weight_files["imagenet"])])).opt.input_size == 64


@pytest.mark.parametrize("extra,message", [
    (["--mode", "41", "--weights", "w.pth", "--expnum", "e", "--cepoch", "1"], "--weights gives the ImageNet weights"),
    (["--mode", "11", "--weights", "/nonexistent.pth"], "--weights /nonexistent.pth: no such file"),
])
def test_bad_weights_exit_2(demo_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main_cls.main(args_for(demo_root, tmp_path, tmp_path / "r.csv", *extra))
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_rgb_weights_through_encoder_cp_exit_2(demo_root, weight_files, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main_cls.main(args_for(demo_root, tmp_path, tmp_path / "r.csv", "--mode", "41", "--ts", "2", "--mepoch", "1",
                               "--encoder_cp", str(weight_files["imagenet"])))
    assert e.value.code == 2 and "--weights FILE with --mode 1x" in capsys.readouterr().err
