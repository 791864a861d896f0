"""The results table: columns, concurrent appends, crash safety, code version."""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest

from config.errors import UserError
from engine import results
from engine.results import RESULT_COLUMNS, append_result, code_version


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_columns_in_contract_order():
    assert RESULT_COLUMNS[:3] == ("time", "code_version", "ds")
    assert RESULT_COLUMNS[-2:] == ("seconds", "per_class")
    assert len(RESULT_COLUMNS) == 22
    # what the backbone learnt from sits next to the pretraining run it came from
    i = RESULT_COLUMNS.index("pretrain_epoch")
    assert RESULT_COLUMNS[i + 1] == "pretext" and RESULT_COLUMNS[i - 1] == "pretrain_expnum"


def test_new_file_gets_header_and_row(tmp_path):
    path = tmp_path / "results" / "cls.csv"
    append_result(path, {"ds": "aid", "ts": 5, "seed": 0, "OA": 0.8125, "kappa": 0.5,
                         "per_class": [1.0, float("nan"), 0.25], "code_version": "abc123"})
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(RESULT_COLUMNS)
    (row,) = _rows(path)
    assert (row["ds"], row["ts"], row["seed"], row["OA"], row["code_version"]) == ("aid", "5", "0", "0.8125", "abc123")
    assert json.loads(row["per_class"]) == [1.0, None, 0.25]
    assert row["time"][:2] == "20" and row["AA"] == ""
    append_result(path, {"ds": "ucm", "code_version": "x"})
    assert [r["ds"] for r in _rows(path)] == ["aid", "ucm"]
    assert path.read_text().count("time,code_version") == 1


def test_unknown_column_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    with pytest.raises(ValueError, match="accuracy"):
        append_result(path, {"ds": "aid", "accuracy": 0.9})
    assert not path.exists()


def test_foreign_header_is_a_user_error(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="other columns"):
        append_result(path, {"ds": "aid", "code_version": "x"})
    assert path.read_text() == "a,b\n1,2\n"


def _writer(path: str, worker: int) -> None:
    for i in range(50):
        append_result(path, {"ds": f"w{worker}", "seed": i, "OA": i / 50, "code_version": "test",
                             "per_class": {"a": 0.5, "b": i}})


def test_two_writer_processes(tmp_path):
    path = tmp_path / "r.csv"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with open(path, newline="") as f:
        records = list(csv.reader(f))
    assert records[0] == list(RESULT_COLUMNS)
    assert len(records) == 101
    assert all(len(r) == len(RESULT_COLUMNS) for r in records)
    rows = _rows(path)
    assert sorted((r["ds"], int(r["seed"])) for r in rows) == [(f"w{w}", i) for w in (0, 1) for i in range(50)]
    assert all(json.loads(r["per_class"])["a"] == 0.5 for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.lock"]


def test_crash_during_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    append_result(path, {"ds": "aid", "seed": 1, "code_version": "x"})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk died")

    monkeypatch.setattr(results.os, "replace", crash)
    with pytest.raises(OSError, match="disk died"):
        append_result(path, {"ds": "nr", "seed": 2, "code_version": "x"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.lock"]
    append_result(path, {"ds": "nr", "seed": 2, "code_version": "x"})  # the lock was released
    assert [r["ds"] for r in _rows(path)] == ["aid", "nr"]


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_code_version_from_git(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    assert code_version(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == f"{head}-dirty"


def test_code_version_falls_back_to_package_version(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "rs-ssl"\nversion = "9.8.7"\n')
    monkeypatch.setattr(results.metadata, "version", _not_installed)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert code_version(tmp_path) == "9.8.7"  # not a git repository
    monkeypatch.setenv("PATH", "")  # no git at all
    assert code_version(tmp_path) == "9.8.7"
    os.remove(tmp_path / "pyproject.toml")
    assert code_version(tmp_path) == "unknown"


def _not_installed(name: str) -> str:
    raise results.metadata.PackageNotFoundError(name)
