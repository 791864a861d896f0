"""The run identity: every flag of main_cls.py that can change a row's number is a column, derived from the
parser (issue 19 §2), and rows record them, with the pretraining's settings from the checkpoint."""
from __future__ import annotations

import argparse
import csv
import hashlib

import pytest
import torch

import main_cls
from engine import evaljob, identity
from engine.cli import base_parser
from engine.results import RESULT_COLUMNS, append_result
from scripts import summarize

NET = "000000"


def _parser() -> argparse.ArgumentParser:
    return evaljob.add_args(base_parser("", "cls"))


def test_every_flag_is_a_column_or_says_why_it_cannot_change_the_number():
    cols = identity.flag_columns(_parser())
    dests = {a.dest for a in _parser()._actions} - {"help"}
    assert set(cols) | set(identity.NOT_IDENTITY) >= dests                   # nothing falls through
    assert set(cols).isdisjoint(identity.NOT_IDENTITY)
    missing = sorted({c for c in cols.values() if c not in RESULT_COLUMNS})
    assert missing == []
    assert {"lr_policy", "warmup", "momentum", "milestones", "lr_decay", "amp", "init_sha", "loss", "sync_bn",
            "processes", "resumed", "rgb_bands"} <= set(cols.values())
    assert set(cols.values()) - set(identity.OUTCOME_COLUMNS) <= set(summarize.IDENTITY)


def test_a_new_flag_is_identity_until_declared_otherwise(tmp_path):
    """Derived, not a hand list: a flag added to the parser joins the identity at once, and a row that
    records it needs its column (append_result refuses an unknown one)."""
    p = _parser()
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=0.1)
    cols = identity.flag_columns(p)
    assert cols["label_smoothing"] == "label_smoothing"
    row = identity.flag_values(p.parse_args([]), cols)
    assert row["label_smoothing"] == 0.1 and row["lr_policy"] == "cosine" and row["milestones"] == ""
    with pytest.raises(ValueError, match="label_smoothing"):
        append_result(tmp_path / "r.csv", {"ds": "x", **{k: v for k, v in row.items() if k == "label_smoothing"}})


def test_summarize_identity_is_every_column_but_the_outcomes():
    assert set(summarize.IDENTITY) == (set(RESULT_COLUMNS) - set(identity.OUTCOME_COLUMNS)) | {"probe_kind"}
    assert summarize.IDENTITY[-1] == "ts" and "mode" in summarize.PAIR_KEYS


def test_rows_record_the_schedule_the_weights_file_and_the_pretraining(demo_root, tmp_path):
    import torchvision
    res, ck = tmp_path / "r.csv", tmp_path / "ck"
    common = ["--ds", "demo", "--data-root", str(demo_root), "--input_size", "16", "--workers", "0",
              "--ckpt", str(ck), "--results", str(res), "--no-progress", "--ts", "2"]
    main_cls.main([*common, "--netnum", NET, "--mode", "11", "--bs", "8", "--lr_policy", "step",
                   "--milestones", "2", "--lr_decay", "0.5", "--warmup", "0.5", "--momentum", "0.8", "--mepoch", "3"])
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    main_cls.main([*common, "--netnum", "090000", "--dtype", "RGB", "--mode", "11", "--weights", str(weights),
                   "--probe", "knn"])
    import main_cls_ss_train
    main_cls_ss_train.main(["--mode", "910", "--ds", "demo", "--data-root", str(demo_root), "--netnum", NET,
                            "--input_size", "16", "--bs", "8", "--mepoch", "1", "--workers", "0", "--ckpt", str(ck),
                            "--expnum", "P_pretrain", "--knn-freq", "0", "--no-progress", "--optimizer", "sgd",
                            "--lr", "0.05", "--seed", "7"])
    meta = torch.load(ck / f"{NET}_P_pretrain_1.pth", weights_only=True)["meta"]
    main_cls.main([*common, "--netnum", NET, "--mode", "41", "--expnum", "P_pretrain", "--cepoch", "1", "--probe",
                   "logreg"])
    with open(res, newline="") as f:
        trained, imagenet, probe = list(csv.DictReader(f))
    assert (trained["lr_policy"], trained["milestones"], trained["lr_decay"], trained["warmup"], trained["momentum"],
            trained["amp"], trained["loss"], trained["processes"], trained["sync_bn"]) == \
        ("step", "2", "0.5", "0.5", "0.8", "0", "CrossEntropyLoss", "1", "0")
    assert imagenet["init_sha"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert imagenet["lr_policy"] == imagenet["momentum"] == ""             # a probe trains nothing
    assert meta["code_version"] and probe["pretrain_code_version"] == meta["code_version"]
    assert (probe["pretrain_optimizer"], probe["pretrain_lr"], probe["pretrain_bs"], probe["pretrain_epochs"],
            probe["pretrain_seed"], probe["pretrain_steps"]) == ("sgd", "0.05", "8", "1", "7", str(meta["steps"]))
    assert meta["steps"] >= 1
    ckpt_file = ck / f"{NET}_P_pretrain_1.pth"
    assert probe["init_sha"] == hashlib.sha256(ckpt_file.read_bytes()).hexdigest()[:16]


def test_pretrain_config_names_a_configuration_whatever_its_seed():
    from engine.identity import pretrain_config
    base = {"tau": 0.2, "hidden_dim": 2048, "lr": 0.1, "seed": 0, "expnum": "a_pretrain", "workers": 2}
    assert pretrain_config({**base, "seed": 1, "expnum": "b_pretrain", "workers": 0}) == pretrain_config(base)
    assert pretrain_config({**base, "tau": 0.5}) != pretrain_config(base)
    assert pretrain_config({**base, "hidden_dim": 512}) != pretrain_config(base)
    assert len(pretrain_config(base)) == 12 and pretrain_config({}) == ""
