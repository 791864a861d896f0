"""The commands users already type (../shared/SPEC.md, "Who uses it"), flags as written.

Only what a CPU test cannot afford is overridden AFTER the verbatim flags (argparse keeps
the last value): data root, epochs, batch size, input size, output folders.
"""
from __future__ import annotations

import csv
import re
import shlex

from tests.conftest import SHARED, needs_aid, needs_eurosat, run_script

PRETRAIN = ("--mode 910 --ds euroms --ts 1 --netnum 020000 --lr 1e-4 --lr_policy cosine --mepoch 400 --bs 256 "
            "--loss NTXentLoss --optimizer adam --pin-memory --aug 3 --aug_p S5 --mp-distributed "
            "--dist-url 'tcp://localhost:10010'")
FINETUNE = ("--ds aid --ts {ts} --mode 41 --lr 4e-4 --lr_policy cosine --mepoch 200 --wd 0 --hos 9 --bs 64 "
            "--optimizer adam --netnum 020000 --expnum 20186093531_pretrain --cepoch 400")


@needs_eurosat
@needs_aid
def test_spec_pretraining_and_seed_loop_run_as_written(tmp_path):
    ck = tmp_path / "ckpt"
    # 1. pretraining on EuroSAT 13 bands, as typed, on CPU (--mp-distributed -> one gloo process)
    r = run_script(["main_cls_ss_train.py", *shlex.split(PRETRAIN), "--data-root", str(SHARED),
                    "--ts", "0.1", "--bs", "16", "--mepoch", "1", "--ckpt", str(ck), "--workers", "0",
                    "--expnum", "20186093531_pretrain_ms", "--dist-url", "tcp://127.0.0.1:29551", "--no-progress"],
                   timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"mode 910 \(simclr\) \| netnum 020000 \| euroms: 3\d training images, 13 bands 64x64", r.stdout)
    assert (ck / "020000_20186093531_pretrain_ms_1.pth").exists()
    # 2. an RGB ResNet-50 checkpoint named as in the SPEC, from AID pretraining (3 bands)
    r = run_script(["main_cls_ss_train.py", "--mode", "910", "--ds", "aid", "--data-root", str(SHARED), "--ts", "0.02",
                    "--netnum", "020000", "--bs", "16", "--mepoch", "1", "--input_size", "64", "--ckpt", str(ck),
                    "--workers", "0", "--expnum", "20186093531_pretrain", "--knn-freq", "0", "--no-progress"],
                   timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (ck / "020000_20186093531_pretrain_1.pth").rename(ck / "020000_20186093531_pretrain_400.pth")
    # 3. the few-shot loop of the SPEC
    res = tmp_path / "aid.csv"
    for ts in (5, 20):
        r = run_script(["main_cls.py", *shlex.split(FINETUNE.format(ts=ts)), "--data-root", str(SHARED),
                        "--ckpt", str(ck), "--results", str(res), "--mepoch", "1", "--input_size", "64",
                        "--workers", "0", "--no-progress"], timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "linear probe check passed" in r.stdout
    with open(res) as f:
        rows = list(csv.DictReader(f))
    assert [(r["ts"], r["n_train"], r["n_test"], r["hos"]) for r in rows] == [("5.0", "150", "300", "9"),
                                                                              ("20.0", "600", "300", "9")]
    assert all(r["pretrain_expnum"] == "20186093531_pretrain" and r["pretrain_epoch"] == "400" for r in rows)


def test_torchrun_launch(demo_root, tmp_path):
    r = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "main_cls_ss_train.py", "--mode", "910", "--ds", "demo", "--data-root", str(demo_root),
                    "--netnum", "090000", "--input_size", "32", "--bs", "16", "--mepoch", "1", "--workers", "0",
                    "--ckpt", str(tmp_path), "--expnum", "5_pretrain", "--no-progress"], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "batch 16 (8 x 2 processes)" in r.stdout
    assert (tmp_path / "090000_5_pretrain_1.pth").exists()


def test_list_codes_on_both_scripts():
    for script in ("main_cls_ss_train.py", "main_cls.py"):
        r = run_script([script, "--list-codes"], timeout=120)
        assert r.returncode == 0 and "resnet18_small" in r.stdout and "020000" in r.stdout
    assert "910" in run_script(["main_cls_ss_train.py", "--list-codes"]).stdout
    assert "finetune" in run_script(["main_cls.py", "--list-codes"]).stdout
