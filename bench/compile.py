"""torch.compile on the CPU: a ResNet-18 SimCLR step (backbone + projection head + NT-Xent) compiled
with inductor against the eager step, in one run.

    python bench/compile.py [--netnum 090000] [--bands 13] [--size 64] [--bs 64] [--steps 8] [--amp]

Both use channels_last (the default); the first compiled step includes the compilation. The last
line: ``compile: eager X s/step, compiled Y s/step = X/Y x (first compiled step Z s)``. On the
project's 2-core CPU inductor was slower than eager (docs/benchmarks.md), so the harness does not
compile; a GPU may differ.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from losses.ntxent import NTXentLoss  # noqa: E402
from models import build_backbone  # noqa: E402
from models.heads import ProjectionHead  # noqa: E402


def steps(compiled: bool, a: argparse.Namespace) -> tuple[float, float]:
    """(first step s, median of the later steps s) of one setting."""
    torch.manual_seed(0)
    backbone, width = build_backbone(a.netnum, a.bands)
    model = torch.nn.Sequential(backbone, ProjectionHead(width, width, 128)).to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    criterion = NTXentLoss(0.2)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(2 * a.bs, a.bands, a.size, a.size).contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.amp):
            z = forward(x)
        loss = criterion(*z.float().chunk(2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times[2:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--netnum", default="090000")
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64, help="images per step (two views each)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--amp", action="store_true", help="bf16 autocast in both")
    a = p.parse_args()
    _, eager = steps(False, a)
    first, compiled = steps(True, a)
    print(f"netnum {a.netnum}, {a.bands} bands, {a.size} px, batch {a.bs} x 2 views, {torch.get_num_threads()} "
          f"threads{', bf16' if a.amp else ''}; medians of steps 3-{a.steps}")
    print(f"compile: eager {eager:.3f} s/step, compiled {compiled:.3f} s/step = {eager / compiled:.2f}x "
          f"(first compiled step {first:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
