"""Finished work is never lost (issue 11 §1, §2, §4, §6 checkpoints, §7): names are claimed, never
reused; errors from DataLoader workers and spawned processes are one sentence; Ctrl-C keeps the
last complete checkpoint; checkpoints of another variant or optimiser are named."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
import torch

import main_cls
import main_cls_ss_train
from config.errors import UserError
from engine import checkpoint as ckpt
from config.dist import spawn
from tests.conftest import REPO

NET = "000000"
STAMP = datetime(2026, 12, 1, 8, 3, 8)        # -> 26335080308


pytestmark = pytest.mark.usefixtures("one_thread")


def pre_args(root, ck, *extra):
    return ["--mode", "910", "--ds", "demo", "--data-root", str(root), "--netnum", NET, "--input_size", "16",
            "--bs", "8", "--mepoch", "1", "--workers", "0", "--ckpt", str(ck), "--knn-freq", "0", "--no-progress",
            *extra]


def cls_args(root, ck, results, *extra):
    return ["--ds", "demo", "--data-root", str(root), "--netnum", NET, "--input_size", "16", "--workers", "0",
            "--ckpt", str(ck), "--results", str(results), "--no-progress", "--mode", "11", "--ts", "2",
            "--mepoch", "1", "--bs", "8", *extra]


@pytest.fixture
def same_second(monkeypatch):
    """Every run starts in the same second."""
    real = ckpt.make_expnum
    monkeypatch.setattr(ckpt, "make_expnum", lambda name, now=None: real(name, STAMP))


# ---- 1. No run overwrites another ----

def test_claims_in_one_second_get_suffixes(tmp_path):
    names = [ckpt.claim_expnum(tmp_path, NET, "pretrain", STAMP) for _ in range(3)]
    assert names == ["26335080308_pretrain", "26335080308-2_pretrain", "26335080308-3_pretrain"]
    later = ckpt.claim_expnum(tmp_path, NET, "pretrain", datetime(2026, 12, 1, 8, 3, 9))
    assert later == "26335080309_pretrain" and sorted(names + [later])[-1] == later    # names sort in time
    assert ckpt.claim_expnum(tmp_path, "020000", "pretrain", STAMP) == "26335080308_pretrain"  # other netnum


def test_a_name_with_files_of_an_older_run_is_skipped(tmp_path):
    (tmp_path / f"{NET}_26335080308_pretrain_5.pth").write_bytes(b"old run, no log")
    assert ckpt.claim_expnum(tmp_path, NET, "pretrain", STAMP) == "26335080308-2_pretrain"


def test_runs_whose_names_extend_another_are_not_its_files(tmp_path):
    for name in ("E_ms_1.pth", "E_ms_log.csv", "E-2_best.pth", "E_ms_ts5_s0_200.pth"):
        (tmp_path / f"{NET}_{name}").write_bytes(b"")
    assert ckpt.run_files(tmp_path, NET, "E") == []
    for name in ("E_1.pth", "E_best.pth", "E_state.pth", "E_log.csv", "E_vis_e0001.png", "E_ts0.5_s3_200.pth"):
        (tmp_path / f"{NET}_{name}").write_bytes(b"")
    assert len(ckpt.run_files(tmp_path, NET, "E")) == 6


def test_concurrent_claims_never_share_a_name(tmp_path):
    got, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        got.append(ckpt.claim_expnum(tmp_path, NET, "pretrain", STAMP))
    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8


def test_two_pretraining_runs_in_one_second_keep_both_checkpoints(demo_root, tmp_path, same_second):
    ck = tmp_path / "ck"
    main_cls_ss_train.main(pre_args(demo_root, ck, "--seed", "0"))
    main_cls_ss_train.main(pre_args(demo_root, ck, "--seed", "1"))
    a = torch.load(ck / f"{NET}_26335080308_pretrain_1.pth", weights_only=True)
    b = torch.load(ck / f"{NET}_26335080308-2_pretrain_1.pth", weights_only=True)
    assert a["meta"]["args"]["seed"] == 0 and b["meta"]["args"]["seed"] == 1
    assert a["meta"]["expnum"] == "26335080308_pretrain" and b["meta"]["expnum"] == "26335080308-2_pretrain"
    for e in ("26335080308_pretrain", "26335080308-2_pretrain"):
        assert (ck / f"{NET}_{e}_log.csv").read_text().startswith("epoch,")


def test_a_taken_expnum_is_refused_unless_overwrite(demo_root, tmp_path, capsys):
    ck = tmp_path / "ck"
    main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "E_pretrain"))
    first = (ck / f"{NET}_E_pretrain_1.pth").read_bytes()
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "E_pretrain"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"--expnum E_pretrain is taken: {ck} already has {NET}_E_pretrain_1.pth" in err and "--overwrite" in err
    assert (ck / f"{NET}_E_pretrain_1.pth").read_bytes() == first
    assert (ck / f"{NET}_E_pretrain_log.csv").read_text().count("\n") == 2          # header + epoch 1, not truncated
    # --overwrite replaces the whole run: no figure or event file of the old one is left beside the new files
    (ck / f"{NET}_E_pretrain_7.pth").write_bytes(b"an epoch the new run will not reach")
    (ck / f"{NET}_E_pretrain_vis_e0001.png").write_bytes(b"a figure of the old run")
    (ck / "tb" / f"{NET}_E_pretrain" / "events.out.tfevents.old").parent.mkdir(parents=True, exist_ok=True)
    (ck / "tb" / f"{NET}_E_pretrain" / "events.out.tfevents.old").write_bytes(b"old events")
    main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "E_pretrain", "--overwrite", "--seed", "3"))
    assert not (ck / f"{NET}_E_pretrain_7.pth").exists() and not list(ck.glob(f"{NET}_E_pretrain_vis_*.png"))
    assert not (ck / "tb" / f"{NET}_E_pretrain" / "events.out.tfevents.old").exists()
    assert torch.load(ck / f"{NET}_E_pretrain_1.pth", weights_only=True)["meta"]["args"]["seed"] == 3
    # runs that only READ by expnum are unaffected: fine-tuning from it writes under a new name
    main_cls.main(cls_args(demo_root, ck, tmp_path / "r.csv", "--mode", "41", "--hos", "9", "--expnum", "E_pretrain",
                           "--cepoch", "1"))
    assert (ck / f"{NET}_E_pretrain_1.pth").exists() and len(list(ck.glob(f"{NET}_*_finetune_ts2_s0_1.pth"))) == 1


def test_two_main_cls_runs_in_one_second_keep_both_classifiers(demo_root, tmp_path, same_second):
    ck, res = tmp_path / "ck", tmp_path / "r.csv"
    main_cls.main(cls_args(demo_root, ck, res, "--lr", "1e-3"))
    main_cls.main(cls_args(demo_root, ck, res, "--lr", "1e-2"))
    a = ck / f"{NET}_26335080308_train_ts2_s0_1.pth"
    b = ck / f"{NET}_26335080308-2_train_ts2_s0_1.pth"
    assert a.exists() and b.exists()
    assert not torch.equal(torch.load(a)["model"]["head.weight"], torch.load(b)["model"]["head.weight"])
    log = (ck / f"{NET}_26335080308_train_log.csv").read_text().splitlines()
    assert log[0].split(",")[:3] == ["epoch", "seed", "loss"] and len(log) == 2



def test_a_classifier_of_another_stem_names_its_netnum(demo_root, tmp_path, capsys):
    ck, res = tmp_path / "ck", tmp_path / "r.csv"
    main_cls.main(cls_args(demo_root, ck, res))
    (saved,) = ck.glob(f"{NET}_*_train_ts2_s0_1.pth")
    argv = cls_args(demo_root, ck, res, "--mepoch", "2", "--sepoch", "1", "--resume", str(saved))
    argv[argv.index("--netnum") + 1] = "090000"                   # resnet18: the same layer names
    with pytest.raises(SystemExit) as e:
        main_cls.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "is a classifier of --netnum 000000 (resnet18_small), not 090000 (resnet18); pass --netnum 000000" in err


def test_full_disk_at_the_second_checkpoint_keeps_the_first(demo_root, tmp_path, monkeypatch, capsys):
    import errno

    from config import atomic
    real = os.fsync

    def fsync(fd):             # the disk fills up while epoch 2's backbone is written
        if "_2.pth." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    ck = tmp_path / "ck"
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "F_pretrain", "--mepoch", "2", "--ckpt_freq", "1"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"no space left on the device to write {ck / (NET + '_F_pretrain_2.pth')}" in err
    assert torch.load(ck / f"{NET}_F_pretrain_1.pth", weights_only=True)["meta"]["epoch"] == 1
    assert torch.load(ck / f"{NET}_F_pretrain_state.pth", weights_only=False)["epoch"] == 1
    assert not (ck / f"{NET}_F_pretrain_2.pth").exists() and not list(ck.glob(".*.tmp"))


# ---- 2. Errors inside DataLoader workers ----

def test_a_broken_file_read_in_a_worker_is_one_sentence(demo_root, tmp_path, capsys):
    import shutil

    from datasets.options import get_opt
    from datasets.folder import prepare_dataset
    root = tmp_path / "mine"
    shutil.copytree(demo_root / "rsssl_demo", root, ignore=shutil.ignore_patterns(".*"))
    ns = argparse.Namespace(ds=str(root), data_root=None, cache_dir=None, dtype=None, rgb_bands=None, input_size=16)
    _, index = prepare_dataset(get_opt(str(root), ns))           # statistics measured and cached while intact
    bad = index.train[0].path
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)                   # a TIFF header, then nothing
    argv = pre_args(demo_root, tmp_path / "ck", "--workers", "2")
    argv[argv.index("--ds") + 1] = str(root)
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert str(bad) in err and "Caught" not in err and "Traceback" not in err and "worker" not in err
    assert len(err.strip().splitlines()) == 1


# ---- 4. Several processes ----

def _rank1_fails(index: int, marker: str) -> None:
    """Rank 0 waits in a collective (gloo) while rank 1 hits a user error."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{marker}", world_size=2, rank=index)
    if index == 1:
        raise UserError("--frobnicate 3 is wrong on rank 1; pass --frobnicate 2")
    dist.barrier()


