"""Images/s of the harness's SimCLR epoch against a bare PyTorch loop on the same tensors.

    python bench/pretrain_step.py [--netnum 000000] [--images 96] [--bs 32] [--repeats 3]

Both loops see the same pre-made views (13 x 64 x 64, in memory) and do the same
forward/backward/step on the same model; the harness adds what it always does (lr
schedule, non-finite check, embedding std, meters). Alternating passes, median of each.
Target: harness >= 0.9x bare.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from engine.optim import build_optimizer  # noqa: E402
from engine.pretrain import train_one_epoch  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.schedules import LRSchedule  # noqa: E402
from losses.ntxent import NTXentLoss  # noqa: E402
from models import build_backbone  # noqa: E402
from models.pretext.simclr import SimCLR  # noqa: E402


class Views(Dataset):
    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i):
        return (self.a[i], self.b[i]), -1, i


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--netnum", default="000000", help="backbone code (000000 = resnet18_small)")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    va = torch.randn(a.images, 13, a.size, a.size)
    vb = torch.randn(a.images, 13, a.size, a.size)
    backbone, _ = build_backbone(a.netnum, 13)
    model = SimCLR(backbone, 128, 0.2)
    bare_model = copy.deepcopy(model)
    loader = DataLoader(Views(va, vb), batch_size=a.bs, shuffle=False, drop_last=True, num_workers=0)
    opt_h = build_optimizer("adam", model, 1e-3)
    opt_b = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    sched = LRSchedule("cosine", 1e-3, 10, len(loader))
    rt = Runtime(torch.device("cpu"))
    args = argparse.Namespace(progress=False)
    crit = NTXentLoss(0.2)
    n = len(loader) * a.bs

    def harness() -> float:
        t = time.perf_counter()
        train_one_epoch(model, loader, opt_h, sched, 0, rt, args, None)
        return n / (time.perf_counter() - t)

    def bare() -> float:
        bare_model.train()
        t = time.perf_counter()
        for i in range(0, n, a.bs):
            x = torch.cat([va[i:i + a.bs], vb[i:i + a.bs]])
            z = bare_model.projector(bare_model.backbone(x))
            loss = crit(*z.chunk(2))
            opt_b.zero_grad(set_to_none=True)
            loss.backward()
            opt_b.step()
        return n / (time.perf_counter() - t)

    harness(), bare()                      # warm-up
    h, b = [], []
    for _ in range(a.repeats):
        h.append(harness())
        b.append(bare())
    hm, bm = statistics.median(h), statistics.median(b)
    print(f"SimCLR step, netnum {a.netnum}, 13 x {a.size} x {a.size}, batch {a.bs}, {n} images/pass, "
          f"{torch.get_num_threads()} threads, median of {a.repeats}")
    print("| loop | images/s | ratio |\n|---|---:|---:|")
    print(f"| bare PyTorch | {bm:.1f} | 1.00x |")
    print(f"| harness train_one_epoch | {hm:.1f} | {hm / bm:.2f}x (target >= 0.9) |")
    return 0 if hm / bm >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
