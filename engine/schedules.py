"""Learning-rate schedules (``--lr_policy``), set once per iteration.

One class serves both entry scripts, so the schedule is written once (the seed code
and MoCo keep a copy in each script).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from config.errors import UserError

POLICIES: tuple[str, ...] = ("cosine", "step", "linear", "polyline", "const")


class LRSchedule:
    """Learning rate as a function of the (fractional) epoch, with linear warmup.

    Warmup: with ``W = round(warmup_epochs * iters_per_epoch)`` warmup iterations,
    iteration ``i < W`` uses ``base_lr * (i + 1) / W``: it starts at ``base_lr / W``
    and reaches ``base_lr`` on the last warmup iteration.

    After warmup the policy's curve runs over the post-warmup epochs ``[w, epochs]``,
    where ``w = W / iters_per_epoch`` (as in SimCLR and MoCo v3): every policy starts
    at ``base_lr`` when warmup ends, so there is no jump.  Milestones stay absolute
    epochs, as the user writes them, and must lie strictly between ``w`` and
    ``epochs``.  With ``p = (t - w) / (epochs - w)``, at epoch ``t``:

    - ``cosine``: ``final_lr + (base_lr - final_lr) * (1 + cos(pi * p)) / 2``;
    - ``linear``: ``base_lr + (final_lr - base_lr) * p``;
    - ``step``: ``base_lr * decay ** k``, ``k`` = number of milestones ``<= t``;
    - ``polyline``: piecewise linear through the points ``(w, base_lr)``,
      ``(m1, base_lr * decay)``, ``(m2, base_lr * decay**2)``, ...,
      ``(epochs, base_lr * decay**len(milestones))``: a step schedule whose steps are
      ramps from one milestone to the next, flat after the last milestone (and flat
      throughout without milestones);
    - ``const``: ``base_lr``.

    Milestones and ``decay`` are used by ``step`` and ``polyline`` only (milestones
    given to another policy are an error, not silently ignored), ``final_lr`` by
    ``cosine`` and ``linear`` only.  Epochs past ``epochs`` keep the final value.
    """

    def __init__(
        self,
        policy: str,
        base_lr: float,
        epochs: int,
        iters_per_epoch: int,
        warmup_epochs: float = 0,
        milestones: Sequence[int] = (),
        decay: float = 0.1,
        final_lr: float = 0.0,
        wd_end: float | None = None,
    ) -> None:
        self.policy = policy.lower()
        if self.policy not in POLICIES:
            raise UserError(f"--lr_policy {policy!r} is unknown; use one of: {', '.join(POLICIES)}")
        if not base_lr > 0:
            raise UserError(f"--lr {base_lr} must be a positive number; pass e.g. --lr 1e-4")
        if epochs < 1:
            raise UserError(f"--mepoch {epochs} must be at least 1; pass the number of training epochs")
        if iters_per_epoch < 1:
            raise UserError(
                f"iterations per epoch is {iters_per_epoch}; the training set is smaller than one batch, "
                "lower --bs or use more images"
            )
        if not 0 <= warmup_epochs < epochs:
            raise UserError(f"--warmup {warmup_epochs} must be >= 0 and below --mepoch {epochs}; pass fewer epochs")
        self.base_lr = float(base_lr)
        self.epochs = int(epochs)
        self.iters_per_epoch = int(iters_per_epoch)
        self.decay = float(decay)
        self.final_lr = float(final_lr)
        self.warmup_iters = max(1, round(warmup_epochs * iters_per_epoch)) if warmup_epochs > 0 else 0
        if self.warmup_iters >= self.total_iters:
            raise UserError(
                f"--warmup {warmup_epochs} covers the whole run of --mepoch {epochs}; shorten the warmup"
            )
        self.warmup_end = self.warmup_iters / self.iters_per_epoch
        if wd_end is not None and not (wd_end >= 0 and math.isfinite(wd_end)):
            raise UserError(f"--wd-end {wd_end} must be a finite number >= 0; pass e.g. --wd-end 0.4")
        self.wd_end = wd_end
        self.milestones = tuple(milestones)
        if self.policy in ("step", "polyline"):
            self._check_milestones()
        elif self.milestones:
            raise UserError(
                f"--milestones {list(self.milestones)} are used only by the step and polyline policies; "
                f"drop them or pick --lr_policy step"
            )

    @property
    def total_iters(self) -> int:
        """Iterations in the whole run."""
        return self.epochs * self.iters_per_epoch

    def _check_milestones(self) -> None:
        ms = self.milestones
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise UserError(f"--milestones {list(ms)} must be strictly increasing; sort them and drop duplicates")
        bad = [m for m in ms if not self.warmup_end < m < self.epochs]
        if bad:
            raise UserError(
                f"--milestones {bad} lie outside ({self.warmup_end:g}, {self.epochs}); "
                f"give epochs after the warmup and before --mepoch {self.epochs}"
            )
        if not self.decay > 0:
            raise UserError(f"--lr_decay {self.decay} must be positive; pass e.g. --lr_decay 0.1")

    def _policy(self, t: float) -> float:
        """The post-warmup curve at epoch ``t`` (``warmup_end <= t <= epochs``)."""
        base, final = self.base_lr, self.final_lr
        p = (t - self.warmup_end) / (self.epochs - self.warmup_end)
        if self.policy == "cosine":
            return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * p))
        if self.policy == "linear":
            return base + (final - base) * p
        if self.policy == "step":
            return base * self.decay ** sum(1 for m in self.milestones if t >= m)
        if self.policy == "polyline":
            n = len(self.milestones)
            xs = (self.warmup_end, *self.milestones, self.epochs)
            ys = [base * self.decay**k for k in range(n + 1)] + [base * self.decay**n]
            for k in range(n + 1):
                if t <= xs[k + 1]:
                    return ys[k] + (ys[k + 1] - ys[k]) * (t - xs[k]) / (xs[k + 1] - xs[k])
            return ys[-1]
        return base

    def lr_at(self, epoch: float) -> float:
        """Learning rate at a fractional epoch (``iteration / iters_per_epoch``)."""
        t = min(max(float(epoch), 0.0), float(self.epochs))
        if t < self.warmup_end:
            return self.base_lr * min(1.0, (t * self.iters_per_epoch + 1) / self.warmup_iters)
        return self._policy(t)

    def wd_at(self, it_global: int, start: float) -> float:
        """``--wd-end``: DINO's ``cosine_scheduler(wd, wd_end, epochs, niter)``, from ``start`` at iteration 0 to
        ``wd_end`` (at iteration i of N: ``p = i / N``, as there), over the whole run, no warm-up; groups without
        decay stay at 0."""
        p = min(max(it_global / self.total_iters, 0.0), 1.0)
        return self.wd_end + (start - self.wd_end) * 0.5 * (1.0 + math.cos(math.pi * p))

    def step(self, optimizer: torch.optim.Optimizer, it_global: int) -> float:
        """Set the lr of every param group for global iteration ``it_global`` (0-based).

        A group's lr is the schedule's value times its ``lr_scale`` key (default 1),
        which is how "backbone at lr/5" (``--hos 1``) is expressed.  With ``wd_end`` every
        decayed group's weight decay follows ``wd_at`` from the decay it was built with
        (kept as its ``wd_start`` key, so a resumed optimiser continues the curve).  Returns
        the unscaled lr, for logging.
        """
        lr = self.lr_at(it_global / self.iters_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if self.wd_end is not None:
            for group in optimizer.param_groups:
                start = group.setdefault("wd_start", group.get("weight_decay", 0.0))
                if start > 0:
                    group["weight_decay"] = self.wd_at(it_global, start)
        return lr


@dataclass(frozen=True)
class ScheduleSpec:
    """A resolved ``--lr_policy`` with its ``--warmup``, ``--milestones`` and ``--lr_decay`` over ``epochs``."""

    policy: str
    epochs: int
    warmup: float = 0.0
    milestones: tuple[int, ...] = ()
    decay: float = 0.1
    wd_end: float | None = None

    def build(self, base_lr: float, iters_per_epoch: int) -> LRSchedule:
        return LRSchedule(self.policy, base_lr, self.epochs, iters_per_epoch, self.warmup, self.milestones, self.decay,
                          wd_end=self.wd_end)