def _rank0_crashes(index: int, marker: str) -> None:
    if index == 0:
        raise ValueError("a bug")


def test_a_user_error_in_one_process_ends_all_with_its_sentence(tmp_path):
    with pytest.raises(UserError) as e:
        spawn(_rank1_fails, 2, (str(tmp_path / "rdv"),))
    assert str(e.value) == "--frobnicate 3 is wrong on rank 1; pass --frobnicate 2"
    with pytest.raises(SystemExit) as e2:                    # a bug is not a user error: exit 1
        spawn(_rank0_crashes, 2, (str(tmp_path / "rdv2"),))
    assert e2.value.code == 1


# ---- 6. Checkpoints of another variant or optimiser ----

def test_a_checkpoint_of_another_stem_names_its_netnum(tmp_path):
    from models import build_backbone
    small, _ = build_backbone("000000", 13)              # resnet18_small: 3x3 stem, same layer names as resnet18
    path = tmp_path / "000000_E_1.pth"
    ckpt.save_backbone(path, small.state_dict(), {"netnum": "000000", "in_channels": 13, "bands": [], "mode": 910,
                                                  "epoch": 1, "expnum": "E", "dataset": "demo", "args": {}})
    big, _ = build_backbone("090000", 13)
    with pytest.raises(UserError) as e:
        ckpt.load_backbone(path, big)
    msg = str(e.value)
    assert "was pretrained with --netnum 000000 (resnet18_small)" in msg and "(000000)" in msg
    assert "bands" not in msg.split("(checkpoint vs model")[0]


