"""A short pretraining + probe run pinned to the numbers the code gave before the house was rebuilt.

Issue 20 moved every definition of the engine and changed what the engine receives (a resolved
plan instead of the parsed namespace); its promise was "same CLI, same codes, same checkpoints,
same rows". This test holds it: SimCLR for 2 epochs on the demo data, then the logistic-regression
probe, must give the row and the checkpoint that commit ffb88ea gave (``pinned_run.json``, written
by ``python tests/test_pinned_run.py --write`` on that commit). Every flag that a recipe or a later
default could fill is given explicitly, and weight decay is 0, so the pin measures the refactor and
nothing else; one intra-op thread makes the float sums repeatable. The memory layout is the old
contiguous one (``--no-channels-last``): channels_last, now the default, rounds convolutions in
another order, and two epochs of training carry that to a few percent on some weight sums.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).with_name("pinned_run.json")
NET, EXP = "090000", "26001000000_pretrain"
PRETRAIN = ["--mode", "910", "--ds", "demo", "--netnum", NET, "--mepoch", "2", "--bs", "16", "--optimizer", "adam",
            "--lr", "1e-3", "--wd", "0", "--momentum", "0.9", "--lr_policy", "cosine", "--warmup", "0",
            "--tau", "0.5", "--feature_dim", "128", "--aug", "5", "--aug_p", "S5", "--workers", "0",
            "--knn-freq", "0", "--seed", "0", "--input_size", "32", "--expnum", EXP, "--no-progress", "--no-channels-last"]
PROBE = ["--mode", "41", "--ds", "demo", "--netnum", NET, "--expnum", EXP, "--cepoch", "2", "--probe", "logreg",
         "--ts", "3", "--nseeds", "1", "--seed", "0", "--input_size", "32", "--workers", "0", "--no-progress",
         "--no-channels-last"]
ROW_KEYS = ("ds", "split_version", "ts", "seed", "mode", "netnum", "pretext", "pretrain_expnum", "pretrain_epoch",
            "ckpt_selected_by", "probe", "probe_param", "select_on", "selection_labels", "OA", "AA", "kappa",
            "macro_F1", "n_train", "n_test", "per_class")


def run_pinned(work: Path) -> dict:
    """Run both scripts in subprocesses (one thread each); return the row, checkpoint keys and weight sums."""
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "RSSSL_CACHE": str(work / "cache")}
    common = ["--data-root", str(work / "data"), "--ckpt", str(work / "ck")]
    for script, extra in (("main_cls_ss_train.py", PRETRAIN), ("main_cls.py", PROBE + ["--results", str(work / "r.csv")])):
        out = subprocess.run([sys.executable, str(REPO / script), *extra, *common], cwd=work, env=env,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    row = next(csv.DictReader(open(work / "r.csv")))
    ck = torch.load(work / "ck" / f"{NET}_{EXP}_2.pth", map_location="cpu", weights_only=True)
    return {"row": {k: row[k] for k in ROW_KEYS},
            "backbone_keys": sorted(ck["backbone"]),
            "meta_keys": sorted(ck["meta"]),
            "weight_sums": {k: float(v.double().abs().sum()) for k, v in sorted(ck["backbone"].items())
                            if v.is_floating_point()}}


@pytest.mark.skipif(not PINNED.exists(), reason="no pinned_run.json")
def test_refactor_keeps_the_row_and_the_checkpoint(tmp_path):
    want = json.loads(PINNED.read_text())
    got = run_pinned(tmp_path)
    assert got["backbone_keys"] == want["backbone_keys"]
    assert set(want["meta_keys"]) <= set(got["meta_keys"])         # meta may only gain keys
    for k, v in want["weight_sums"].items():
        assert got["weight_sums"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    for k, v in want["row"].items():
        if k == "split_version":
            continue                     # depends on the demo files, checked by the dataset tests
        assert got["row"][k] == v, k


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        PINNED.write_text(json.dumps(run_pinned(Path(d)), indent=1, sort_keys=True) + "\n")
    print("wrote", PINNED)
