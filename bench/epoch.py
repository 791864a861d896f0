"""One SimCLR epoch end to end through the harness against a bare PyTorch loop doing the same work.

    python bench/epoch.py [--root ../shared/data] [--images 256] [--size 128] [--bs 64] [--workers 2]

Data: the 150 px AID subset (RGB JPEG), ``--images`` training images (balanced over the
classes), random resized crops to ``--size`` px (``--aug 5 --aug_p S5``), ResNet-18 (netnum
090000), Adam, NT-Xent (tau 0.5).

  harness          ``engine.pretrain.main_worker`` (one process) for one epoch (``--mepoch 1 --knn-freq 0``):
                   its loader (persistent workers, per-sample seeds), loop, schedule, stats and
                   checkpoint; images/s as the harness logs it (from the loader's first batch to
                   the epoch's totals)
  bare loop        the same dataset class and augmentation (``RasterDataset`` + the pretext's
                   views), a plain ``DataLoader`` with the same workers and batch, the same model,
                   loss and optimizer: forward, backward, step, nothing else
  pre-augmented    the bare loop over batches made beforehand and kept in memory: the compute
                   alone. If it is much faster than the bare loop, data loading is the bottleneck.

The last line is ``epoch: <harness / bare> of bare loop, <harness img/s> img/s`` (target >= 0.95).
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

import models.pretext as pretexts  # noqa: E402
from datasets.folder import make_dataset  # noqa: E402
from engine import plan as eplan  # noqa: E402
from engine import pretrain  # noqa: E402
from engine.cli import base_parser, setup_logging  # noqa: E402
from engine.knn import balanced_subsample  # noqa: E402
from models import build_backbone  # noqa: E402


def bare_epoch(model, optimizer, batches) -> float:
    """Images/s of forward + backward + step over ``batches`` (an iterable of (views, label, index))."""
    model.train()
    t = time.perf_counter()
    n = 0
    for views, _, _ in batches:
        loss, _ = model(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += len(views[0])
    loss.item()                       # the work is done (a no-op wait on CPU)
    return n / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="epochs of each loop (alternating; medians)")
    a = p.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory() as ckpt:
        argv = ["--mode", "910", "--ds", "aid", "--data-root", a.root, "--netnum", "090000", "--input_size",
                str(a.size), "--bs", str(a.bs), "--mepoch", "1", "--lr", "1e-3", "--optimizer", "adam",
                "--aug", "5", "--aug_p", "S5", "--workers", str(a.workers), "--knn-freq", "0", "--ckpt", ckpt,
                "--no-progress", "--expnum", "1_bench"]
        args = eplan.add_args(base_parser("", "pretrain")).parse_args(argv)
        plan = eplan.resolve(args)
        labels = np.array([s.label for s in plan.train])
        per_class = -(-a.images // len(plan.index.classes))
        keep = balanced_subsample(labels, per_class, seed=0)[:a.images]
        plan.train = [plan.train[i] for i in keep]
        module = pretexts.load(plan.mode)

        def harness(r: int) -> float:
            plan.expnum = f"{r + 1}_bench"
            pretrain.main_worker(None, None, plan)
            with open(Path(ckpt) / f"090000_{r + 1}_bench_log.csv") as f:
                return float(list(csv.DictReader(f))[-1]["img_per_s"])

        dataset = make_dataset(plan.opt, plan.train, lambda o: module.make_transform(plan.method, o))
        torch.manual_seed(0)
        backbone, _ = build_backbone("090000", plan.opt.n_bands)
        model = module.build(plan.method, plan.opt, backbone)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def loader() -> DataLoader:
            """A fresh loader per epoch: its workers start inside the timed epoch, as the harness's do."""
            return DataLoader(dataset, batch_size=a.bs, shuffle=True, num_workers=a.workers, drop_last=True)

        made = list(loader())                              # pre-augmented batches
        h, b, m = [], [], []
        for r in range(a.repeats):
            b.append(bare_epoch(model, optimizer, loader()))
            h.append(harness(r))
            m.append(bare_epoch(model, optimizer, made))
    hm, bm, mm = statistics.median(h), statistics.median(b), statistics.median(m)
    n = len(made) * a.bs
    print(f"SimCLR epoch, ResNet-18 (090000), AID subset {n} images, {a.size} px crops of 150 px, batch {a.bs}, "
          f"--workers {a.workers}, {torch.get_num_threads()} threads, median of {a.repeats}")
    print(f"bare loop over pre-augmented tensors: {mm:.1f} img/s (compute alone); bare loop with its DataLoader: "
          f"{bm:.1f} img/s = {bm / mm:.2f} of it -> "
          + ("data loading is the bottleneck" if bm < 0.9 * mm else "compute is the bottleneck"))
    print(f"epoch: {hm / bm:.2f} of bare loop, {hm:.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
