"""Every loss gives its float32 value and gradients under bf16 autocast (--amp).

Autocast runs matrix products in bf16 even on float32 inputs, so ``.float()`` on a loss's inputs
is not enough: before losses/precision.py the Barlow Twins loss under --amp was a bf16 number and
its cross-correlation, VICReg's covariance and MoCo's queue logits bf16 products. The inputs here
are rounded to bf16 first (what a network under autocast hands a loss), so the float32 reference
and the autocast run see the same numbers and must agree to float32 rounding.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import nn

import losses
from losses import BarlowTwinsLoss, BYOLLoss, DINOLoss, InfoNCELoss, MAELoss, MoCoV3Loss, NTXentLoss, SimSiamLoss, VICRegLoss
from losses.precision import full_precision

N = 32


def bf16_randn(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).bfloat16()


def views(d: int, seed: int = 0, k: int = 2) -> list[torch.Tensor]:
    """``k`` correlated N x d views (as two augmentations of one batch), bf16 values."""
    base = bf16_randn(N, d, seed=seed).float()
    return [(base + 0.3 * bf16_randn(N, d, seed=seed + 1 + i).float()).bfloat16() for i in range(k)]


def queue(d: int = 128, k: int = 1024) -> torch.Tensor:
    return torch.nn.functional.normalize(bf16_randn(k, d, seed=9).float(), dim=1)


# loss class -> (constructor, inputs); one entry per loss class in the package (checked below)
CASES = {
    BarlowTwinsLoss: (lambda: BarlowTwinsLoss(5.1e-3, gather=False), lambda: views(2048)),
    VICRegLoss: (lambda: VICRegLoss(gather=False), lambda: views(2048)),
    NTXentLoss: (lambda: NTXentLoss(0.2, gather=False), lambda: views(128)),
    InfoNCELoss: (lambda: InfoNCELoss(0.2), lambda: [*views(128), queue()]),
    MoCoV3Loss: (lambda: MoCoV3Loss(0.2), lambda: views(256, k=4)),
    BYOLLoss: (BYOLLoss, lambda: views(256, k=4)),
    SimSiamLoss: (SimSiamLoss, lambda: views(2048, k=4)),
    DINOLoss: (lambda: DINOLoss(512, center_init="first"), lambda: [views(512, seed=3), views(512, seed=5)]),
    MAELoss: (lambda: MAELoss(8), lambda: [bf16_randn(4, 13, 32, 32, seed=1), bf16_randn(4, 16, 8 * 8 * 13, seed=2),
                                           (torch.arange(16) % 4 != 0).float().expand(4, 16)]),
}


def loss_classes() -> set[type]:
    found = set()
    for info in pkgutil.iter_modules(losses.__path__):
        module = importlib.import_module(f"losses.{info.name}")
        found |= {obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, nn.Module) and obj.__module__ == module.__name__}
    return found


def test_every_loss_class_of_the_package_is_checked_here():
    missing = loss_classes() - set(CASES)
    assert not missing, f"add a case to CASES for {sorted(c.__name__ for c in missing)}"


def leaves(inputs):
    """The floating tensors to differentiate (fresh float32 leaves; lists stay lists)."""
    def conv(x):
        if isinstance(x, list):
            return [conv(v) for v in x]
        return x.float().requires_grad_() if x.is_floating_point() and x.dtype == torch.bfloat16 else x
    return [conv(x) for x in inputs]


def flat(inputs):
    for x in inputs:
        if isinstance(x, list):
            yield from flat(x)
        elif x.requires_grad:
            yield x


def run(cls, amp: bool):
    make, data = CASES[cls]
    loss_fn = make()
    inputs = leaves(data())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn(*inputs)
    grads = torch.autograd.grad(loss, list(flat(inputs)), allow_unused=True)
    return loss, [g for g in grads if g is not None]


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_a_loss_under_bf16_autocast_is_its_float32_value(cls):
    ref, ref_grads = run(cls, amp=False)
    out, out_grads = run(cls, amp=True)
    assert out.dtype == torch.float32, f"{cls.__name__} returns {out.dtype} under autocast"
    assert out.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-7)
    assert ref_grads, f"{cls.__name__}: no gradient reached the inputs"
    for g, r in zip(out_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)


def test_full_precision_turns_autocast_off_inside_and_casts_nested_inputs():
    class Probe(nn.Module):
        @full_precision
        def forward(self, a, pair):
            return a.dtype, [p.dtype for p in pair], (a @ a.T).dtype, torch.is_autocast_enabled("cpu")

    with torch.autocast("cpu", dtype=torch.bfloat16):
        a_dtype, pair_dtypes, product, inside = Probe()(torch.ones(2, 3, dtype=torch.bfloat16),
                                                        [torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float64)])
        assert torch.is_autocast_enabled("cpu"), "the caller's autocast state comes back after the loss"
    assert (a_dtype, pair_dtypes, product, inside) == (torch.float32, [torch.float32, torch.float64], torch.float32, False)
