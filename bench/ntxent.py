"""Benchmark: NTXentLoss against the direct NT-Xent formula most repositories use.

The direct formula builds the 2N x 2N x d cosine-similarity tensor by broadcasting,
exponentiates, and divides masked sums; NTXentLoss does one 2N x d @ d x 2N matmul and
a cross-entropy. Both are timed forward + backward on the same projections (N pairs,
d = 128, so 2N rows), their values compared, and a markdown table printed.

    python bench/ntxent.py                     # batches 64 256 512
    python bench/ntxent.py --batches 256 --repeats 9
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from losses import NTXentLoss  # noqa: E402


def direct_ntxent(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> torch.Tensor:
    """The common implementation: broadcast cosine similarity, exp, masked sums, -log(pos / den)."""
    n = z_a.shape[0]
    z = torch.cat([z_a, z_b], dim=0)
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)      # 2N x 2N via 2N x 2N x d
    exp = torch.exp(sim / tau)
    not_self = ~torch.eye(2 * n, dtype=torch.bool, device=z.device)
    den = (exp * not_self).sum(dim=1)
    pos = torch.cat([torch.diag(exp, n), torch.diag(exp, -n)])
    return -torch.log(pos / den).mean()


def time_fwd_bwd(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z_a: torch.Tensor,
                 z_b: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Median seconds of forward + backward over ``repeats`` runs (after one warm-up), the loss and grad."""
    times = []
    for i in range(repeats + 1):
        a, b = z_a.detach().requires_grad_(), z_b.detach().requires_grad_()
        start = time.perf_counter()
        loss = fn(a, b)
        loss.backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times), loss.detach(), torch.cat([a.grad, b.grad])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512], help="pairs per batch (N)")
    parser.add_argument("--dim", type=int, default=128, help="projection size d (--feature_dim)")
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed runs of the direct formula (median); NTXentLoss, being fast, gets 10x as many")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loss_fn = NTXentLoss(temperature=args.tau)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={args.dim}, tau={args.tau}, "
          f"forward+backward, median of {10 * args.repeats} (NTXentLoss) / {args.repeats} (direct) runs, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    print("| batch N (2N rows) | NTXentLoss ms | direct formula ms | speed-up | max abs diff loss | max abs diff grad |")
    print("|---|---|---|---|---|---|")
    for n in args.batches:
        gen = torch.Generator().manual_seed(n)
        z_a = torch.randn(n, args.dim, generator=gen)
        z_b = z_a + 0.5 * torch.randn(n, args.dim, generator=gen)
        t_ours, l_ours, g_ours = time_fwd_bwd(loss_fn, z_a, z_b, 10 * args.repeats)
        t_direct, l_direct, g_direct = time_fwd_bwd(lambda a, b: direct_ntxent(a, b, args.tau), z_a, z_b, args.repeats)
        d_loss = (l_ours - l_direct).abs().item()
        d_grad = (g_ours - g_direct).abs().max().item()
        print(f"| {n} ({2 * n}) | {t_ours * 1e3:.2f} | {t_direct * 1e3:.1f} | {t_direct / t_ours:.0f}x "
              f"| {d_loss:.1e} | {d_grad:.1e} |")


if __name__ == "__main__":
    main()
