"""The results table: one CSV row per evaluation, safe under concurrent writers.

Few-shot studies launch many evaluations at once (seeds x shots x checkpoints) that
all append to the same ``results/*.csv``.  :func:`append_result` therefore takes an
exclusive lock and replaces the file atomically, so rows are never interleaved or
lost and a crash never leaves a half-written table.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
import os
import subprocess
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from config.errors import UserError
from engine.atomic import atomic_write

log = logging.getLogger(__name__)

RESULT_COLUMNS: tuple[str, ...] = (
    "time", "code_version", "ds", "ts", "seed", "mode", "netnum", "pretrain_expnum", "pretrain_epoch",
    "pretext", "hos", "probe", "epochs", "lr", "OA", "AA", "kappa", "macro_F1", "n_train", "n_test", "seconds",
    "per_class",
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "rs-ssl"


def code_version(repo: str | os.PathLike | None = None) -> str:
    """``git describe --always --dirty`` of the repository, else the package version.

    Recorded with every result so a number can be traced to the code that made it;
    ``-dirty`` flags runs made with uncommitted changes.
    """
    root = Path(repo) if repo is not None else REPO_ROOT
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
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
    unknown column is refused (ValueError), so a typo never shifts the table.

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


def _rewrite_with(path: Path, line: bytes) -> None:
    """Write the old table plus ``line`` to a temporary file and rename it into place."""
    header = _csv_line(list(RESULT_COLUMNS))
    old = path.read_bytes() if path.exists() else b""
    if old:
        first = next(csv.reader([old.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")]), [])
        if tuple(first) != RESULT_COLUMNS:
            raise UserError(
                f"results table {path} has other columns than this version writes; "
                "rename it (or pass another results file) and re-run"
            )
        if not old.endswith(b"\n"):
            old += b"\n"
    else:
        old = header
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    atomic_write(path, lambda f: (f.write(old), f.write(line)), mode)
