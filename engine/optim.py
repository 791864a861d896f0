"""Optimisers by name: ``sgd``, ``adam``, ``adamw`` and ``lars``.

LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks";
the optimiser SimCLR pretrains with) is SGD with momentum in which every parameter
tensor gets its own learning rate, scaled by the trust ratio

    trust = eta * ||w|| / (||g|| + wd * ||w||)

so that a layer's step is a fixed fraction of its weight norm whatever the batch size.
Biases and BatchNorm parameters (every tensor with fewer than 2 dimensions) are
excluded from both weight decay and the adaptation, as in SimCLR: they are small,
their norms say little about the layer, and decaying them hurts.  A param group marks
this with ``lars_exclude=True``; :func:`split_param_groups` builds the two groups from
a model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from config.errors import UserError

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw", "lars")

ParamsLike = nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum.

    For a tensor ``w`` with gradient ``g`` in a group with learning rate ``lr``,
    momentum ``m`` and weight decay ``wd``, one step is::

        d     = g + wd * w
        trust = eta * ||w|| / (||g|| + wd * ||w||)   (1 when ||w|| or that denominator is 0)
        v     = m * v + lr * trust * d
        w     = w - v

    In a group with ``lars_exclude=True`` the weight decay and the trust ratio are
    skipped (``d = g``, ``trust = 1``): a plain momentum-SGD step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
    ) -> None:
        if eta <= 0:
            raise ValueError(f"LARS eta={eta} must be positive")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Apply one LARS update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            wd, eta, exclude = group["weight_decay"], group["eta"], group["lars_exclude"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if exclude:
                    update = grad
                    scaled_lr = lr
                else:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    denom = g_norm + wd * w_norm
                    trust = torch.where(
                        (w_norm > 0) & (denom > 0), eta * w_norm / denom.clamp_min(1e-30), torch.ones_like(w_norm)
                    )
                    update = grad.add(p, alpha=wd) if wd != 0 else grad
                    scaled_lr = lr * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = torch.zeros_like(p)
                    state["momentum_buffer"] = buf
                buf.mul_(momentum).add_(update * scaled_lr)
                p.sub_(buf)
        return loss


def split_param_groups(model: nn.Module, **group_options: Any) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into weights and biases/norm parameters.

    Returns up to two groups: the weights (tensors with >= 2 dimensions) and the rest
    (biases, BatchNorm/LayerNorm scales and shifts) with ``weight_decay=0`` and
    ``lars_exclude=True``.  ``group_options`` (e.g. ``lr_scale=0.2`` for a backbone
    trained at lr/5) are copied into both groups, so callers can build one pair per
    sub-module.  Frozen parameters (``requires_grad=False``) are left out.
    """
    weights, others = [], []
    for p in model.parameters():
        if p.requires_grad:
            (weights if p.ndim >= 2 else others).append(p)
    groups = []
    if weights:
        groups.append({"params": weights, **group_options})
    if others:
        groups.append({"params": others, **group_options, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build_optimizer(
    name: str,
    params_or_model: ParamsLike,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Build the optimiser ``--optimizer NAME`` asks for.

    ``params_or_model`` is a model, an iterable of tensors or a list of param-group
    dicts (extra keys such as ``lr_scale`` are kept for :class:`engine.schedules.LRSchedule`).
    A model gives all its trainable parameters in one group, except for ``lars``,
    which gets the two groups of :func:`split_param_groups`.  ``momentum`` is the SGD
    and LARS momentum and Adam's ``beta1`` (0.9, Adam's usual value, by default).
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise UserError(f"--optimizer {name!r} is unknown; use one of: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise UserError(f"--lr {lr} must be a positive number; pass e.g. --lr 1e-4")
    if not 0 <= momentum < 1:
        raise UserError(f"--momentum {momentum} must be in [0, 1); pass e.g. --momentum 0.9")
    if weight_decay < 0:
        raise UserError(f"--wd {weight_decay} must be >= 0; pass e.g. --wd 0 or --wd 1e-6")

    if isinstance(params_or_model, nn.Module):
        if key == "lars":
            params: Any = split_param_groups(params_or_model)
        else:
            params = [p for p in params_or_model.parameters() if p.requires_grad]
    else:
        params = list(params_or_model)

    if key == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif key == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    elif key == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    else:
        opt = LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    log.debug("optimizer %s: %d param group(s), lr %g, wd %g", key, len(opt.param_groups), lr, weight_decay)
    return opt


@dataclass(frozen=True)
class OptimSpec:
    """A resolved optimiser choice (``--optimizer``, ``--lr``, ``--momentum``, ``--wd``), checked by the plan."""

    name: str
    lr: float
    momentum: float = 0.9
    wd: float = 0.0

    def build(self, params_or_model: ParamsLike) -> torch.optim.Optimizer:
        return build_optimizer(self.name, params_or_model, self.lr, self.momentum, self.wd)

