"""The results table: one CSV row per evaluation, safe under concurrent writers.

Few-shot studies launch many evaluations at once (seeds x shots x checkpoints) that
all append to the same ``results/*.csv``.  :func:`append_result` therefore takes an
exclusive lock and replaces the file atomically, so rows are never interleaved or
lost and a crash never leaves a half-written table.

A table written by an older version of this project (fewer columns) is migrated in
place, in the same locked atomic rewrite, the first time a row is appended: its rows
keep their values, get split version ``unknown`` and empty new cells. A CSV that is not
a results table is refused. Each row's per-image test predictions live beside the
table (:func:`save_predictions`), named in its ``predictions`` cell.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import logging
import math
import os
import subprocess
import uuid
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from config.errors import UserError
from config.atomic import atomic_write, disk_full_error

log = logging.getLogger(__name__)

RESULT_COLUMNS: tuple[str, ...] = (
    "time", "code_version", "ds", "split_version", "ts", "seed", "mode", "netnum", "pretext", "pretrain_expnum",
    "pretrain_epoch", "pretrain_datasets", "ckpt_selected_by", "pretrain_code_version", "pretrain_optimizer",
    "pretrain_lr", "pretrain_bs", "pretrain_epochs", "pretrain_steps", "pretrain_seed", "pretrain_recipe", "pretrain_config",
    "pretrain_lr_selection", "init_sha", "hos", "probe", "probe_param", "select_on", "selection_labels", "bn_stats",
    "dtype", "bands", "rgb_bands", "input_size", "tta",
    "bs", "optimizer", "lr", "wd", "momentum", "beta2", "lars_eta", "lars_clip", "layer_decay", "drop_path", "lr_policy", "warmup", "milestones", "lr_decay", "loss", "epochs", "aug",
    "resumed", "amp", "sync_bn", "processes", "allow_overlap",
    "OA", "AA", "kappa", "macro_F1", "n_train", "n_test", "seconds", "per_class", "predictions",
)
"""Every row names what made it: data and split, the pretraining run (its code version and
settings), what selected its checkpoint and the digest of the file the weights came from, the
protocol and which labels chose its hyper-parameters, the input, the optimisation and schedule,
the processes, the overlap override, the metrics, and the file of its per-image predictions.
Which flags these columns record is derived from main_cls.py's parser (engine/identity.py)."""

# What an older table must hold to be ours (and so migrated, never refused).
_OUR_CORE = ("time", "code_version", "ds", "ts", "seed", "OA")
UNKNOWN_SPLIT = "unknown"

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "rs-ssl"


def code_version(repo: str | os.PathLike | None = None) -> str:
    """``git describe --always`` of the repository (``-dirty`` when tracked code changed), else the package version.

    Recorded with every result so a number can be traced to the code that made it.
    ``-dirty`` flags runs made with uncommitted changes to tracked files OUTSIDE
    ``results/``: the tables there are data that experiments append to, so a sweep
    does not mark its own later rows dirty.
    """
    root = Path(repo) if repo is not None else REPO_ROOT
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always"],
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0 and out.stdout.strip():
            changed = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                 ":(exclude)results"], capture_output=True, text=True, timeout=10, check=False)
            dirty = changed.returncode != 0 or bool(changed.stdout.strip())
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return _package_version(root)


