"""Torch files on disk, safely: atomic ``torch.save`` and ``torch.load`` with one-sentence errors.

The ground floor of every checkpoint path: the engine's checkpoint naming and hand-over
(engine/checkpoint.py) and the readers of published weights (models/pretrained.py) both
stand on it, so models never reach up into the engine to read a file.
"""
from __future__ import annotations

import glob
import os
import pickle
import pickletools
import zipfile
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
    """``torch.load`` on CPU; a missing or unreadable file is a user error naming it, in one sentence.

    ``weights_only=False`` unpickles in full (optimiser and RNG objects): only for files
    this tool wrote. A readable file that ``weights_only`` refuses (e.g. a training state
    given where a backbone belongs) is named for what it is (:func:`describe_file`).
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_file_error(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:
        kind = describe_file(path)
        if weights_only and isinstance(err, pickle.UnpicklingError) and not kind.startswith("not "):
            raise UserError(f"{what} {path} is {kind}, not a file this flag reads; {hint}") from None
        first = (str(err).strip().splitlines() or [""])[0][:120]
        raise UserError(f"{what} {path} cannot be read ({type(err).__name__}: {first}); it may be truncated, "
                        f"{hint}") from None


def file_strings(path: str | os.PathLike) -> list[str] | None:
    """The string constants of a torch file's pickle (keys, names, values), read WITHOUT unpickling it,
    so any file can be looked at safely; None when it is no readable torch zip file."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            data = z.read(name)
        return [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    except (zipfile.BadZipFile, StopIteration, OSError, ValueError, KeyError, EOFError):
        return None


def describe_file(path: str | os.PathLike) -> str:
    """What a torch file holds, in words for an error message: a pretraining training state, a backbone, a
    classifier (with the ``--netnum``/``--mode`` it records), a state dict of weights, or an unreadable file."""
    strings = file_strings(path)
    if strings is None:
        return "not a readable PyTorch file (truncated, or another format)"
    found = set(strings)

    def after(key: str) -> str:
        i = strings.index(key) if key in found else -1
        return strings[i + 1] if 0 <= i < len(strings) - 1 else ""
    net = after("netnum")
    of = f" of --netnum {net}" if net.isdigit() and len(net) == 6 else ""
    if {"model", "optimizer", "rng"} <= found:
        return f"a pretraining training state{of} (what main_cls_ss_train.py --resume continues)"
    if {"backbone", "meta"} <= found:
        return f"a backbone written by pretraining{of}"
    if {"model", "meta"} <= found:
        return f"a classifier written by main_cls.py --mode 1x/4x{of} (what --mode 2x/3x evaluates)"
    return "a file of weights from another code base"


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
