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


PREVIOUS_COLUMNS = (      # the schema before issue 19 (the tables under results/ had it)
    "time", "code_version", "ds", "split_version", "ts", "seed", "mode", "netnum", "pretext", "pretrain_expnum",
    "pretrain_epoch", "pretrain_datasets", "ckpt_selected_by", "hos", "probe", "probe_param", "select_on",
    "selection_labels", "dtype", "bands", "input_size", "tta", "bs", "optimizer", "lr", "wd", "epochs", "aug",
    "allow_overlap", "OA", "AA", "kappa", "macro_F1", "n_train", "n_test", "seconds", "per_class", "predictions")


def test_columns_in_contract_order():
    assert RESULT_COLUMNS == (
        "time", "code_version", "ds", "split_version", "ts", "seed", "mode", "netnum", "pretext", "pretrain_expnum",
        "pretrain_epoch", "pretrain_datasets", "ckpt_selected_by", "pretrain_code_version", "pretrain_optimizer",
        "pretrain_lr", "pretrain_bs", "pretrain_epochs", "pretrain_steps", "pretrain_seed", "pretrain_recipe", "pretrain_config",
        "pretrain_lr_selection", "init_sha", "hos", "probe", "probe_param", "select_on", "selection_labels", "bn_stats",
        "dtype", "bands", "rgb_bands", "input_size", "tta", "bs", "optimizer", "lr", "wd", "momentum", "beta2", "lars_eta", "lars_clip", "layer_decay", "drop_path", "lr_policy",
        "warmup", "milestones", "lr_decay", "loss", "epochs", "aug", "resumed", "amp", "sync_bn", "processes",
        "allow_overlap", "OA", "AA", "kappa", "macro_F1", "n_train", "n_test", "seconds", "per_class", "predictions")


def test_a_table_of_the_previous_schema_gains_the_new_columns_empty(tmp_path, caplog):
    """Issue 19's columns: an older table keeps every value, new cells empty, its split versions kept."""
    path = tmp_path / "r.csv"
    old = ["2026-12-01 10:00:00", "abc", "euroms", "v2-x", "5.0", "0", "41", "090000", "simclr", "E", "3",
           "euroms@v2-x", "last", "", "logreg", "C=1", "shots", "shots:50", "MS", "B01", "64", "0", "", "", "", "",
           "0", "", "0", "50.0", "49.0", "0.4", "48.0", "50", "94", "1.0", "[]", "p.csv"]
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([PREVIOUS_COLUMNS, old])
    with caplog.at_level("WARNING"):
        assert results.migrate_table(path) == 1
    assert "split_version 'unknown'" not in caplog.text
    (row,) = results.read_table(path)
    assert {c: row[c] for c in PREVIOUS_COLUMNS} == dict(zip(PREVIOUS_COLUMNS, old))
    assert all(row[c] == "" for c in RESULT_COLUMNS if c not in PREVIOUS_COLUMNS)


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
    with pytest.raises(UserError, match="not a results table of this project"):
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


OLD_COLUMNS = ("time", "code_version", "ds", "ts", "seed", "mode", "netnum", "pretrain_expnum", "pretrain_epoch",
               "pretext", "hos", "probe", "epochs", "lr", "OA", "AA", "kappa", "macro_F1", "n_train", "n_test",
               "seconds", "per_class")


def _old_table(path: Path) -> list[list[str]]:
    old = [["2026-11-22 12:34:03", "3e910d5", "euroms", "5.0", "0", "11", "090000", "random", "", "random", "",
            "logreg", "0", "0.0", "46.8085", "46.5556", "0.40873", "45.6406", "50", "94", "1.7", "[30.0, 40.0]"],
           ["2026-11-22 12:35:03", "3e910d5-dirty", "euroms", "20.0", "1", "41", "090000", "2632_pretrain", "50",
            "simclr", "9", "", "100", "0.001", "60.5", "61.0", "0.5", "59.0", "200", "94", "3.0", "[1.0, 2.0]"]]
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([list(OLD_COLUMNS), *old])
    return old


def test_old_schema_table_is_migrated_in_place_keeping_its_rows(tmp_path, caplog):
    path = tmp_path / "euroms.csv"
    old = _old_table(path)
    with caplog.at_level("WARNING"):
        append_result(path, {"ds": "euroms", "split_version": "v2-abc", "seed": 3, "code_version": "new"})
    assert "older schema" in caplog.text and "migrated its 2 row(s)" in caplog.text
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == list(RESULT_COLUMNS)
    got = _rows(path)
    assert len(got) == 3
    for values, row in zip(old, got):
        assert {c: row[c] for c in OLD_COLUMNS} == dict(zip(OLD_COLUMNS, values))
        assert row["split_version"] == "unknown"
        assert all(row[c] == "" for c in RESULT_COLUMNS if c not in OLD_COLUMNS and c != "split_version")
    assert got[2]["split_version"] == "v2-abc" and got[2]["seed"] == "3"
    assert results.read_table(path) == got


def test_migrate_table_and_read_table(tmp_path):
    path = tmp_path / "t.csv"
    old = _old_table(path)
    assert [r["OA"] for r in results.read_table(path)] == [v[14] for v in old]   # reads old schemas as migrated
    assert results.migrate_table(path) == 2
    first = path.read_bytes()
    assert first.startswith(",".join(RESULT_COLUMNS).encode())
    assert results.migrate_table(path) == 2 and path.read_bytes() == first       # already migrated: untouched


@pytest.mark.parametrize("text, match", [("", "is empty"), ("\n\n", "is empty"),
                                         ("a,b\n1,2\n", "not a results table"),
                                         ("time,code_version,ds,ts,seed,OA,accuracy\n", "not a results table"),
                                         ("time,code_version,ds,ts,seed,OA\n1,2,3\n", "line 2 has 3 cells")])
def test_read_table_refuses_bad_files_in_one_sentence(tmp_path, text, match):
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        results.read_table(path)


def test_foreign_table_with_result_like_columns_is_still_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("epoch,loss,lr\n1,2.0,0.1\n")
    with pytest.raises(UserError, match="not a results table"):
        append_result(path, {"ds": "aid", "code_version": "x"})
    assert path.read_text() == "epoch,loss,lr\n1,2.0,0.1\n"


def test_code_version_ignores_changes_under_results(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("h\n")
    _git(tmp_path, "add", "a.py", "results/t.csv")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    (tmp_path / "results" / "t.csv").write_text("h\n1\n")          # an experiment appended a row
    (tmp_path / "results" / "new_predictions").mkdir()
    (tmp_path / "results" / "new_predictions" / "p.csv").write_text("path,true,pred\n")
    assert code_version(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")                     # tracked code changed
    assert code_version(tmp_path) == f"{head}-dirty"


def test_predictions_saved_beside_the_table_never_overwritten(tmp_path):
    table = tmp_path / "res" / "aid.csv"
    a = results.save_predictions(table, "aid_41_logreg_ts5_s0", ["c1/x.tif", "c2/y.tif"], ["c1", "c2"], ["c1", "c1"])
    b = results.save_predictions(table, "aid_41_logreg_ts5_s0", ["c1/x.tif"], ["c1"], ["c2"])
    assert a != b and a.startswith("aid_predictions/aid_41_logreg_ts5_s0_") and a.endswith(".csv")
    assert (table.parent / a).read_text() == "path,true,pred\nc1/x.tif,c1,c1\nc2/y.tif,c2,c1\n"
    assert results.load_predictions(table, b) == (["c1/x.tif"], ["c1"], ["c2"])
    assert results.load_predictions(table, "") is None
