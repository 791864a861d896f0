"""Pretraining epochs through the harness: img/s per mode, before/after a speed setting, and the
harness against a bare PyTorch loop doing the same work.

    python bench/epoch.py [--ds euroms|aid] [--mode 910,912,...] [--netnum 090000] [--images 128] [--size 64]
                          [--bs 64] [--workers 0] [--amp] [--channels-last|--no-channels-last] [--repeats 2]

For each mode, in one run and alternating (these machines are noisy, so only ratios measured
side by side mean something):

  before     ``engine.pretrain.main_worker`` for one epoch with the old defaults: contiguous
             memory, float32 (``--no-channels-last``, no ``--amp``)
  after      the same with the settings asked for (default: channels_last, float32)
  bare loop  the after-settings' model and views in a plain loop over pre-collated batches:
             forward, backward, step, nothing else (the harness's own cost is after / bare)

Data: ``--images`` training images of the real subset in ../shared/data (balanced over the
classes), at ``--size`` px, ResNet-18 (090000) unless ``--netnum``; each mode with its own
default views and heads (``--recipe`` as the harness resolves it). Images/s count images, not
views. The last line per mode: ``<mode>: before X img/s, after Y img/s = Y/X x; bare Z img/s``.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from datasets.folder import make_dataset  # noqa: E402
from engine import plan as eplan  # noqa: E402
from engine import pretrain_flags  # noqa: E402
from engine import pretrain  # noqa: E402
from engine.cli import base_parser, setup_logging  # noqa: E402
from engine.knn import balanced_subsample  # noqa: E402
from engine.runtime import move_to  # noqa: E402
from models import build_backbone  # noqa: E402


def harness_epoch(argv: list[str], images: int, ckpt: str, tag: str) -> float:
    """One epoch through the resolved plan and main_worker; img/s as the harness logs it."""
    args = pretrain_flags.add_args(base_parser("", "pretrain")).parse_args([*argv, "--ckpt", ckpt, "--expnum", f"{tag}_bench"])
    plan = eplan.resolve(args)
    labels = np.array([s.label for s in plan.train])
    keep = balanced_subsample(labels, -(-images // len(plan.index.classes)), seed=0)[:images]
    plan.train = [plan.train[i] for i in sorted(keep)]
    pretrain.main_worker(None, None, plan)
    with open(Path(ckpt) / f"{plan.netnum}_{tag}_bench_log.csv") as f:
        return float(list(csv.DictReader(f))[-1]["img_per_s"])


def bare_epoch(argv: list[str], images: int, bs: int, ckpt: str) -> float:
    """The same model and views in a bare loop over batches collated beforehand."""
    args = pretrain_flags.add_args(base_parser("", "pretrain")).parse_args([*argv, "--ckpt", ckpt])
    plan = eplan.resolve(args)
    module, opt = plan.module, plan.opt
    dataset = make_dataset(opt, plan.train[:images], lambda o: module.make_transform(plan.method, o))
    batches = [b[0] for b in DataLoader(dataset, batch_size=bs, shuffle=False, drop_last=True)]
    torch.manual_seed(0)
    backbone, _ = build_backbone(plan.netnum, opt.n_bands)
    model = module.build(plan.method, opt, backbone)
    cl = plan.procs.channels_last
    if cl:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    t = time.perf_counter()
    for views in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.procs.amp):
            loss, _ = model(move_to(views, torch.device("cpu"), cl))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if hasattr(model, "on_step_end"):
            model.on_step_end(0.5)
    return len(batches) * bs / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--ds", default="euroms", help="euroms (13 bands, 64 px) or aid (RGB, 150 px files)")
    p.add_argument("--mode", default="910", help="pretraining mode(s), comma-separated")
    p.add_argument("--netnum", default="090000")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="after: bf16 autocast")
    p.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="after: channels_last memory format (default on)")
    p.add_argument("--repeats", type=int, default=2, help="epochs of each setting (alternating; medians)")
    a = p.parse_args()
    setup_logging()
    after_flags = (["--amp"] if a.amp else []) + (["--channels-last"] if a.channels_last else ["--no-channels-last"])
    lines = []
    for mode in a.mode.split(","):
        base = ["--mode", mode, "--ds", a.ds, "--data-root", a.root, "--netnum", a.netnum, "--input_size",
                str(a.size), "--bs", str(a.bs), "--mepoch", "1", "--workers", str(a.workers), "--knn-freq", "0",
                "--no-progress", "--lr", "1e-4", "--optimizer", "adam"]
        with tempfile.TemporaryDirectory() as ckpt:
            before, after = [], []
            for r in range(a.repeats):
                before.append(harness_epoch([*base, "--no-channels-last"], a.images, ckpt, f"b{r}"))
                after.append(harness_epoch([*base, *after_flags], a.images, ckpt, f"a{r}"))
            bare = bare_epoch([*base, *after_flags], a.images, a.bs, ckpt)
        b, f = statistics.median(before), statistics.median(after)
        lines.append(f"{mode}: before {b:.1f} img/s, after {f:.1f} img/s = {f / b:.2f}x; bare {bare:.1f} img/s "
                     f"(harness {f / bare:.2f} of bare)")
    print(f"{a.ds}, netnum {a.netnum}, {a.images} images at {a.size} px, batch {a.bs}, --workers {a.workers}, "
          f"{torch.get_num_threads()} threads; after = {' '.join(after_flags)}; medians of {a.repeats}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