def test_resume_with_another_optimizer_is_named(tmp_path):
    model = torch.nn.Linear(3, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    sgd.step()
    path = tmp_path / "s.pth"
    ckpt.save_training_state(path, model, sgd, 1, 1)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(UserError, match=r"was trained with --optimizer sgd, not --optimizer adam"):
        ckpt.load_training_state(path, model, adam)
    state = torch.load(path, weights_only=False)               # a file from before the name was recorded
    del state["optimizer_name"]
    torch.save(state, path)
    with pytest.raises(UserError, match=r"was trained with another --optimizer, not --optimizer adam"):
        ckpt.load_training_state(path, model, torch.optim.Adam(model.parameters()))
    assert ckpt.load_training_state(path, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))["epoch"] == 1


# ---- 7. Ctrl-C ----

def _interrupt_after(argv: list[str], ready: callable, timeout: float = 400):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True,       # SIGINT as in a terminal, even if ignored here
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.time()
        while not ready() and p.poll() is None and time.time() - t0 < timeout:
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-3000:]
        os.killpg(p.pid, signal.SIGINT)                      # Ctrl-C reaches the whole process group
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, err


def test_ctrl_c_in_pretraining_keeps_the_last_checkpoint(demo_root, tmp_path):
    ck = tmp_path / "ck"
    first, state = ck / f"{NET}_C_pretrain_1.pth", ck / f"{NET}_C_pretrain_state.pth"
    argv = ["main_cls_ss_train.py", *pre_args(demo_root, ck, "--expnum", "C_pretrain", "--mepoch", "200",
                                              "--ckpt_freq", "1", "--workers", "1")]
    rc, err = _interrupt_after(argv, lambda: first.exists() and state.exists())
    assert rc == -signal.SIGINT, err                         # ends by SIGINT, as a shell loop expects
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err, err
    assert torch.load(first, weights_only=True)["meta"]["epoch"] >= 1
    assert torch.load(state, weights_only=False)["epoch"] >= 1
    assert not list(ck.glob(".*.tmp"))


