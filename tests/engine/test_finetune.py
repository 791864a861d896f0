"""main_cls.py: few-shot fine-tuning, probes, val/test, results rows (tiny demo data, CPU)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import main_cls
import main_cls_ss_train
from engine import evaljob, finetune
from engine.cli import base_parser
from tests.conftest import run_script

NET = "090000"


@pytest.fixture(scope="module")
def pretrained(demo_root, tmp_path_factory):
    """A SimCLR backbone written by the pretraining path under the SPEC's file name."""
    ck = tmp_path_factory.mktemp("ckpt")
    main_cls_ss_train.main(["--mode", "910", "--ds", "demo", "--data-root", str(demo_root), "--netnum", NET,
                            "--input_size", "32", "--bs", "16", "--mepoch", "1", "--workers", "0", "--ckpt", str(ck),
                            "--expnum", "20186093531_pretrain", "--knn-freq", "0", "--no-progress"])
    assert (ck / f"{NET}_20186093531_pretrain_1.pth").exists()
    return ck


def cls_args(root, ck, results, *extra):
    return ["--ds", "demo", "--data-root", str(root), "--netnum", NET, "--input_size", "32", "--workers", "0",
            "--ckpt", str(ck), "--results", str(results), "--no-progress", "--lr", "1e-3", "--optimizer", "adam",
            "--bs", "16", *extra]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_finetune_round_trip_writes_a_result_row(demo_root, pretrained, tmp_path):
    res = tmp_path / "r.csv"
    main_cls.main(cls_args(demo_root, pretrained, res, "--mode", "41", "--ts", "5", "--hos", "9", "--mepoch", "3",
                           "--expnum", "20186093531_pretrain", "--cepoch", "1", "--lr_policy", "cosine", "--wd", "0"))
    (r,) = rows(res)
    assert r["ds"] == "demo" and r["mode"] == "41" and r["hos"] == "9" and r["pretext"] == "simclr"
    assert r["pretrain_expnum"] == "20186093531_pretrain" and r["pretrain_epoch"] == "1"
    assert int(r["n_train"]) == 6 * 5 and int(r["n_test"]) == 12    # demo_root: 10 per class -> 8/2
    assert 0 <= float(r["OA"]) <= 100 and -1 <= float(r["kappa"]) <= 1
    per_class = np.array(eval(r["per_class"].replace("null", "float('nan')")))
    assert per_class.shape == (6,) and abs(per_class.mean() - float(r["AA"])) < 0.05
    assert (r["optimizer"], r["wd"], r["bs"], r["aug"], r["tta"], r["epochs"]) == ("adam", "0.0", "16", "D", "0", "3")
    assert r["input_size"] == "32" and r["dtype"] and len(r["bands"].split()) == 13 and r["allow_overlap"] == "0"
    assert r["pretrain_datasets"].startswith("demo@") and r["ckpt_selected_by"] in ("epoch", "last")
    assert r["split_version"] and r["probe"] == "" and r["probe_param"] == ""
    with open(res.parent / r["predictions"], newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 12 and all(not Path(p["path"]).is_absolute() and "/" in p["path"] for p in preds)
    assert 100 * np.mean([p["true"] == p["pred"] for p in preds]) == pytest.approx(float(r["OA"]), abs=1e-3)


def test_linear_probe_guard_catches_a_changing_backbone(demo_root, pretrained, tmp_path, monkeypatch):
    real = finetune.param_groups
    monkeypatch.setattr(finetune, "param_groups", lambda model, hos, *rest: real(model, 0))   # "forgets" to freeze
    with pytest.raises(RuntimeError, match="the backbone is not frozen"):
        main_cls.main(cls_args(demo_root, pretrained, tmp_path / "r.csv", "--mode", "41", "--ts", "5", "--hos", "9",
                               "--mepoch", "2", "--expnum", "20186093531_pretrain", "--cepoch", "1"))


def test_protocol_parameter_groups():
    from models import build_model
    m = build_model(NET, 13, 6)
    g1 = finetune.param_groups(m, 1)
    assert [g["lr_scale"] for g in g1] == [0.2, 1.0]
    g9 = finetune.param_groups(build_model(NET, 13, 6), 9)
    assert len(g9) == 1 and len(g9[0]["params"]) == 2                  # head weight and bias only


def test_vit_fine_tuning_uses_layer_decay_groups():
    """--netnum 1x0000 trains with MAE's layer-wise lr decay (default 0.75) and drop path (default 0.1)."""
    import argparse

    from engine import guards
    from models import build_model
    args = argparse.Namespace(layer_decay=None, drop_path=None, hos=0, probe=None)
    guards.resolve_vit_finetune(args, "110000", trains=True)
    assert (args.layer_decay, args.drop_path) == (0.75, 0.1)
    model = build_model("110000", 13, 6, input_size=32, drop_path=args.drop_path)
    assert model.backbone.blocks[11].drop_path1.drop_prob == pytest.approx(0.1)
    groups = finetune.param_groups(model, 0, args.layer_decay)
    assert sorted({round(g["lr_scale"], 8) for g in groups}) == sorted({round(0.75 ** k, 8) for k in range(14)})
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    g1 = finetune.param_groups(build_model("110000", 13, 6, input_size=32), 1, 0.75)
    assert max(g["lr_scale"] for g in g1 if any(p.ndim == 4 for p in g["params"])) == pytest.approx(0.2 * 0.75 ** 13)
    frozen = argparse.Namespace(layer_decay=None, drop_path=None, hos=9, probe=None)
    guards.resolve_vit_finetune(frozen, "110000", trains=True)
    assert (frozen.layer_decay, frozen.drop_path) == (None, None)          # a frozen backbone: neither applies
    cnn = argparse.Namespace(layer_decay=None, drop_path=None, hos=0, probe=None)
    guards.resolve_vit_finetune(cnn, NET, trains=True)
    assert cnn.layer_decay is None and len(finetune.param_groups(build_model(NET, 13, 6), 0, None)) == 2


def test_linear_probe_keeps_bn_statistics(demo_root, pretrained, tmp_path, monkeypatch):
    seen = {}
    real = finetune.check_frozen

    def spy(backbone, before):
        seen["training"] = backbone.training
        real(backbone, before)
    monkeypatch.setattr(finetune, "check_frozen", spy)
    main_cls.main(cls_args(demo_root, pretrained, tmp_path / "r.csv", "--mode", "41", "--ts", "2", "--hos", "9",
                           "--mepoch", "1", "--expnum", "20186093531_pretrain", "--cepoch", "1"))
    assert seen["training"] is False


def test_probe_sweep_extracts_features_once_and_writes_a_row_per_draw(demo_root, pretrained, tmp_path, caplog):
    res = tmp_path / "p.csv"
    base = cls_args(demo_root, pretrained, res, "--mode", "41", "--expnum", "20186093531_pretrain", "--cepoch", "1")
    with caplog.at_level("INFO"):
        main_cls.main(base + ["--probe", "logreg", "--ts", "2,5", "--nseeds", "2"])
    assert caplog.text.count("frozen features of") == 1
    caplog.clear()
    with caplog.at_level("INFO"):
        main_cls.main(base + ["--probe", "knn", "--ts", "2", "--knn-vote", "majority", "--knn-k", "5"])
        main_cls.main(base + ["--probe", "knn", "--ts", "0.1"])             # 1 shot per class: 6 < k = 20
    assert caplog.text.count("frozen features from cache") == 2 and "frozen features of" not in caplog.text
    got = rows(res)
    assert [(r["probe"], r["ts"], r["seed"]) for r in got] == [
        ("logreg", "2.0", "0"), ("logreg", "2.0", "1"), ("logreg", "5.0", "0"), ("logreg", "5.0", "1"),
        ("knn", "2.0", "0"), ("knn", "0.1", "0")]
    assert [r["n_train"] for r in got] == ["12", "12", "30", "30", "12", "6"]
    assert all(r["probe_param"].startswith("C=") and r["select_on"] == "shots" for r in got[:4])
    assert [r["selection_labels"] for r in got[:4]] == ["shots:12", "shots:12", "shots:30", "shots:30"]
    assert got[4]["probe_param"] == "k=5,majority" and got[5]["probe_param"] == "k=6,weighted"
    assert "--knn-k 20 exceeds the 6 shots" in caplog.text
    assert {r["n_test"] for r in got} == {"12"}


def test_training_modes_run_every_train_scale(demo_root, tmp_path):
    res = tmp_path / "r.csv"
    main_cls.main(cls_args(demo_root, tmp_path / "ck", res, "--mode", "11", "--ts", "0.1,2", "--mepoch", "1"))
    assert [(r["ts"], r["n_train"]) for r in rows(res)] == [("0.1", "6"), ("2.0", "12")]
    assert len(list((tmp_path / "ck").glob(f"{NET}_*_ts0.1_s0_1.pth"))) == 1
    assert len(list((tmp_path / "ck").glob(f"{NET}_*_ts2_s0_1.pth"))) == 1


def test_pretraining_takes_one_train_scale(demo_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(["--mode", "910", "--ds", "demo", "--data-root", str(demo_root), "--ts", "5,20"])
    assert e.value.code == 2
    assert "pretraining takes one train scale" in capsys.readouterr().err


def test_train_then_test_and_val_modes(demo_root, tmp_path):
    res, ck = tmp_path / "r.csv", tmp_path / "ck"
    main_cls.main(cls_args(demo_root, ck, res, "--mode", "11", "--ts", "3", "--mepoch", "2"))
    (saved,) = sorted(ck.glob(f"{NET}_*_finetune_ts3_s0_2.pth")) or sorted(ck.glob(f"{NET}_*_train_ts3_s0_2.pth"))
    expnum = saved.name[len(NET) + 1:-len("_2.pth")]
    main_cls.main(cls_args(demo_root, ck, res, "--mode", "31", "--ts", "3", "--expnum", expnum, "--cepoch", "2"))
    main_cls.main(cls_args(demo_root, ck, res, "--mode", "21", "--ts", "3", "--expnum", expnum, "--cepoch", "2"))
    train_row, test_row, val_row = rows(res)
    assert train_row["pretrain_expnum"] == "random" and test_row["mode"] == "31"
    assert train_row["OA"] == test_row["OA"]                    # the saved classifier reproduces its score
    # mode 2x scores the fixed validation slice (engine/labels.py), not the training images outside the draw
    job = evaljob.resolve(evaljob.add_args(base_parser("t", script="cls")).parse_args(
        cls_args(demo_root, ck, res, "--mode", "21", "--ts", "3", "--expnum", expnum, "--cepoch", "2")))
    val = {s.path.relative_to(job.opt.root).as_posix() for s in job.index.val}
    assert len(val) == 6 and int(val_row["n_test"]) == 6     # 8 training images per class -> 1 in the slice
    with open(res.parent / val_row["predictions"], newline="") as f:
        assert {r["path"] for r in csv.DictReader(f)} == val
    assert val_row["split_version"] == test_row["split_version"] == job.index.split_version


def test_resume_continues_a_classifier(demo_root, tmp_path, caplog):
    res, ck = tmp_path / "r.csv", tmp_path / "ck"
    main_cls.main(cls_args(demo_root, ck, res, "--mode", "11", "--ts", "2", "--mepoch", "1"))
    (saved,) = sorted(ck.glob(f"{NET}_*_ts2_s0_1.pth"))
    with caplog.at_level("INFO"):
        main_cls.main(cls_args(demo_root, ck, res, "--mode", "11", "--ts", "2", "--mepoch", "2", "--sepoch", "1",
                               "--resume", str(saved)))
    assert "training continues at epoch 2" in caplog.text
    assert "seed 0 epoch 1/2" not in caplog.text and "seed 0 epoch 2/2" in caplog.text
    assert len(rows(res)) == 2


def test_tta_averages_eight_views(demo_root, tmp_path, monkeypatch):
    from datasets import views
    calls = {"n": 0}
    real = views.tta_views

    def counting(x):
        out = real(x)
        calls["n"] += len(out)
        return out
    monkeypatch.setattr(finetune, "tta_views", counting)
    main_cls.main(cls_args(demo_root, tmp_path / "ck", tmp_path / "r.csv", "--mode", "11", "--ts", "2",
                           "--mepoch", "1", "--tta"))
    assert calls["n"] == 8


def test_shard_sampler_counts_every_image_once():
    for n, world in [(11, 2), (12, 3), (5, 4)]:
        shards = [list(finetune.ShardSampler(n, r, world)) for r in range(world)]
        flat = sorted(i for s in shards for i in s)
        assert flat == list(range(n))


def test_distributed_finetune_counts_each_test_image_once(demo_root, tmp_path):
    res = tmp_path / "d.csv"
    r = run_script(["main_cls.py", *cls_args(demo_root, tmp_path / "ck", res, "--mode", "11", "--ts", "3",
                                             "--mepoch", "1", "--mp-distributed", "--nproc", "2",
                                             "--dist-url", "tcp://127.0.0.1:29541")], timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (row,) = rows(res)
    assert int(row["n_test"]) == 12


BAD = [
    (["--mode", "41", "--expnum", "nope", "--cepoch", "3"], "does not exist"),
    (["--mode", "41"], "needs --expnum and --cepoch"),
    (["--mode", "910"], "run it with main_cls_ss_train.py"),
    (["--mode", "11", "--hos", "5"], "--hos 5 is not a protocol"),
    (["--mode", "31", "--probe", "knn", "--expnum", "x", "--cepoch", "1"], "does not exist"),
    (["--mode", "11", "--ts", "-1"], "--ts -1 is not a train scale"),
    (["--mode", "11", "--ts", "0"], "--ts 0 is not a train scale"),
    (["--mode", "11", "--ts", "nan"], "--ts nan is not a train scale"),
    (["--mode", "11", "--ts", "inf"], "--ts inf is not a train scale"),
    (["--mode", "11", "--ts", "5,nan"], "--ts nan is not a train scale"),
    (["--mode", "11", "--ts", "5.5"], "must be a whole number"),
    (["--mode", "11", "--ts", "five"], "--ts five is not a number"),
    (["--mode", "11", "--ts", "5,,20"], "empty value in the list"),
    (["--mode", "11", "--ts", "5,5"], "repeats a value"),
    (["--mode", "31", "--ts", "5,20", "--expnum", "e", "--cepoch", "1"], "give a single --ts"),
    (["--mode", "11", "--probe", "knn", "--select-on", "val"], "--select-on belongs to --probe logreg"),
    (["--mode", "11", "--knn-k", "5"], "--knn-k belongs to --probe knn"),
    (["--mode", "11", "--probe", "knn", "--knn-k", "0"], "--knn-k 0 must be >= 1"),
    (["--mode", "11", "--loss", "Focal"], "--loss Focal"),
    (["--mode", "11", "--expnum", "x", "--cepoch", "1"], "drop them"),
    ([], "--mode is required"),
    (["--mode", "11", "--sepoch", "500"], "--sepoch 500 says epochs already done"),
    (["--mode", "11", "--expnum", "x"], "drop them"),
    (["--mode", "11", "--probe", "knn", "--tta"], "--tta averages a trained classifier"),
    (["--mode", "41", "--ptcp", "1", "--expnum", "e", "--cepoch", "1"], "drop --ptcp"),
    (["--mode", "31", "--encoder_cp", "x.pth", "--expnum", "e", "--cepoch", "1"], "--encoder_cp gives the backbone"),
    (["--mode", "11", "--probe", "knn", "--mp-distributed"], "--probe runs in one process"),
    (["--mode", "11", "--resume", "/nonexistent.pth"], "--resume /nonexistent.pth: no such file"),
    (["--mode", "31", "--resume", "/x.pth", "--expnum", "e", "--cepoch", "1"], "does not apply to --mode 31"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_exits_2(demo_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main_cls.main(cls_args(demo_root, tmp_path, tmp_path / "r.csv", *extra))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r.csv").exists()


def test_band_mismatch_names_the_file(demo_root, pretrained, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main_cls.main(cls_args(demo_root, pretrained, tmp_path / "r.csv", "--mode", "41", "--ts", "2", "--mepoch", "1",
                               "--dtype", "RGB", "--expnum", "20186093531_pretrain", "--cepoch", "1"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "20186093531_pretrain_1.pth" in err and "13" in err and "3" in err


def test_val_and_test_modes_check_the_classifier_against_its_split_and_classes(demo_root, tmp_path, capsys):
    """Issue 19: a classifier records its split version, shots and classes; --mode 2x/3x refuse another split
    or dataset, and their rows take seed, train scale and n_train from the checkpoint."""
    import torch

    from datasets.index import split_csv
    from datasets.options import get_opt
    from tests.datasets.trees import class_tree
    res, ck = tmp_path / "r.csv", tmp_path / "ck"
    main_cls.main(cls_args(demo_root, ck, res, "--mode", "11", "--ts", "3", "--mepoch", "1", "--seed", "2"))
    (saved,) = sorted(ck.glob(f"{NET}_*_train_ts3_s2_1.pth"))
    meta = torch.load(saved, weights_only=False)["meta"]
    expnum = saved.name[len(NET) + 1:-len("_1.pth")]
    job = evaljob.resolve(evaljob.add_args(base_parser("t", script="cls")).parse_args(
        cls_args(demo_root, ck, res, "--mode", "31", "--expnum", expnum, "--cepoch", "1")))
    assert meta["split_version"] == job.index.split_version and meta["classes"] == list(job.opt.classes)
    assert meta["n_train"] == 18 and len(meta["shots"]) == 18 and set(meta["shots"]) <= {s.key for s in job.index.pool}
    main_cls.main(cls_args(demo_root, ck, res, "--mode", "31", "--expnum", expnum, "--cepoch", "1"))
    train_row, test_row = rows(res)
    assert (test_row["seed"], test_row["ts"], test_row["n_train"]) == ("2", "3.0", "18") == \
        (train_row["seed"], train_row["ts"], train_row["n_train"])
    # another split of the same files: the classifier's shots could be test images there
    opt = get_opt("demo", evaljob.add_args(base_parser("t", script="cls")).parse_args(
        cls_args(demo_root, ck, res, "--mode", "11")))
    other = tmp_path / "other.csv"
    lines = split_csv(opt, job.index).splitlines()
    other.write_text("\n".join([lines[0]] + [ln.replace(",test,", ",TMP,").replace(",train,", ",test,")
                                             .replace(",TMP,", ",train,") for ln in lines[1:]]) + "\n")
    with pytest.raises(SystemExit) as e:
        main_cls.main(cls_args(demo_root, ck, res, "--mode", "31", "--expnum", expnum, "--cepoch", "1",
                               "--split-file", str(other)))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "split" in err and job.index.split_version in err and "Traceback" not in err
    # another dataset with as many classes and bands
    mine = class_tree(tmp_path / "mine", {c: 5 for c in "ABCDEF"}, bands=13)
    argv = cls_args(demo_root, ck, res, "--mode", "31", "--expnum", expnum, "--cepoch", "1")
    argv[argv.index("--ds") + 1] = str(mine)
    with pytest.raises(SystemExit) as e:
        main_cls.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "demo" in err and "--ds" in err and "Traceback" not in err
    # a --seed or --ts other than the classifier's is a contradiction, not a silent relabel
    with pytest.raises(SystemExit) as e:
        main_cls.main(cls_args(demo_root, ck, res, "--mode", "31", "--expnum", expnum, "--cepoch", "1", "--seed", "4"))
    assert e.value.code == 2 and "--seed 2" in capsys.readouterr().err
    assert len(rows(res)) == 2


class _Draws:
    """A dataset whose items are fresh random draws: what a worker's augmentation stream gives."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        import torch
        return torch.rand(1), 0, i


def test_fine_tuning_ranks_draw_their_own_augmentation_streams():
    """Issue 19: under DDP each rank's DataLoader generator folds in the rank (as pretraining does), so two ranks'
    workers never repeat one another's random draws; rank 0 keeps the single-process stream."""
    import torch

    from engine.runtime import Runtime
    streams = []
    for rank in (0, 1):
        rt = Runtime(torch.device("cpu"), rank=rank, world=2, distributed=True)
        loader, sampler, gen = finetune.train_loader(_Draws(), 4, rt, seed=3, workers=1)
        finetune.start_epoch(sampler, gen, seed=3, epoch=0, rank=rank)
        streams.append(torch.cat([x for x, _, _ in loader]))
    assert not torch.equal(streams[0], streams[1])
    single = Runtime(torch.device("cpu"))
    loader, sampler, gen = finetune.train_loader(_Draws(), 4, single, seed=3, workers=1)
    finetune.start_epoch(sampler, gen, seed=3, epoch=0, rank=0)
    assert gen.initial_seed() == 3 * 1_000_003            # the single-process value, unchanged


def test_a_classifier_on_a_test_chosen_backbone_is_refused_by_val_test_and_resume(demo_root, tmp_path, capsys):
    """Issue 19: --mode 2x/3x and --resume check the classifier's own record of how its backbone was chosen."""
    import torch
    res, ck = tmp_path / "r.csv", tmp_path / "ck"
    main_cls.main(cls_args(demo_root, ck, res, "--mode", "11", "--ts", "3", "--mepoch", "1", "--seed", "2"))
    (saved,) = sorted(ck.glob(f"{NET}_*_train_ts3_s2_1.pth"))
    state = torch.load(saved, weights_only=False)
    state["meta"]["selected_by"] = "knn-test"            # a backbone chosen by the kNN monitor on TEST labels
    torch.save(state, saved)
    expnum = saved.name[len(NET) + 1:-len("_1.pth")]
    for extra in (["--mode", "31", "--expnum", expnum, "--cepoch", "1"],
                  ["--mode", "11", "--ts", "3", "--mepoch", "2", "--seed", "2", "--resume", str(saved)]):
        with pytest.raises(SystemExit) as e:
            main_cls.main(cls_args(demo_root, ck, res, *extra))
        err = capsys.readouterr().err
        assert e.value.code == 2 and "knn-test" in err and "validation slice" in err and "Traceback" not in err
