"""Checkpoint names, crash-safe saving, backbone hand-over and resumable training state.

Names follow the contract ``<ckpt>/<netnum>_<expnum>_<epoch|best>.pth`` with
``expnum = <%y%j%H%M%S>_<mode name>``, so ``main_cls.py --netnum N --expnum E
--cepoch C`` finds what pretraining wrote.  Two kinds of file exist:

- a *backbone* file, ``{'backbone': state_dict, 'meta': {...}}``: what fine-tuning
  loads; small, CPU tensors, readable with ``torch.load(weights_only=True)``;
- a *training state* file (``--ckpt_freq`` / ``--resume``): model, optimiser, AMP
  scaler, epoch, iteration and every RNG state, so a resumed run continues the
  same random stream.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import logging
import os
import random
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from config.atomic import create_exclusive
from config.codes import decode_netnum
from config.ckptio import STATE_TAG, atomic_save, read_checkpoint
from config.errors import UserError

log = logging.getLogger(__name__)

EXPNUM_TIME_FORMAT = "%y%j%H%M%S"
BACKBONE_META_KEYS: tuple[str, ...] = (
    "netnum", "in_channels", "bands", "mode", "epoch", "expnum", "dataset", "args",
)
_MAX_LISTED = 5


def make_expnum(mode_name: str, now: datetime | None = None) -> str:
    """Experiment number ``<%y%j%H%M%S>_<mode_name>``, e.g. ``20186093531_pretrain``.

    The timestamp (2-digit year, day of year, time) sorts chronologically and makes
    runs started in different seconds distinct.
    """
    if not mode_name or not re.fullmatch(r"[A-Za-z0-9_.-]+", mode_name):
        raise ValueError(f"mode name {mode_name!r} must be non-empty letters, digits, '_', '.' or '-'")
    return f"{(now or datetime.now()).strftime(EXPNUM_TIME_FORMAT)}_{mode_name}"


def log_path(ckpt_dir: str | os.PathLike, netnum: str, expnum: str) -> Path:
    """``<ckpt_dir>/<netnum>_<expnum>_log.csv``: a run's per-epoch log, and the file that claims its name."""
    return Path(ckpt_dir) / f"{netnum}_{expnum}_log.csv"


def run_files(ckpt_dir: str | os.PathLike, netnum: str, expnum: str) -> list[Path]:
    """Every file (and TensorBoard folder) of run ``<netnum>_<expnum>`` in ``ckpt_dir``, sorted.

    Only the names a run writes (epochs, best, state, log, figures, classifiers), so runs whose
    names extend ``E`` (``E-2``, ``E_ms``) are not matched.
    """
    folder = Path(ckpt_dir)
    stem = f"{netnum}_{expnum}"
    tags = re.compile(re.escape(stem) + r"_(\d+\.pth|best\.pth|state\.pth|log\.csv|vis_e\d+\.png"
                      r"|ts[0-9.e+-]+_s\d+_\d+\.pth)")
    found = sorted(p for p in folder.glob(f"{glob.escape(stem)}_*") if tags.fullmatch(p.name)) if folder.is_dir() else []
    tb = folder / "tb" / stem
    return found + ([tb] if tb.exists() else [])


def claim_expnum(ckpt_dir: str | os.PathLike, netnum: str, mode_name: str, now: datetime | None = None) -> str:
    """A new expnum that no run in ``ckpt_dir`` uses, made this run's own.

    The name is claimed by creating its log file with O_EXCL, so of two runs started in
    the same second exactly one gets ``<timestamp>_<mode name>``; the other moves on to
    ``<timestamp>-2_<mode name>``, ``-3`` ..., names that keep the SPEC's shape and sort
    in time. A name with files of an older run (from before claims existed) is skipped.
    """
    base = make_expnum(mode_name, now)
    stamp = base[: -len(mode_name) - 1]
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        expnum = base if n == 1 else f"{stamp}-{n}_{mode_name}"
        if run_files(ckpt_dir, netnum, expnum):
            continue
        try:
            create_exclusive(log_path(ckpt_dir, netnum, expnum))
        except FileExistsError:
            continue
        return expnum
    raise AssertionError("unreachable")


def claim_given_expnum(ckpt_dir: str | os.PathLike, netnum: str, expnum: str, overwrite: bool) -> None:
    """Make ``--expnum`` this writing run's own: refused when files of it exist, unless ``overwrite``.

    ``overwrite`` deletes the old run's files first (checkpoints, state, log, figures,
    TensorBoard events), so nothing of the two runs is ever mixed under one name.
    """
    old = run_files(ckpt_dir, netnum, expnum)
    if old and not overwrite:
        listed = ", ".join(p.name for p in old[:_MAX_LISTED]) + (f" (+{len(old) - _MAX_LISTED} more)"
                                                                  if len(old) > _MAX_LISTED else "")
        raise UserError(f"--expnum {expnum} is taken: {ckpt_dir} already has {listed}; leave --expnum out for a new "
                        "name, continue that run with --resume, or replace it with --overwrite")
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if old:
        log.warning("--overwrite: removed %d file(s) of run %s_%s in %s", len(old), netnum, expnum, ckpt_dir)
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    try:
        create_exclusive(log_path(ckpt_dir, netnum, expnum))
    except FileExistsError:
        raise UserError(f"--expnum {expnum} was just taken by another run writing to {ckpt_dir}; "
                        "leave --expnum out for a new name") from None


