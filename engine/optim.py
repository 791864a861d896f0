"""Optimisers by name (``sgd``, ``adam``, ``adamw``, ``lars``) and the one parameter-group rule they share.

The rule (:func:`split_param_groups`), the same for every optimiser: weights (tensors with
>= 2 dimensions) get weight decay and, under LARS, the trust-ratio adaptation; 1-D tensors
(biases, BatchNorm/LayerNorm scales and shifts) and every parameter a module names in its
``no_weight_decay()`` method (timm's convention, e.g. a ViT's 3-D ``cls_token`` and
``pos_embed``) get neither, and may step at their own lr factor (``bias_lr_scale``, e.g.
Barlow Twins' 0.0048 / 0.2). Source of the rule: SimCLR (``tf2/model.py`` excludes
``batch_normalization`` and ``bias`` from weight decay and layer adaptation), BYOL, Barlow
Twins and VICReg (``exclude_bias_and_norm`` filters), DINO (``utils.get_params_groups``),
solo-learn (``exclude_bias_n_norm``). A recipe whose paper decays everything (MoCo v2,
SimSiam: ``SGD(model.parameters(), weight_decay=...)``) passes ``exclude_bias_norm=False``.

LARS (You, Gitman & Ginsburg 2017) is SGD with momentum in which every tensor gets its own
learning rate from the trust ratio ``eta * ||w|| / (||g|| + wd * ||w||)``; ``clip`` caps
that per-layer rate at the scheduled lr (solo-learn's ``clip_lr``, from NVIDIA apex's LARC).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from config.errors import UserError

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw", "lars")
LARS_ETA = 1e-3        # trust coefficient of SimCLR (EETA_DEFAULT), BYOL, Barlow Twins, VICReg, DINO, MoCo v3

ParamsLike = nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum.

    For a tensor ``w`` with gradient ``g`` in a group with learning rate ``lr`` (the
    scheduled value), momentum ``m`` and weight decay ``wd``, one step is::

        d     = g + wd * w
        local = eta * ||w|| / (||g|| + wd * ||w||)
        rate  = min(local, lr)  with clip  (solo-learn: lr * min(local / lr, 1))
              = lr * local      without clip
        rate  = lr              when ||w|| or ||g|| + wd ||w|| is 0 (no adaptation)
        v     = m * v + rate * d
        w     = w - v

    With clipping the scheduled lr is a ceiling: LARS can only shrink a layer's rate, and
    early in a warm-up, when lr is tiny, the step is plain momentum SGD. The rate sits inside
    the momentum ("classic momentum", SimCLR's TF LARS); solo-learn multiplies it outside
    (``v = m v + d * rate / lr``, ``w -= lr v``), the same step whenever lr is constant.

    In a group with ``lars_exclude=True`` weight decay and adaptation are skipped
    (``d = g``, ``rate = lr``): a plain momentum-SGD step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = LARS_ETA,
        clip: bool = False,
    ) -> None:
        if not eta > 0:
            raise ValueError(f"LARS eta={eta} must be positive")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=bool(clip),
                        lars_exclude=False)
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
            wd, eta, clip, exclude = group["weight_decay"], group["eta"], group["clip"], group["lars_exclude"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if exclude:
                    update, rate = grad, lr
                else:
                    w_norm = torch.linalg.vector_norm(p)
                    denom = torch.linalg.vector_norm(grad) + wd * w_norm
                    local = eta * w_norm / denom.clamp_min(1e-30)
                    rate = torch.clamp(local, max=lr) if clip else lr * local
                    rate = torch.where((w_norm > 0) & (denom > 0), rate, torch.full_like(rate, lr))
                    update = grad.add(p, alpha=wd) if wd != 0 else grad
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = torch.zeros_like(p)
                    state["momentum_buffer"] = buf
                buf.mul_(momentum).add_(update * rate)
                p.sub_(buf)
        return loss


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that modules of ``model`` list in their ``no_weight_decay()``.

    timm's convention: a module's method returns names relative to that module (a ViT's
    ``{"pos_embed", "cls_token", ...}``); they are prefixed with the module's path here.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if callable(method):
            names.update(f"{prefix}.{n}" if prefix else str(n) for n in method())
    return names


def split_param_groups(model: nn.Module, exclude_bias_norm: bool = True, bias_lr_scale: float = 1.0,
                       **group_options: Any) -> list[dict[str, Any]]:
    """The parameter groups of :mod:`this module's rule <engine.optim>` for ``model``'s trainable parameters.

    With ``exclude_bias_norm`` (the default): up to two groups, ``"weights"`` (tensors with
    >= 2 dimensions) and ``"bias_norm"`` (1-D tensors and the names of
    :func:`no_weight_decay_names`) with ``weight_decay=0``, ``lars_exclude=True`` and
    ``lr_scale`` multiplied by ``bias_lr_scale``. Without it: one group, ``"all"``, in which
    every tensor is decayed and adapted. ``group_options`` (e.g. ``lr_scale=0.2``) are
    copied into every group; ``lr_scale`` is what :class:`engine.schedules.LRSchedule`
    multiplies the scheduled lr by. Frozen parameters (``requires_grad=False``) are left out.
    """
    if not exclude_bias_norm:
        if bias_lr_scale != 1.0:
            raise ValueError("bias_lr_scale needs exclude_bias_norm: without it biases and norms share the weights' group")
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, **group_options, "name": "all"}] if params else []
    skip = no_weight_decay_names(model)
    weights, others = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (others if p.ndim < 2 or name in skip else weights).append(p)
    groups = []
    if weights:
        groups.append({"params": weights, **group_options, "name": "weights"})
    if others:
        scale = group_options.get("lr_scale", 1.0) * bias_lr_scale
        groups.append({"params": others, **group_options, "weight_decay": 0.0, "lars_exclude": True,
                       "lr_scale": scale, "name": "bias_norm"})
    return groups


def build_optimizer(
    name: str,
    params_or_model: ParamsLike,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    eta: float | None = None,
    clip: bool | None = None,
    exclude_bias_norm: bool = True,
    bias_lr_scale: float = 1.0,
    beta2: float | None = None,
) -> torch.optim.Optimizer:
    """Build the optimiser ``--optimizer NAME`` asks for.

    A model gives the groups of :func:`split_param_groups` (``exclude_bias_norm``,
    ``bias_lr_scale``) whatever the optimiser; an iterable of tensors or a list of
    param-group dicts is used as given (extra keys such as ``lr_scale`` are kept for
    :class:`engine.schedules.LRSchedule`). ``momentum`` is the SGD and LARS momentum and
    Adam's ``beta1``. ``eta`` and ``clip`` (``--lars-eta``, ``--lars-clip``; None:
    :data:`LARS_ETA` and no clipping) belong to LARS and are refused for other optimisers.
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
    if key != "lars" and (eta is not None or clip is not None):
        flag = "--lars-eta" if eta is not None else "--lars-clip/--no-lars-clip"
        raise UserError(f"{flag} sets LARS's trust ratio but --optimizer is {name}; drop it or use --optimizer lars")
    if key not in ("adam", "adamw") and beta2 is not None:
        raise UserError(f"--beta2 is Adam's second-moment decay but --optimizer is {name}; drop it or use adam/adamw")
    if beta2 is not None and not 0 <= beta2 < 1:
        raise UserError(f"--beta2 {beta2} must be in [0, 1); Adam's default is 0.999, MAE pretrains with 0.95")
    if eta is not None and not (math.isfinite(eta) and eta > 0):
        raise UserError(f"--lars-eta {eta} must be a positive number; the papers use 1e-3, solo-learn 0.02")
    if not (math.isfinite(bias_lr_scale) and bias_lr_scale > 0):
        raise UserError(f"--bias-lr-scale {bias_lr_scale} must be a positive factor, e.g. 0.024 (Barlow Twins) or 1")
    if not exclude_bias_norm and bias_lr_scale != 1.0:
        raise UserError(f"--bias-lr-scale {bias_lr_scale} sets the lr of the bias/norm group, which "
                        "--no-exclude-bias-norm merges into the weights; drop one of them")

    if isinstance(params_or_model, nn.Module):
        params: Any = split_param_groups(params_or_model, exclude_bias_norm, bias_lr_scale)
    else:
        params = list(params_or_model)

    if key == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif key == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999 if beta2 is None else beta2),
                               weight_decay=weight_decay)
    elif key == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999 if beta2 is None else beta2),
                                weight_decay=weight_decay)
    else:
        opt = LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                   eta=LARS_ETA if eta is None else eta, clip=bool(clip))
    log.debug("optimizer %s: %d param group(s), lr %g, wd %g", key, len(opt.param_groups), lr, weight_decay)
    return opt