def _package_version(root: Path) -> str:
    """Installed package version, else the one in ``pyproject.toml``, else ``'unknown'``."""
    try:
        return metadata.version(PACKAGE_NAME)
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        with open(root / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


def _json_ready(value: Any) -> Any:
    """NaN (a class with no test image) becomes ``null`` so the column is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "tolist"):
        return _json_ready(value.tolist())
    return value


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "per_class" and not isinstance(value, str):
        return json.dumps(_json_ready(value), allow_nan=False)
    if hasattr(value, "item"):
        value = value.item()
    return repr(value) if isinstance(value, float) else str(value)


def _csv_line(values: list[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode("utf-8")


def append_result(csv_path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one row to the results table at ``csv_path``, creating it with a header.

    Columns are :data:`RESULT_COLUMNS`; missing ones stay empty, except ``time``
    (now) and ``code_version`` (:func:`code_version`), which are filled in.
    ``per_class`` may be a list or dict and is stored as JSON.  A row with an
    unknown column is refused (ValueError), so a typo never shifts the table. An
    older-schema table is migrated first (logged); a foreign CSV is a UserError.

    Concurrency: an exclusive ``flock`` on ``<csv_path>.lock`` serialises writers
    (processes on one machine or on a shared filesystem with working locks); the
    table is rewritten to a temporary file, fsynced and renamed over the old one.
    """
    unknown = sorted(set(row) - set(RESULT_COLUMNS))
    if unknown:
        raise ValueError(f"unknown result column(s) {unknown}; valid columns are {list(RESULT_COLUMNS)}")
    full = dict(row)
    full.setdefault("time", datetime.now().isoformat(timespec="seconds"))
    if full.get("code_version") in (None, ""):
        full["code_version"] = code_version()
    line = _csv_line([_cell(c, full.get(c)) for c in RESULT_COLUMNS])

    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            _rewrite_with(path, line)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    log.info("appended a result row to %s", path)


BOM = b"\xef\xbb\xbf"         # the byte-order mark Excel puts before a UTF-8 CSV


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark (a table saved by a spreadsheet is still ours)."""
    return data[len(BOM):] if data.startswith(BOM) else data


def _header(data: bytes) -> list[str]:
    return next(csv.reader([strip_bom(data).split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")]), [])


def is_result_table(header: list[str]) -> bool:
    """A header this project wrote, now or in an older version: every column known, the core present."""
    return set(_OUR_CORE) <= set(header) and set(header) <= set(RESULT_COLUMNS) and len(set(header)) == len(header)


def migrate_rows(header: list[str], rows: list[list[str]]) -> list[dict[str, str]]:
    """Rows of an older-schema table in today's columns: new cells empty, the split version unknown."""
    out = []
    for values in rows:
        row = {c: "" for c in RESULT_COLUMNS}
        row.update(zip(header, values))
        if "split_version" not in header:
            row["split_version"] = UNKNOWN_SPLIT
        out.append(row)
    return out


def _foreign(path: Path, header: list[str]) -> UserError:
    return UserError(f"{path} is not a results table of this project (its columns start "
                     f"{', '.join(header[:4]) or 'with nothing'}); pass another --results file or move it away")


def _rewrite_with(path: Path, line: bytes) -> None:
    """Write the old table plus ``line`` to a temporary file and rename it into place.

    A table of an older schema (ours, other columns) is migrated in the same atomic
    rewrite: its rows move to today's columns, with split version ``unknown``.
    """
    header = _csv_line(list(RESULT_COLUMNS))
    old = strip_bom(path.read_bytes()) if path.exists() else b""
    if old:
        first = _header(old)
        if tuple(first) != RESULT_COLUMNS:
            if not is_result_table(first):
                raise _foreign(path, first)
            old = _migrated(path, old, first)
        if not old.endswith(b"\n"):
            old += b"\n"
    else:
        old = header
    mode = path.stat().st_mode & 0o777 if path.exists() else None     # new: what the umask gives
    atomic_write(path, lambda f: (f.write(old), f.write(line)), mode)


def _migrated(path: Path, old: bytes, first: list[str]) -> bytes:
    records = list(csv.reader(io.StringIO(old.decode("utf-8"))))[1:]
    bad = [i + 2 for i, r in enumerate(records) if r and len(r) != len(first)]
    if bad:
        raise UserError(f"{path} line {bad[0]} has another number of cells than its header; "
                        "repair that line (or move the table away) and re-run")
    rows = migrate_rows(first, [r for r in records if r])
    log.warning("results table %s had an older schema (%d columns): migrated its %d row(s) to the %d "
                "columns of this version, %snew cells empty", path, len(first), len(rows), len(RESULT_COLUMNS),
                "" if "split_version" in first else f"split_version '{UNKNOWN_SPLIT}' and ")
    return _csv_line(list(RESULT_COLUMNS)) + b"".join(
        _csv_line([r[c] for c in RESULT_COLUMNS]) for r in rows)


def migrate_table(csv_path: str | os.PathLike) -> int:
    """Migrate an older-schema table in place (under the lock, atomically); returns its row count.

    A table already in today's schema is left untouched; a foreign CSV is a UserError.
    """
    path = Path(csv_path)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            old = strip_bom(path.read_bytes())
            first = _header(old)
            if tuple(first) == RESULT_COLUMNS:
                return len(read_table(path))
            if not is_result_table(first):
                raise _foreign(path, first)
            new = _migrated(path, old, first)
            atomic_write(path, lambda f: f.write(new), path.stat().st_mode & 0o777)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return len(read_table(path))


def read_table(csv_path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a results table as dicts of today's columns (older schemas read as migrated).

    Empty, foreign or malformed files are a UserError in one sentence that names the file.
    """
    path = Path(csv_path)
    if path.is_dir():
        tables = sorted(path.glob("*.csv"))
        raise UserError(f"results file {path} is a folder; pass the results table(s) in it"
                        + (f", e.g. {tables[0]}" if tables else " (it holds no .csv)"))
    if not path.is_file():
        raise UserError(f"results file {path} not found; run main_cls.py first or check the path")
    data = strip_bom(path.read_bytes())
    if not data.strip():
        raise UserError(f"results file {path} is empty; pass a table written by main_cls.py")
    try:
        records = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"results file {path} is not a readable CSV ({err}); pass a table written by main_cls.py") from None
    first = records[0]
    if not is_result_table(first):
        raise _foreign(path, first)
    body = [r for r in records[1:] if r]
    for i, r in enumerate(records[1:]):
        if r and len(r) != len(first):
            raise UserError(f"results file {path} line {i + 2} has {len(r)} cells but the header has "
                            f"{len(first)}; repair that line or drop it")
    return migrate_rows(first, body)


def save_predictions(table: str | os.PathLike, stem: str, paths: list[str], y_true: list[str],
                     y_pred: list[str]) -> str:
    """Write one row's per-image predictions beside ``table``; returns the path relative to the table's folder.

    ``<table stem>_predictions/<stem>_<random>.csv`` with columns ``path,true,pred``
    (path relative to the dataset folder, class names). The file name is created
    exclusively, so concurrent runs never overwrite each other's predictions.
    """
    if not (len(paths) == len(y_true) == len(y_pred)):
        raise ValueError(f"predictions: {len(paths)} paths, {len(y_true)} labels, {len(y_pred)} predictions")
    table = Path(table)
    folder = table.parent / f"{table.stem}_predictions"
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "true", "pred"])
    w.writerows(zip(paths, y_true, y_pred))
    data = buf.getvalue().encode("utf-8")
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem)
    while True:
        target = folder / f"{safe}_{uuid.uuid4().hex[:8]}.csv"
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)     # the umask applies
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:      # the row that names this file is appended only afterwards
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as err:            # a full disk or Ctrl-C: no partial predictions file
        target.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(target, err) from None
        raise
    return target.relative_to(table.parent).as_posix()


def load_predictions(table: str | os.PathLike, rel: str) -> tuple[list[str], list[str], list[str]] | None:
    """``(paths, true, pred)`` of a row's ``predictions`` cell, or None when it has none or the file is gone.

    Raises UserError naming the file when it is not a ``path,true,pred`` CSV (truncated, binary, edited).
    """
    if not rel:
        return None
    path = Path(table).parent / rel
    if not path.is_file():
        return None
    fix = "restore it (or empty that row's predictions cell to summarise over seeds only)"
    try:
        rows = list(csv.reader(io.StringIO(strip_bom(path.read_bytes()).decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error):
        raise UserError(f"predictions file {path} is not UTF-8 text (a binary or damaged file); {fix}") from None
    if not rows or [c.strip() for c in rows[0]] != ["path", "true", "pred"]:
        raise UserError(f"predictions file {path} does not start with the header path,true,pred; {fix}")
    bad = next((i + 2 for i, r in enumerate(rows[1:]) if len(r) != 3), None)
    if bad is not None:
        raise UserError(f"predictions file {path} line {bad} does not have 3 cells (a truncated file?); {fix}")
    rows = rows[1:]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
