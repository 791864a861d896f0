"""Pretext tasks: one module per pretraining mode, named in config.codes.PRETEXTS.

A pretext module provides
  ``build(args, opt, backbone) -> nn.Module`` whose ``forward(views)`` returns
      ``(loss, stats)`` (stats: detached 0-dim tensors to log, never ``.item()``: the epoch
      loop sums them on the device and reads them once per epoch) and which keeps the
      shared ``.backbone``;
  ``make_transform(args, opt) -> callable`` turning a raw C x H x W tensor into the
      views that forward expects;
  ``LOSSES``: the ``--loss`` names it accepts;
  ``RECIPES = {"paper": {...}, "small": {...}}`` (flag dest -> value, plus ``lr_base`` and
      ``lr_rule``) and ``SOURCES`` (the same keys -> where each value comes from): what
      ``--recipe`` fills in for the flags the user did not give (engine/recipes.py);
and optionally ``SYNC_BN = True`` (the loss couples the images of a batch, as contrastive
and redundancy-reduction losses do: on GPUs with several processes BatchNorm is then
synchronised unless ``--no-sync-bn``), ``add_args(group)`` (its own command-line flags), ``check_args(args)``
(raise UserError on bad values, before any worker starts) and
``build_optimizer(args, model, lr) -> Optimizer`` (when ``--optimizer`` does not fit, e.g.
a GAN's Adam with betas 0.5/0.999 and separate generator/discriminator groups),
``check_data(args, n_train, global_bs)`` (checks that need the training-set size, e.g.
MoCo's queue length), and the constants ``TAU`` / ``FEATURE_DIM`` (the method's default
temperature and projector size; absent or None: ``--tau`` / ``--feature_dim`` are refused).

The built model may have
  ``on_step_end(progress)``: called by the epoch loop after every ``optimizer.step()``
      with ``progress`` = global step / total steps in (0, 1]; EMA teachers, momentum
      schedules and queues update there. Their state lives in buffers and submodules
      (teacher parameters with ``requires_grad=False``), so the training state saved for
      ``--resume`` holds it and a resumed run is bit-identical;
  ``kept_backbone``: the backbone that is monitored and saved, when it is not the one
      passed to ``build`` (DINO keeps its EMA teacher, as the paper evaluates);
  ``uses_index = True``: the epoch loop calls ``forward(views, index)`` with the batch's
      sample indices (positions in the training set, on the device), e.g. for MoCo's queue
      to know whose keys it holds.
Stats returned by ``forward`` are detached 0-dim tensors (no host sync in the step).
Adding a pretext = one module here + one row in config/codes.py.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from config.codes import PRETEXTS, Mode
from config.errors import UserError


def implemented() -> list[int]:
    """Pretraining mode codes that have a module in this package."""
    out = []
    for code, (name, _) in PRETEXTS.items():
        if importlib.util.find_spec(f"models.pretext.{name}") is not None:
            out.append(code)
    return out


def try_load(name: str) -> ModuleType | None:
    """The pretext module called ``name``, or None when it does not exist."""
    if importlib.util.find_spec(f"models.pretext.{name}") is None:
        return None
    return importlib.import_module(f"models.pretext.{name}")


def load(mode: Mode) -> ModuleType:
    """The module implementing pretraining ``mode``; a clear error if it is not there yet."""
    name = mode.pretext
    if importlib.util.find_spec(f"models.pretext.{name}") is None:
        raise UserError(f"--mode {mode.code} ({name}) is not implemented in this version yet; "
                        f"implemented pretraining modes: {', '.join(map(str, implemented()))}")
    return importlib.import_module(f"models.pretext.{name}")


def modules() -> list[ModuleType]:
    """The implemented pretext modules (for their command-line flags)."""
    return [importlib.import_module(f"models.pretext.{PRETEXTS[c][0]}") for c in implemented()]
