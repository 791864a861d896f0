"""Pretext tasks: one module per pretraining mode, named in config.codes.PRETEXTS.

A pretext module provides
  ``build(args, opt, backbone) -> nn.Module`` whose ``forward(views)`` returns
      ``(loss, stats)`` (stats: detached 0-dim tensors to log, never ``.item()``: the epoch
      loop sums them on the device and reads them once per epoch) and which keeps the
      shared ``.backbone``;
  ``make_transform(args, opt) -> callable`` turning a raw C x H x W tensor into the
      views that forward expects;
  ``LOSSES``: the ``--loss`` names it accepts;
and optionally ``SYNC_BN = True`` (the loss couples the images of a batch, as contrastive
and redundancy-reduction losses do: on GPUs with several processes BatchNorm is then
synchronised unless ``--no-sync-bn``), ``add_args(group)`` (its own command-line flags), ``check_args(args)``
(raise UserError on bad values, before any worker starts) and
``build_optimizer(args, model, lr) -> Optimizer`` (when ``--optimizer`` does not fit, e.g.
a GAN's Adam with betas 0.5/0.999 and separate generator/discriminator groups).
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
