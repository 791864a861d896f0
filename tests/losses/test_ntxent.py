"""NT-Xent: equality with the textbook formula, stability at small tau, and the distributed contract.

The distributed test is the SPEC's promise: 2 gloo processes x 64 pairs give the same
loss and the same DDP gradients as 1 process x 128 pairs.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from losses import NTXentLoss


def direct_ntxent(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> torch.Tensor:
    """Independent reference: explicit loop over the 2N rows, exp-sums, in the input dtype."""
    z = torch.cat([z_a, z_b])
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    terms = []
    for i in range(n2):
        pos = (i + n) % n2
        den = sum(torch.exp(z[i] @ z[k] / tau) for k in range(n2) if k != i)
        terms.append(-torch.log(torch.exp(z[i] @ z[pos] / tau) / den))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("tau", [0.5, 0.1, 0.07])
def test_equals_direct_formula_float64(tau: float) -> None:
    gen = torch.Generator().manual_seed(0)
    z_a = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)

    ours = NTXentLoss(temperature=tau)(z_a, z_b)
    g_ours = torch.autograd.grad(ours, (z_a, z_b))
    ref = direct_ntxent(z_a, z_b, tau)
    g_ref = torch.autograd.grad(ref, (z_a, z_b))

    assert ours.dtype == torch.float64
    assert abs(ours.item() - ref.item()) < 1e-6
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_known_value_for_identical_embeddings() -> None:
    # All 2N rows equal: every logit is 1/tau, so each row's loss is log(2N - 1).
    z = torch.ones(4, 3)
    loss = NTXentLoss(temperature=0.3)(z, z.clone())
    assert loss.item() == pytest.approx(math.log(7), abs=1e-6)


def test_finite_at_tau_001_with_nearly_identical_embeddings() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(1, 128, generator=gen)
    z_a = (base + 1e-3 * torch.randn(32, 128, generator=gen)).requires_grad_()
    z_b = (base + 1e-3 * torch.randn(32, 128, generator=gen)).requires_grad_()

    loss = NTXentLoss(temperature=0.01)(z_a, z_b)
    loss.backward()

    assert torch.isfinite(loss)
    assert torch.isfinite(z_a.grad).all() and torch.isfinite(z_b.grad).all()
    # near-identical rows: close to the uniform value log(2N - 1), and equal to the float64 formula
    ref = direct_ntxent(z_a.detach().double(), z_b.detach().double(), 0.01)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-3)
    assert loss.item() == pytest.approx(math.log(63), abs=0.5)


def test_float32_stable_where_exp_overflows() -> None:
    # exp(1 / 0.01) = e^100 overflows float32: the exp/sum formula breaks, the log-sum-exp form does not.
    gen = torch.Generator().manual_seed(2)
    z_a = torch.randn(16, 32, generator=gen)
    z_b = z_a + 0.1 * torch.randn(16, 32, generator=gen)
    naive = direct_ntxent(z_a, z_b, 0.01)
    ours = NTXentLoss(temperature=0.01)(z_a, z_b)
    ref = direct_ntxent(z_a.double(), z_b.double(), 0.01)
    assert not torch.isfinite(naive)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)


def test_rejects_mismatched_shapes_and_bad_temperature() -> None:
    with pytest.raises(ValueError):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        NTXentLoss(temperature=0.0)


# --- distributed: 2 processes x 64 pairs == 1 process x 128 pairs -------------------

PAIRS, IN_DIM, OUT_DIM, TAU = 128, 16, 8, 0.2



def _data_and_model() -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """The same inputs and the same initial linear model (no BatchNorm) in every process."""
    torch.manual_seed(0)
    model = nn.Linear(IN_DIM, OUT_DIM)
    x_a = torch.randn(PAIRS, IN_DIM)
    x_b = x_a + 0.5 * torch.randn(PAIRS, IN_DIM)
    return x_a, x_b, model


def _ddp_worker(rank: int, world: int, url: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=url, world_size=world, rank=rank)
    try:
        x_a, x_b, model = _data_and_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        rows = slice(rank * PAIRS // world, (rank + 1) * PAIRS // world)
        loss = NTXentLoss(temperature=TAU)(ddp(x_a[rows]), ddp(x_b[rows]))
        loss.backward()
        with torch.no_grad():
            local = NTXentLoss(temperature=TAU, gather=False)(model(x_a[rows]), model(x_b[rows]))
        torch.save({"loss": loss.detach(), "local": local, "weight": model.weight.grad, "bias": model.bias.grad},
                   Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()     # no rank tears gloo down while another's collectives are in flight (a SIGABRT, once)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_ddp_worker, args=(world, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    x_a, x_b, model = _data_and_model()
    single = NTXentLoss(temperature=TAU)(model(x_a), model(x_b))
    single.backward()

    mean_loss = sum(r["loss"] for r in results) / world
    assert abs(mean_loss.item() - single.item()) < 1e-5
    # each rank's local loss differs from the global one: the test would catch a missing gather
    assert abs(results[0]["loss"].item() - results[1]["loss"].item()) > 1e-4
    for r in results:
        torch.testing.assert_close(r["weight"], model.weight.grad, rtol=0, atol=1e-5)
        torch.testing.assert_close(r["bias"], model.bias.grad, rtol=0, atol=1e-5)
    assert model.weight.grad.abs().max() > 1e-3

    # gather=False: each process sees only its own negatives, as a single process on its half would
    with torch.no_grad():
        for rank, r in enumerate(results):
            rows = slice(rank * PAIRS // world, (rank + 1) * PAIRS // world)
            alone = NTXentLoss(temperature=TAU)(model(x_a[rows]), model(x_b[rows]))
            assert abs(r["local"].item() - alone.item()) < 1e-5


def test_bf16_autocast_keeps_the_similarities_in_fp32() -> None:
    """Fixed inputs, tau 0.1, batch 256: the loss under CPU bf16 autocast is the fp32 loss to 1e-5
    (a bf16 similarity matmul is off by 3e-5 to 9e-4 on such inputs)."""
    gen = torch.Generator().manual_seed(0)
    z_a = torch.randn(256, 128, generator=gen)
    z_b = z_a + 0.5 * torch.randn(256, 128, generator=gen)       # correlated views: a loss well below log(511)
    loss = NTXentLoss(temperature=0.1)
    ref = loss(z_a, z_b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(z_a, z_b)
    assert mixed.dtype == torch.float32
    assert abs(mixed.item() - ref.item()) < 1e-5
    # the check can fail: the same formula with a bf16 matmul misses the bound
    zn = nn.functional.normalize(torch.cat([z_a, z_b]), dim=1)
    logits = (zn.bfloat16() @ zn.bfloat16().T).float() / 0.1
    rows = torch.arange(512)
    logits[rows, rows] = float("-inf")
    bf16 = nn.functional.cross_entropy(logits, (rows + 256) % 512)
    assert abs(bf16.item() - ref.item()) > 1e-5
