"""Images/s of the harness's pretraining epoch against a bare PyTorch loop on the same tensors.

    python bench/pretrain_step.py [--mode 910|920|930] [--netnum 000000] [--images 96] [--bs 32]

Both loops see the same pre-made views (13 x 64 x 64, in memory, made once by the
pretext's own view) and do the same forward/backward/step on identical copies of the
model; the harness adds what it always does (lr schedule, non-finite check, stats,
meters). For 910 the bare loop is written out (backbone, head, NT-Xent); for 920 and 930 (MAE,
ViT codes only) it calls the pretext's forward. ViT codes (1x0000) are built for ``--size`` px.
Alternating passes, median of each. Target: harness >= 0.9x bare.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, default_collate  # noqa: E402

import models.pretext as pretexts  # noqa: E402
from config.codes import decode_mode  # noqa: E402
from engine import loop, plan, pretrain_flags, recipes  # noqa: E402
from engine.cli import base_parser  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.schedules import LRSchedule  # noqa: E402
from models import build_backbone  # noqa: E402


class Views(Dataset):
    """Pre-made views, one item per image (no augmentation cost in either loop)."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i], -1, i


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="910", choices=("910", "920", "930"))
    p.add_argument("--netnum", default="000000", help="backbone code (000000 = resnet18_small)")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    mode = decode_mode(a.mode, "pretrain")
    module = pretexts.load(mode)
    args = pretrain_flags.add_args(base_parser("", "pretrain")).parse_args(["--mode", a.mode, "--netnum", a.netnum,
                                                                  "--no-progress"])
    recipes.resolve(args, module)             # the settings main_cls_ss_train.py would resolve (--recipe paper)
    plan.resolve_head_flags(args, mode, module)      # --tau / --feature_dim: the mode's own defaults
    opt = SimpleNamespace(input_size=a.size, n_bands=13, mean=np.full(13, 1000.0), std=np.full(13, 300.0),
                          rgb_index=(3, 2, 1))
    view = module.make_transform(args, opt)
    raw = torch.rand(a.images, 13, a.size + 16, a.size + 16) * 3000
    items = [view(x) for x in raw]
    backbone, _ = build_backbone(a.netnum, 13, input_size=a.size)
    model = module.build(args, opt, backbone)
    bare_model = copy.deepcopy(model)
    loader = DataLoader(Views(items), batch_size=a.bs, shuffle=False, drop_last=True, num_workers=0)
    batches = [default_collate(items[i:i + a.bs]) for i in range(0, len(loader) * a.bs, a.bs)]
    opt_h = build_optimizer("adam", model, 1e-3)
    opt_b = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    sched = LRSchedule("cosine", 1e-3, 10, len(loader))
    rt = Runtime(torch.device("cpu"))
    n = len(loader) * a.bs

    def harness() -> float:
        t = time.perf_counter()
        loop.train_one_epoch(model, loader, opt_h, sched, 0, rt, 10, None)
        return n / (time.perf_counter() - t)

    def bare() -> float:
        bare_model.train()
        t = time.perf_counter()
        for views in batches:
            if a.mode == "910":
                z = bare_model.projector(bare_model.backbone(torch.cat(views)))
                loss = bare_model.criterion(*z.chunk(2))
            else:
                loss, _ = bare_model(views)
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
    print(f"mode {a.mode} ({mode.pretext}) step, netnum {a.netnum}, 13 x {a.size} x {a.size}, batch {a.bs}, "
          f"{n} images/pass, {torch.get_num_threads()} threads, median of {a.repeats}")
    print("| loop | images/s | ratio |\n|---|---:|---:|")
    print(f"| bare PyTorch | {bm:.1f} | 1.00x |")
    print(f"| harness train_one_epoch | {hm:.1f} | {hm / bm:.2f}x (target >= 0.9) |")
    return 0 if hm / bm >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