def ckpt_path(ckpt_dir: str | os.PathLike, netnum: str, expnum: str, epoch_or_best: int | str) -> Path:
    """``<ckpt_dir>/<netnum>_<expnum>_<epoch|best>.pth`` for an epoch number or ``'best'``."""
    tag = str(epoch_or_best).strip()
    if isinstance(epoch_or_best, bool) or not (tag == "best" or tag.isdigit()):
        raise UserError(
            f"checkpoint epoch {epoch_or_best!r} is neither an epoch number nor 'best'; "
            "pass --cepoch N or --cepoch best"
        )
    if tag != "best":
        tag = str(int(tag))
    return Path(ckpt_dir) / f"{netnum}_{expnum}_{tag}.pth"


def state_path(ckpt_dir: str | os.PathLike, netnum: str, expnum: str) -> Path:
    """``<ckpt_dir>/<netnum>_<expnum>_state.pth``: the training state ``--resume`` reads.

    One file per experiment, overwritten every ``--ckpt_freq`` epochs; the backbone
    files next to it keep their epoch numbers.
    """
    return Path(ckpt_dir) / f"{netnum}_{expnum}_{STATE_TAG}.pth"


def _plain(value: Any) -> Any:
    """Turn ``args`` and other metadata into built-in types, loadable with ``weights_only``."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DistributedDataParallel adds to every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def save_backbone(path: str | os.PathLike, backbone_state_dict: Mapping[str, torch.Tensor], meta: dict) -> None:
    """Save a backbone for fine-tuning as ``{'backbone': state_dict, 'meta': meta}``.

    ``meta`` must hold netnum, in_channels, bands, mode, epoch, expnum, dataset and
    args (a dict or Namespace), so a later run can check the backbone fits and say
    where it came from.  Tensors are moved to CPU so the file loads on any machine.
    """
    missing = [k for k in BACKBONE_META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"backbone meta lacks {missing}; it needs {list(BACKBONE_META_KEYS)}")
    state = {k: v.detach().cpu() for k, v in _strip_module_prefix(backbone_state_dict).items()}
    atomic_save({"backbone": state, "meta": _plain(meta)}, path)
    log.info("saved backbone to %s", path)


def _first_conv_in_channels(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """Key and input channels of the first 4-D weight: the band count a backbone takes."""
    for key, value in state_dict.items():
        if value.ndim == 4:
            return key, int(value.shape[1])
    return None


def load_backbone(path: str | os.PathLike, model_backbone: nn.Module, strict_shapes: bool = True) -> dict:
    """Load a backbone written by :func:`save_backbone` into ``model_backbone``; return its meta.

    Every key must match.  A tensor whose shape differs is an error with
    ``strict_shapes=True``; with ``False`` it is skipped (left as initialised) and
    logged, e.g. to reuse a backbone whose first conv had another band count.
    Errors name the file and the first offending keys, and a band-count mismatch
    says both band counts.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, "checkpoint", weights_only=True, hint="pick another epoch")
    if not isinstance(ckpt, dict) or "backbone" not in ckpt:
        keys = list(ckpt)[:_MAX_LISTED] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(
            f"{path} is not a backbone checkpoint (it holds {keys}); "
            "pass a <netnum>_<expnum>_<epoch>.pth written by pretraining"
        )
    meta = dict(ckpt.get("meta") or {})
    model_backbone = _unwrap(model_backbone)
    saved = _strip_module_prefix(ckpt["backbone"])
    if hasattr(model_backbone, "resize_state"):      # a ViT pretrained at another input size: resample pos_embed
        saved = model_backbone.resize_state(saved)
    target = model_backbone.state_dict()

    missing = [k for k in target if k not in saved]
    unexpected = [k for k in saved if k not in target]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"the model's {_first(missing)} are not in it")
        if unexpected:
            parts.append(f"its {_first(unexpected)} are not in the model")
        raise UserError(
            f"checkpoint {path} (netnum {meta.get('netnum', '?')}) does not match this backbone: "
            f"{' and '.join(parts)}; use the --netnum the checkpoint was pretrained with"
        )

    mismatched = [k for k in target if tuple(saved[k].shape) != tuple(target[k].shape)]
    if mismatched:
        detail = ", ".join(
            f"{k} {tuple(saved[k].shape)} vs {tuple(target[k].shape)}" for k in mismatched[:_MAX_LISTED]
        )
        conv = _first_conv_in_channels(target)
        if conv is not None and conv[0] in mismatched and int(saved[conv[0]].shape[1]) != conv[1]:
            ck_bands, model_bands = int(saved[conv[0]].shape[1]), conv[1]
            reason = (
                f"checkpoint {path} has {ck_bands} input bands but the model has {model_bands} "
                f"(checkpoint vs model: {detail}); use a --ds/--dtype with {ck_bands} bands "
                f"or a checkpoint pretrained on {model_bands} bands"
            )
        else:                  # same layer names, other shapes: another variant (e.g. 18 vs 18_small)
            reason = (
                f"checkpoint {path} {_pretrained_with(meta)}does not fit this model: {len(mismatched)} tensor(s) "
                f"differ in shape (checkpoint vs model: {detail}); use the --netnum the checkpoint was "
                f"pretrained with{' (' + str(meta['netnum']) + ')' if meta.get('netnum') else ''}"
            )
        if strict_shapes:
            raise UserError(reason)
        log.warning("%s: skipping %d tensor(s) with other shapes (%s)", path, len(mismatched), detail)
        saved = {k: v for k, v in saved.items() if k not in mismatched}
    model_backbone.load_state_dict(saved, strict=not mismatched)
    log.info("loaded backbone %s (epoch %s, expnum %s)", path, meta.get("epoch"), meta.get("expnum"))
    return meta