def test_ctrl_c_in_fine_tuning(demo_root, tmp_path):
    ck = tmp_path / "ck"

    def one_epoch_logged():
        logs = list(ck.glob(f"{NET}_*_train_log.csv"))
        return bool(logs) and logs[0].read_text().count("\n") >= 2
    argv = ["main_cls.py", *cls_args(demo_root, ck, tmp_path / "r.csv", "--mepoch", "500")]
    rc, err = _interrupt_after(argv, one_epoch_logged)
    assert rc == -signal.SIGINT and "interrupted (Ctrl-C)" in err and "Traceback" not in err, err
    assert not list(ck.glob(".*.tmp")) and not (tmp_path / "r.csv").exists()


# ---- issue 19: --resume cleans up, refuses other data, and never ends with nothing done ----

def test_resume_cleans_stale_tmp_refuses_other_data_and_an_empty_run(demo_root, tmp_path, capsys):
    from config import atomic
    ck = tmp_path / "ck"
    main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "R_pretrain", "--ckpt_freq", "1"))
    state = ck / f"{NET}_R_pretrain_state.pth"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = ck / f".{NET}_R_pretrain_2.pth.{atomic._HOST}-{dead}.abc123.tmp"   # a killed save's leftover
    stale.write_bytes(b"x" * 1000)
    # nothing left: the state is at epoch 1 of --mepoch 1
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(pre_args(demo_root, ck, "--resume", str(state)))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "nothing is left to train" in err and "--mepoch" in err and "Traceback" not in err
    # another split (here: another --ts draw) than the state's
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(pre_args(demo_root, ck, "--resume", str(state), "--mepoch", "2", "--ts", "5"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "other training images than the run it continues" in err, err
    before = torch.load(ck / f"{NET}_R_pretrain_1.pth", weights_only=True)["meta"]["provenance"]
    main_cls_ss_train.main(pre_args(demo_root, ck, "--resume", str(state), "--mepoch", "2"))
    assert not stale.exists()
    after = torch.load(ck / f"{NET}_R_pretrain_2.pth", weights_only=True)["meta"]["provenance"]
    assert after["scene_keys"] == before["scene_keys"] and after["scene_digests"] == before["scene_digests"]


def test_continued_pretraining_keeps_the_earlier_runs_scenes(demo_root, tmp_path):
    """Pretrain on 3 images per class, continue from that checkpoint on another draw: the second run's
    checkpoint lists the scenes of both runs (the union), so the overlap check sees what stage one saw."""
    ck = tmp_path / "ck"
    main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "A_pretrain", "--ts", "3", "--seed", "0"))
    main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "A_pretrain", "--cepoch", "1", "--ts", "3",
                                    "--seed", "5", "--mepoch", "2"))
    first = torch.load(ck / f"{NET}_A_pretrain_1.pth", weights_only=True)["meta"]["provenance"]
    (second,) = [torch.load(p, weights_only=True)["meta"]["provenance"] for p in ck.glob(f"{NET}_*_2.pth")]
    assert set(first["scene_keys"]) < set(second["scene_keys"])
    assert set(first["scene_digests"]) < set(second["scene_digests"])


# ---- issue 19: checkpoint errors in one sentence: what the file is, what it fits, the flag to change ----

def _one_sentence(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "weights_only" not in err and "Missing key" not in err and len(err) < 400, err
    return err


def test_a_training_state_given_as_encoder_cp_is_named_as_such(demo_root, tmp_path, capsys):
    ck = tmp_path / "ck"
    main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "S_pretrain", "--ckpt_freq", "1"))
    state = ck / f"{NET}_S_pretrain_state.pth"
    err = _one_sentence(main_cls.main, cls_args(demo_root, ck, tmp_path / "r.csv", "--mode", "41", "--encoder_cp",
                                                str(state)), capsys)
    assert "training state" in err and "may be truncated" not in err and "--resume" in err


def test_imagenet_weights_of_another_network_name_its_netnum(demo_root, tmp_path, capsys):
    import torchvision
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    argv = cls_args(demo_root, tmp_path / "ck", tmp_path / "r.csv", "--dtype", "RGB", "--weights", str(path))
    argv[argv.index("--netnum") + 1] = "020000"
    err = _one_sentence(main_cls.main, argv, capsys)
    assert "resnet18" in err and "--netnum 090000" in err


def test_a_resume_state_of_another_netnum_names_its_own(demo_root, tmp_path, capsys):
    ck = tmp_path / "ck"
    main_cls_ss_train.main(pre_args(demo_root, ck, "--expnum", "N_pretrain", "--ckpt_freq", "1"))
    argv = pre_args(demo_root, ck, "--resume", str(ck / f"{NET}_N_pretrain_state.pth"), "--mepoch", "2")
    argv[argv.index("--netnum") + 1] = "090000"
    err = _one_sentence(main_cls_ss_train.main, argv, capsys)
    assert f"--netnum {NET}" in err and "--mode 910" in err
