"""SimCLR pretraining through the real entry script (tiny demo data, CPU)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main_cls_ss_train
from engine import pretrain
from tests.conftest import REPO


def args_for(root: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["--mode", "910", "--ds", "demo", "--data-root", str(root), "--netnum", "090000", "--input_size", "32",
            "--bs", "16", "--mepoch", "2", "--lr", "1e-3", "--aug", "5", "--aug_p", "S5", "--workers", "0",
            "--ckpt", str(ckpt), "--no-progress", *extra]


def only(pattern: str, folder: Path) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_cli_pretrain_writes_backbone_log_and_events(demo_root, tmp_path):
    main_cls_ss_train.main(args_for(demo_root, tmp_path, "--expnum", "20186093531_pretrain", "--vis"))
    ck = tmp_path / "090000_20186093531_pretrain_2.pth"
    state = torch.load(ck, weights_only=True)
    assert state["meta"]["in_channels"] == 13 and state["meta"]["pretext"] == "simclr"
    assert state["meta"]["epoch"] == 2 and any(k.startswith("body.") or "conv1" in k for k in state["backbone"])
    with open(tmp_path / "090000_20186093531_pretrain_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["loss"]) > 0 and 0 < float(r["emb_std"]) < 1 and 0 <= float(r["knn_top1"]) <= 100
        assert float(r["img_per_s"]) > 0
    # cosine schedule: the lr logged at the end of epoch 2 is far below the base lr
    assert float(rows[1]["lr"]) < float(rows[0]["lr"]) < 1e-3
    assert "loss" in rows[0] and "emb_std" in rows[0]
    assert list((tmp_path / "tb" / "090000_20186093531_pretrain").glob("events.out.tfevents.*"))
    figs = sorted(p.name for p in tmp_path.glob("090000_20186093531_pretrain_vis_e*.png"))
    assert figs == ["090000_20186093531_pretrain_vis_e0001.png", "090000_20186093531_pretrain_vis_e0002.png"]
    assert (tmp_path / "090000_20186093531_pretrain_best.pth").exists()


def test_resume_reaches_the_same_weights(demo_root, tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    main_cls_ss_train.main(args_for(demo_root, full, "--mepoch", "3", "--ckpt_freq", "1", "--expnum", "1_pretrain",
                                    "--knn-freq", "0"))
    real = pretrain.train_one_epoch
    calls = {"n": 0}

    def crash_after_two(*a, **k):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(pretrain, "train_one_epoch", crash_after_two)
    with pytest.raises(SystemExit) as stop:      # Ctrl-C: exit 130, no traceback
        main_cls_ss_train.main(args_for(demo_root, part, "--mepoch", "3", "--ckpt_freq", "1", "--expnum", "2_pretrain",
                                        "--knn-freq", "0"))
    assert stop.value.code == 130
    assert not (part / "090000_2_pretrain_3.pth").exists()
    monkeypatch.setattr(pretrain, "train_one_epoch", real)
    main_cls_ss_train.main(args_for(demo_root, part, "--mepoch", "3", "--ckpt_freq", "1", "--knn-freq", "0",
                                    "--resume", str(part / "090000_2_pretrain_state.pth")))
    a = torch.load(full / "090000_1_pretrain_3.pth", weights_only=True)["backbone"]
    b = torch.load(part / "090000_2_pretrain_3.pth", weights_only=True)["backbone"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed run continued the same log
    with open(part / "090000_2_pretrain_log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(demo_root, tmp_path, monkeypatch, capsys):
    from models.pretext import simclr
    real = simclr.SimCLR.forward
    calls = {"n": 0}

    def nan_in_epoch_two(self, views):
        loss, stats = real(self, views)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 3 else loss), stats   # 3 iterations per epoch

    monkeypatch.setattr(simclr.SimCLR, "forward", nan_in_epoch_two)
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(args_for(demo_root, tmp_path, "--mepoch", "3", "--ckpt_freq", "1", "--expnum", "3_pretrain"))
    assert e.value.code == 1
    out = capsys.readouterr()
    assert "loss became nan at epoch 2" in (out.out + out.err)
    good = torch.load(tmp_path / "090000_3_pretrain_1.pth", weights_only=True)["backbone"]
    assert all(torch.isfinite(v.float()).all() for v in good.values())
    assert not (tmp_path / "090000_3_pretrain_2.pth").exists()


def test_two_gloo_processes_train(demo_root, tmp_path):
    from tests.conftest import run_script
    r = run_script(["main_cls_ss_train.py", *args_for(demo_root, tmp_path, "--mp-distributed", "--nproc", "2",
                                                     "--mepoch", "1", "--expnum", "4_pretrain", "--pin-memory",
                                                     "--dist-url", "tcp://127.0.0.1:29533")], timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "batch 16 (8 x 2 processes)" in r.stdout
    assert "no GPU: using the gloo backend instead of nccl" in r.stdout
    assert (tmp_path / "090000_4_pretrain_1.pth").exists()
    # the node's one shared --pin-memory copy was built, mapped by both processes, and its name removed
    assert "--pin-memory: one cache per node, shared by its processes (2 in all)" in r.stdout
    assert not list(Path("/dev/shm").glob("rsssl_4_pretrain_*"))


def test_killed_worker_ends_the_job_without_hanging(demo_root, tmp_path):
    cmd = [sys.executable, "main_cls_ss_train.py", *args_for(demo_root, tmp_path, "--mp-distributed", "--nproc", "2",
                                                               "--mepoch", "200", "--dist-url", "tcp://127.0.0.1:29534")]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 240
        for line in p.stdout:
            if "epoch 1/200" in line or time.time() > deadline:
                break
        kids = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(p.pid)], capture_output=True, text=True).stdout
        workers = [int(l.split()[0]) for l in kids.splitlines() if "multiprocessing.spawn" in l]
        assert len(workers) == 2, kids
        os.kill(workers[-1], signal.SIGKILL)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode not in (0, None)


BAD = [
    (["--ds", "nosuch"], "--ds 'nosuch' is not a known dataset"),
    (["--dtype", "SAR"], "--dtype SAR is not available"),
    (["--aug", "7"], "7"),
    (["--aug_p", "Z9"], "Z9"),
    (["--mode", "919"], "--mode 919 is not a pretraining mode"),
    (["--mode", "41"], "run it with main_cls.py"),
    (["--sync-bn", "--mp-distributed"], "--sync-bn needs GPUs"),
    (["--nproc", "2"], "--nproc set up several processes; add --mp-distributed"),
    (["--gpu", "0", "--mp-distributed"], "drop --gpu"),
    (["--rgb-bands", "4,3,2"], "--rgb-bands is for your own imagery"),
    (["--mode", "96", "--aug", "3"], "--mode 96 (inpaint) makes its own views"),
    (["--mt-tasks", "inpaint"], "--mt-tasks belongs to --mode 920 (multitask), not 910 (simclr)"),
    (["--jigsaw-perms", "10"], "--jigsaw-perms belongs to --mode 972/973 (jigsaw4, jigsaw9), not 910"),
    (["--netnum", "0A0000"], "--netnum '0A0000' must be a 6-digit string"),
    (["--ts", "0"], "--ts 0 is not a train scale"),
    (["--loss", "TripletLoss"], "--loss TripletLoss does not fit"),
    (["--optimizer", "rmsprop"], "rmsprop"),
    (["--lr_policy", "exp"], "exp"),
    (["--resume", "/nonexistent/state.pth"], "--resume /nonexistent/state.pth: no such file"),
    (["--cepoch", "5"], "--cepoch needs --expnum"),
    (["--bs", "1000"], "--bs 1000"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_exits_2_with_one_sentence(demo_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(args_for(demo_root, tmp_path, *extra))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.pth"))


def test_contrastive_flags_fail_for_other_pretexts(demo_root, tmp_path, capsys):
    argv = [a for a in args_for(demo_root, tmp_path) if a not in ("--aug", "5", "--aug_p", "S5")]
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(argv + ["--mode", "96", "--tau", "0.1"])
    assert e.value.code == 2
    assert "--tau applies to the modes with a temperature (910/920/911/916); --mode 96 (inpaint) has none" \
        in capsys.readouterr().err


def test_missing_data_root_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(["--mode", "910", "--ds", "euroms", "--data-root", str(tmp_path / "none")])
    assert e.value.code == 2
    assert "dataset euroms not found: looked in" in capsys.readouterr().err


def test_log_says_how_far_the_backbone_moved(demo_root, tmp_path):
    """``backbone_moved`` = ||W - W0|| / ||W0|| over the backbone's weight tensors, W0 the run's start."""
    from engine.runtime import reseed
    from models import build_backbone
    main_cls_ss_train.main(args_for(demo_root, tmp_path, "--expnum", "1_pretrain", "--knn-freq", "0"))
    with open(tmp_path / "090000_1_pretrain_log.csv") as f:
        moved = [float(r["backbone_moved"]) for r in csv.DictReader(f)]
    reseed(0, 0, 0)                                       # what main_worker does before building it
    start, _ = build_backbone("090000", 13)
    end = torch.load(tmp_path / "090000_1_pretrain_2.pth", weights_only=True)["backbone"]
    w0 = {k: v for k, v in start.state_dict().items() if v.ndim >= 2}
    expect = (sum(float((end[k] - w).square().sum()) for k, w in w0.items())
              / sum(float(w.square().sum()) for w in w0.values())) ** 0.5
    assert 0 < moved[0] < moved[1] and moved[1] == pytest.approx(expect, rel=1e-4)


def test_dry_run_prints_the_resolved_plan_and_writes_nothing(demo_root, tmp_path, capsys):
    import json
    ck = tmp_path / "ck"
    main_cls_ss_train.main(["--mode", "912", "--ds", "demo", "--data-root", str(demo_root), "--netnum", "090000",
                            "--input_size", "32", "--bs", "16", "--recipe", "small", "--mepoch", "4", "--dry-run",
                            "--ckpt", str(ck), "--no-progress"])
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["recipe"] == "small" and plan["optimizer"] == "lars"
    assert plan["lr"] == pytest.approx(plan["lr_base"] * 16 / 256)           # the recipe's linear rule
    assert plan["iters_per_epoch"] == plan["n_train"] // 16 and plan["steps"] == 4 * plan["iters_per_epoch"]
    assert not ck.exists() or not any(ck.iterdir())


@pytest.mark.parametrize("text,lr,fails", [("val-knn:0.1,0.2,0.4@250", "0.2", None),
                                           ("val-knn:0.1,0.2,0.4@250", "0.3", "--lr is 0.3"),
                                           ("knn:0.1", "0.1", "is not val-knn")])
def test_lr_selection_is_checked_and_recorded(demo_root, tmp_path, capsys, text, lr, fails):
    argv = args_for(demo_root, tmp_path, "--lr", lr, "--lr-selection", text, "--mepoch", "1", "--expnum", "1_pretrain",
                    "--knn-freq", "0")
    if fails:
        with pytest.raises(SystemExit) as e:
            main_cls_ss_train.main(argv)
        assert e.value.code == 2 and fails in capsys.readouterr().err
        return
    main_cls_ss_train.main(argv)
    meta = torch.load(tmp_path / "090000_1_pretrain_1.pth", weights_only=True)["meta"]
    assert meta["args"]["lr_selection"] == text and meta["steps"] == meta["epoch"] * 3   # 48 images / 16


def test_lr_selection_recipe_accepts_only_the_recipes_own_lr(demo_root, tmp_path, capsys):
    import json
    base = ["--mode", "912", "--ds", "demo", "--data-root", str(demo_root), "--netnum", "090000", "--input_size", "32",
            "--bs", "16", "--recipe", "small", "--mepoch", "4", "--dry-run", "--ckpt", str(tmp_path / "ck"),
            "--no-progress"]
    main_cls_ss_train.main(base)
    own = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["lr"]
    main_cls_ss_train.main([*base, "--lr", repr(own), "--lr-selection", "recipe"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["lr"] == pytest.approx(own)
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main([*base, "--lr", repr(2 * own), "--lr-selection", "recipe"])
    assert e.value.code == 2 and "the recipe's own" in capsys.readouterr().err
