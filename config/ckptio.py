"""Torch files on disk, safely: atomic ``torch.save`` and ``torch.load`` with one-sentence errors.

The ground floor of every checkpoint path: the engine's checkpoint naming and hand-over
(engine/checkpoint.py) and the readers of published weights (models/pretrained.py) both
stand on it, so models never reach up into the engine to read a file.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch

from config.atomic import atomic_write
from config.errors import UserError

STATE_TAG = "state"          # <netnum>_<expnum>_state.pth: a training state for --resume


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path``.

    The object is written to a temporary file in the same directory, flushed and
    fsynced, then renamed over ``path`` (atomic on POSIX).  If anything fails, the
    temporary file is removed and an older ``path`` is left untouched, so a crash
    or a full disk during a save never destroys the last good checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint", weights_only: bool = True,
                    hint: str = "re-run the job that wrote it") -> Any:
    """``torch.load`` on CPU; a missing or unreadable file is a user error naming it.

    ``weights_only=False`` unpickles in full (optimiser and RNG objects): only for files
    this tool wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_file_error(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:
        raise UserError(f"{what} {path} cannot be read ({type(err).__name__}: {err}); "
                        f"it may be truncated, {hint}") from err


def _missing_file_error(path: Path, what: str) -> UserError:
    """Say which file is missing and which files of the same experiment exist.

    For a backbone only backbone files are listed; for a training state, every file.
    """
    folder = path.parent
    if not folder.is_dir():
        return UserError(f"{what} {path} does not exist and neither does its folder {folder}; check --ckpt")
    prefix = path.stem.rsplit("_", 1)[0] if "_" in path.stem else path.stem
    found = sorted(p.name for p in folder.glob(f"{glob.escape(prefix)}_*.pth"))
    if what == "checkpoint":
        found = [name for name in found if not name.endswith(f"_{STATE_TAG}.pth")]
    if found:
        listed = ", ".join(found[:20]) + (f" (and {len(found) - 20} more)" if len(found) > 20 else "")
        return UserError(f"{what} {path} does not exist; {folder} has {listed}: pick one of those with --cepoch")
    return UserError(
        f"{what} {path} does not exist and {folder} has no {prefix}_*.pth; check --netnum, --expnum and --ckpt"
    )
