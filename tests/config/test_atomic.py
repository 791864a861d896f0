"""Atomic writes: modes from the umask, a full disk is one sentence and leaves old files intact,
temporary files of killed runs are removed (issue 11 §5)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from config.errors import UserError
from config import atomic
from config.atomic import atomic_write_text, create_exclusive, remove_stale_tmp
from engine.checkpoint import atomic_save, save_backbone
from engine.results import RESULT_COLUMNS, append_result, save_predictions


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    assert atomic.default_mode() == mode
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_save({"w": torch.zeros(2)}, tmp_path / "c.pth")
    append_result(tmp_path / "r.csv", {"ds": "demo", "OA": 50.0})
    create_exclusive(tmp_path / "claim.csv")
    pred = save_predictions(tmp_path / "r.csv", "run", ["a/1.tif"], ["a"], ["b"])
    for name in ("a.txt", "c.pth", "r.csv", "claim.csv", pred):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_an_existing_table_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    append_result(tmp_path / "r.csv", {"ds": "demo"})
    os.chmod(tmp_path / "r.csv", 0o660)
    append_result(tmp_path / "r.csv", {"ds": "demo"})
    assert (tmp_path / "r.csv").stat().st_mode & 0o777 == 0o660


def _disk_full_after(monkeypatch, n_ok: int):
    """From the (n_ok + 1)-th fsync of a file on, the disk is full (ENOSPC), as a real one reports it."""
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):
        if os.path.isfile(f"/proc/self/fd/{fd}") and not os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            calls["n"] += 1
            if calls["n"] > n_ok:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(atomic.os, "fsync", fsync)


def test_full_disk_while_saving_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "000000_E_1.pth"
    save_backbone(path, {"w": torch.ones(3)}, {"netnum": "000000", "in_channels": 3, "bands": [], "mode": 910,
                                               "epoch": 1, "expnum": "E", "dataset": "demo", "args": {}})
    before = path.read_bytes()
    _disk_full_after(monkeypatch, 0)
    with pytest.raises(UserError, match=f"no space left on the device to write {path}"):
        save_backbone(path, {"w": torch.zeros(3)}, {"netnum": "000000", "in_channels": 3, "bands": [], "mode": 910,
                                                    "epoch": 2, "expnum": "E", "dataset": "demo", "args": {}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]          # no .tmp left


def test_full_disk_while_appending_a_row_keeps_the_table(tmp_path, monkeypatch):
    table = tmp_path / "r.csv"
    append_result(table, {"ds": "demo", "OA": 50.0})
    before = table.read_bytes()
    _disk_full_after(monkeypatch, 0)
    with pytest.raises(UserError, match="no space left on the device to write .*r.csv.*files written before are intact"):
        append_result(table, {"ds": "demo", "OA": 60.0})
    assert table.read_bytes() == before and before.startswith(",".join(RESULT_COLUMNS).encode())
    assert not list(tmp_path.glob(".*.tmp"))


def test_full_disk_while_writing_predictions_leaves_no_partial_file(tmp_path, monkeypatch):
    _disk_full_after(monkeypatch, 0)
    with pytest.raises(UserError, match="no space left on the device to write .*r_predictions"):
        save_predictions(tmp_path / "r.csv", "run", ["a/1.tif"], ["a"], ["b"])
    assert not list((tmp_path / "r_predictions").iterdir())


def test_full_disk_inside_torch_save(tmp_path, monkeypatch):
    """The write can fail inside torch.save, which wraps the OSError in a RuntimeError."""
    import io
    real_fdopen = os.fdopen

    class Full(io.FileIO):
        def write(self, b):
            if self.tell() > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: Full(fd, "wb") if "b" in mode else real_fdopen(fd, mode))
    with pytest.raises(UserError, match="no space left on the device to write .*x.pth"):
        atomic_save({"a": torch.zeros(1000)}, tmp_path / "x.pth")
    assert not list(tmp_path.iterdir())


def test_ctrl_c_inside_torch_save_is_an_interrupt_and_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C while torch.save writes: its zip writer then fails on close ("unexpected pos"), a RuntimeError
    that used to replace the KeyboardInterrupt (exit 1, two tracebacks). It must stay Ctrl-C (exit 130),
    with the old file intact and no temporary file."""
    import io

    from config.errors import Interrupted, exit_on_user_error
    real_fdopen = os.fdopen

    class CtrlC(io.FileIO):
        def write(self, b):
            if self.tell() > 100:
                raise KeyboardInterrupt
            return super().write(b)
    target = tmp_path / "x.pth"
    atomic_save({"a": torch.ones(3)}, target)
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: CtrlC(fd, "wb") if "b" in mode else real_fdopen(fd, mode))
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(100_000)}, target)
    with pytest.raises(Interrupted) as e:
        exit_on_user_error(lambda: atomic_save({"a": torch.zeros(100_000)}, target))()
    assert e.value.code == 130
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(3))


def test_stale_tmp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".000000_E_1.pth.{atomic._HOST}-{dead_pid}.abc123.tmp"
    live = tmp_path / f".000000_F_1.pth.{atomic._HOST}-{os.getpid()}.def456.tmp"
    foreign_new = tmp_path / ".000000_G_1.pth.ffffff-1.ghi789.tmp"
    foreign_old = tmp_path / ".000000_H_1.pth.ffffff-2.jkl012.tmp"
    legacy_old = tmp_path / ".000000_I_1.pth.mno345.tmp"          # name from before host/pid tags
    for p in (stale, live, foreign_new, foreign_old, legacy_old):
        p.write_bytes(b"x")
    old = time.time() - 2 * atomic.FOREIGN_TMP_AGE_S
    os.utime(foreign_old, (old, old))
    os.utime(legacy_old, (old, old))
    keep = tmp_path / "000000_E_1.pth"
    keep.write_bytes(b"y")
    removed = remove_stale_tmp(tmp_path)
    assert sorted(p.name for p in removed) == sorted(p.name for p in (stale, foreign_old, legacy_old))
    assert live.exists() and foreign_new.exists() and keep.exists()


def test_tmp_names_carry_host_and_pid(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (seen.append(Path(a).name), real(a, b)))
    atomic_write_text(tmp_path / "a.txt", "x")
    (name,) = seen
    assert atomic._TMP.match(name) and f".{atomic._HOST}-{os.getpid()}." in name