def _pretrained_with(meta: Mapping[str, Any]) -> str:
    """"was pretrained with --netnum 000000 (resnet18_small) and " from a checkpoint's meta, or ""."""
    net = meta.get("netnum")
    if not net:
        return ""
    try:
        arch = f" ({decode_netnum(str(net)).backbone})"
    except UserError:
        arch = ""
    return f"was pretrained with --netnum {net}{arch} and "


def _first(keys: list[str]) -> str:
    """The first few keys, for an error message."""
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel, so keys have no prefix."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("CUDA RNG states saved for %d device(s), %d visible: not restored",
                        len(cuda), torch.cuda.device_count())


def save_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    it: int,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict | None = None,
) -> None:
    """Save everything ``--resume`` needs: weights, optimiser, AMP scaler, position, RNG states.

    ``epoch`` is the number of completed epochs and ``it`` the global iteration;
    ``extra`` carries anything else the loop wants back (best accuracy, args).
    """
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "optimizer_name": type(optimizer).__name__,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "it": int(it),
        "extra": dict(extra or {}),
        "rng": _rng_states(),
    }
    atomic_save(state, path)
    log.info("saved training state (epoch %d, iteration %d) to %s", epoch, it, path)


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Restore the optimiser; a state of another optimiser is a user error naming both.

    ``load_state_dict`` itself accepts an SGD state in Adam and only ``step()`` fails
    (KeyError 'betas'), so the optimiser's name (older files: its hyper-parameter keys) is
    compared first.
    """
    saved, mine = state.get("optimizer_name"), type(optimizer).__name__
    groups = state["optimizer"].get("param_groups", [])
    kind = {"betas", "momentum", "dampening", "eta", "amsgrad", "nesterov"}   # keys that tell optimisers apart
    same_keys = all(set(g) & kind == set(h) & kind for g, h in zip(groups, optimizer.param_groups))
    if (saved is not None and saved != mine) or not same_keys or len(groups) != len(optimizer.param_groups):
        was = f"--optimizer {saved.lower()}" if saved else "another --optimizer"
        raise UserError(f"--resume file {path} was trained with {was}, not --optimizer {mine.lower()}; "
                        f"resume with the optimiser the run started with")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, ValueError) as err:
        raise UserError(f"--resume file {path} holds an optimiser state that does not fit this run ({err}); "
                        "resume with the same --optimizer, --netnum and --mode") from None


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict:
    """Restore a file from :func:`save_training_state`; return ``{'epoch', 'it', 'extra'}``.

    The model, optimiser and scaler are loaded in place and the torch, numpy, Python
    (and CUDA, when present) RNG states are restored.  The file is unpickled in full
    (it holds optimiser and RNG objects), so only resume from files you wrote.
    """
    path = Path(path)
    state = read_checkpoint(path, "--resume file", weights_only=False, hint="resume from an older one")
    if not isinstance(state, dict) or "model" not in state or "rng" not in state:
        raise UserError(f"{path} is not a training-state file; pass --resume a file written with --ckpt_freq")
    target = _unwrap(model).state_dict()
    saved = state["model"]
    missing, extra = [k for k in target if k not in saved], [k for k in saved if k not in target]
    shapes = [k for k in target if k in saved and tuple(saved[k].shape) != tuple(target[k].shape)]
    if missing or extra or shapes:          # counts and one example, never the list of hundreds of keys
        example = (shapes or missing or extra)[0]
        raise UserError(f"--resume file {path} does not fit this model ({len(missing)} of its {len(target)} tensors "
                        f"missing, {len(extra)} extra, {len(shapes)} of another shape, e.g. {example}); resume with "
                        "the --netnum and --mode it was written with")
    _unwrap(model).load_state_dict(saved)
    if optimizer is not None:
        _load_optimizer(path, optimizer, state)
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    _set_rng_states(state["rng"])
    log.info("resumed from %s (epoch %d, iteration %d)", path, state["epoch"], state["it"])
    return {"epoch": state["epoch"], "it": state["it"], "extra": state.get("extra", {})}