@dataclass(frozen=True)
class OptimSpec:
    """A resolved optimiser choice (``--optimizer``, ``--lr``, ``--momentum``, ``--wd``, LARS's
    ``--lars-eta``/``--lars-clip`` and the bias/norm group's handling), checked by the plan."""

    name: str
    lr: float
    momentum: float = 0.9
    wd: float = 0.0
    eta: float | None = None
    clip: bool | None = None
    exclude_bias_norm: bool = True
    bias_lr_scale: float = 1.0
    beta2: float | None = None

    def build(self, params_or_model: ParamsLike) -> torch.optim.Optimizer:
        return build_optimizer(self.name, params_or_model, self.lr, self.momentum, self.wd, self.eta, self.clip,
                               self.exclude_bias_norm, self.bias_lr_scale, self.beta2)



@torch.no_grad()
def clip_grad_per_tensor(params: Iterable[torch.Tensor], max_norm: float) -> None:
    """DINO's ``utils.clip_gradients``: every parameter tensor's gradient scaled to an L2 norm of at most ``max_norm``.

    Each tensor is clipped on its own (``g *= min(1, max_norm / (||g|| + 1e-6))``), unlike
    ``torch.nn.utils.clip_grad_norm_``'s one global norm. The factor stays a device tensor: no host sync.
    """
    for p in params:
        if p.grad is not None:
            p.grad.mul_(torch.clamp(max_norm / (torch.linalg.vector_norm(p.grad) + 1e-6), max=1.0))
