"""The DINO loss: cross-entropy from the centred, sharpened teacher to the student, multi-crop."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from config.dist import is_dist, world_size
from losses.precision import full_precision


class DINOLoss(nn.Module):
    r"""Self-distillation with no labels (Caron et al., ICCV 2021, eq. 3-4 and Algorithm 1).

    For teacher outputs ``t_g`` of the global crops and student outputs ``s_v`` of every
    crop (K prototypes each),

    .. math::

        P_t = \mathrm{softmax}\big((t_g - c) / \tau_t\big), \quad
        \log P_s = \log\mathrm{softmax}(s_v / \tau_s), \quad
        L = \frac{1}{|\{(g, v): v \ne g\}|} \sum_{g} \sum_{v \ne g}
            \frac{1}{N} \sum_i -P_{t,i} \cdot \log P_{s,i},

    then the centre moves to the batch mean of the teacher outputs,
    ``c <- m c + (1 - m) mean_i t_{g,i}`` (over both global crops and ALL processes:
    the one cross-sample term). Centring (``c``) and sharpening (``tau_t`` < ``tau_s``)
    together avoid collapse. ``c`` is a buffer, saved with the model.

    Args:
        out_dim: K, the number of prototypes.
        teacher_temp, student_temp: ``tau_t`` (0.04) and ``tau_s`` (0.1, ``--tau``); ``forward``
            may be given the teacher temperature of the step (its warm-up schedule).
        center_momentum: ``m`` (0.9).
        center_init: ``zero`` (the paper's code: ``c = 0`` before the first step) or ``first``:
            the first step centres with, and sets ``c`` to, that batch's mean teacher output,
            so the centre is unbiased from step 0 instead of after ~1 / (1 - m) steps
            (``0.9 ** 20`` = 12 % of the zero start is left after 20 steps).

    After each call ``teacher_entropy`` holds the mean entropy of the teacher's distributions
    divided by ``ln K`` (1: uniform, a collapse DINO's sharpening must avoid; near 0: one-hot).
    """

    CENTER_INITS = ("zero", "first")

    def __init__(self, out_dim: int, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9, center_init: str = "zero") -> None:
        super().__init__()
        if center_init not in self.CENTER_INITS:
            raise ValueError(f"center_init {center_init!r} is not one of {self.CENTER_INITS}")
        self.teacher_temp, self.student_temp, self.center_momentum = teacher_temp, student_temp, center_momentum
        self.center_init = center_init
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_ready", torch.tensor(center_init == "zero"))
        self.teacher_entropy = torch.zeros(())

    @full_precision
    def forward(self, student: list[Tensor], teacher: list[Tensor], update_center: bool = True,
                teacher_temp: Tensor | float | None = None) -> Tensor:
        """``student``: one N x K output per crop, global crops first; ``teacher``: one per global crop."""
        temp = self.teacher_temp if teacher_temp is None else teacher_temp
        log_ps = [F.log_softmax(s / self.student_temp, dim=1) for s in student]
        with torch.no_grad():
            batch = self.batch_center(teacher) if update_center or self.center_init != "zero" else None
            center = self.center if batch is None else torch.where(self.center_ready, self.center, batch)
            pt = [F.softmax((t - center) / temp, dim=1) for t in teacher]
            p = torch.cat(pt)
            entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1).mean()
            self.teacher_entropy = entropy / math.log(p.shape[1])
        total, n_terms = 0.0, 0
        for g, p in enumerate(pt):
            for v, lp in enumerate(log_ps):
                if v == g:
                    continue
                total = total + (-(p * lp).sum(dim=1)).mean()
                n_terms += 1
        if update_center:
            with torch.no_grad():
                self.center.copy_(center * self.center_momentum + batch * (1 - self.center_momentum))
                self.center_ready.fill_(True)
        return total / n_terms

    @torch.no_grad()
    def batch_center(self, teacher: list[Tensor]) -> Tensor:
        """The mean teacher output over the global batch (all processes), 1 x K."""
        t = torch.cat(teacher).to(self.center.dtype)
        batch_sum = t.sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(t)), device=t.device)
        if is_dist() and world_size() > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        return batch_sum / count

    @torch.no_grad()
    def update_center(self, teacher: list[Tensor]) -> None:
        """EMA of the teacher outputs' mean over the global batch (all processes); a ``first`` centre
        not yet set becomes that mean."""
        batch = self.batch_center(teacher)
        center = torch.where(self.center_ready, self.center, batch)
        self.center.copy_(center * self.center_momentum + batch * (1 - self.center_momentum))
        self.center_ready.fill_(True)
