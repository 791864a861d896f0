"""Losses in float32 under autocast: the one rule every loss of this package follows.

``torch.autocast`` (``--amp``) runs matrix products in bf16 (8 mantissa bits) even when their
inputs are float32, so casting a loss's inputs with ``.float()`` is not enough: Barlow Twins'
cross-correlation, VICReg's covariance and MoCo's queue logits were bf16 products, the Barlow
loss itself a bf16 number (240.0, 242.0, ... in the logs). :func:`full_precision` wraps a loss
method so that its body runs with autocast off on float32 (or wider) tensors, whatever the
caller's autocast state; ``tests/losses/test_precision.py`` checks every loss class of the package
gives its float32 value under bf16 autocast.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _wide(x: Any) -> Any:
    """``x`` with every floating tensor below float32 (also inside lists and tuples) cast up to float32."""
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64) else x
    if isinstance(x, (list, tuple)):
        return type(x)(_wide(v) for v in x)
    return x


def _device_type(args: tuple, kwargs: dict) -> str:
    for x in (*args, *kwargs.values()):
        if torch.is_tensor(x):
            return x.device.type
        if isinstance(x, (list, tuple)) and x and torch.is_tensor(x[0]):
            return x[0].device.type
    return "cpu"


def full_precision(method: F) -> F:
    """Decorate a loss method: its tensors arrive in float32 at least and it runs with autocast off."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.autocast(_device_type(args, kwargs), enabled=False):
            return method(self, *_wide(args), **{k: _wide(v) for k, v in kwargs.items()})
    return wrapper                          # type: ignore[return-value]
