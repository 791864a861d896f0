"""Supervised work of main_cls.py: train (1x), val (2x), test (3x), finetune (4x); the frozen-feature
probes (``--probe logreg|knn``) are engine/probe.py.

Protocols (``--hos``): 0 all layers at ``--lr``; 1 backbone at lr/5; 9 linear probe (backbone
frozen AND in eval mode; after the first epoch every backbone tensor is compared with its
starting value and the run fails if one changed). The flags were resolved and checked by
:func:`engine.evaljob.resolve`; every function here receives the :class:`~engine.evaljob.EvalJob`.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from config.dist import spawn
from config.errors import UserError
from datasets.folder import make_dataset
from datasets.index import Sample, few_shot
from datasets.plans import build_plan, plain
from datasets.views import tta_views
from engine import checkpoint as ckpt
from engine import labels
from engine.classifier import (TRAIN_PLAN, build_classifier, check_frozen, classifier_origin, param_groups,
                               reestimate_bn)
from engine.cli import setup_logging
from engine.evaljob import EVAL_BATCH, EvalJob, resolve
from engine.logger import EpochLog
from engine.probe import run_probe
from engine.report import report
from engine.runtime import Runtime, init_runtime, move_to, reseed, sample_seed, seed_worker, use_tqdm

log = logging.getLogger(__name__)
RANK_STREAM = 2**32 + 1    # sample_seed "index" of a rank's loader generator (above every image index)


def main(args: argparse.Namespace) -> None:
    """Resolve the job, then probe, or train/evaluate in one process, one per GPU, or under torchrun."""
    setup_logging()
    job = resolve(args)
    if job.procs.mp_distributed and job.init is not None:
        build_classifier(job)      # checkpoint mismatches are user errors, before workers start
    if job.probe:
        run_probe(job)
        return
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        main_worker(int(os.environ.get("LOCAL_RANK", 0)), None, job)
    elif job.procs.mp_distributed:
        nproc = job.procs.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
        spawn(main_worker, nproc, (nproc, job))
    else:
        main_worker(None, None, job)


class ShardSampler(Sampler[int]):
    """Indices ``rank::world`` without padding: in distributed evaluation every image counts once."""

    def __init__(self, n: int, rank: int, world: int):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def main_worker(local_rank: int | None, nproc: int | None, job: EvalJob) -> None:
    """One process: every train scale x seed of the job (rank 0 alone writes)."""
    rt = init_runtime(local_rank, nproc, job.procs)
    if rt.distributed and job.mode.job in ("train", "finetune"):    # torchrun: rank 0 alone claimed the name
        name = [job.expnum]
        dist.broadcast_object_list(name, src=0)
        job.expnum = name[0]
    try:
        for ts in job.ts_list:                   # --ts 5,20: every train scale, every seed
            for seed in job.seeds:
                run_one(job, rt, ts, seed)
    finally:
        rt.close()


def run_one(job: EvalJob, rt: Runtime, ts: float, seed: int) -> dict:
    """Train (unless val/test) and evaluate one few-shot draw; returns the metrics."""
    t0 = time.time()
    opt = job.opt
    reseed(seed, 0, rt.rank)
    trains = job.mode.job in ("train", "finetune")
    train = few_shot(labels.fewshot_pool(job.index), ts, seed, opt.classes) if trains else []
    if job.init_seed is not None:                  # the initial weights from --init-seed, the rest from the draw
        reseed(job.init_seed, 0, rt.rank)
    model = build_classifier(job).to(rt.device)
    if job.init_seed is not None:
        reseed(seed, 0, rt.rank)
    if job.bn_stats == "reestimated":                # --hos 9: the frozen backbone's statistics (the plan checked)
        reestimate_bn(model.backbone, job.index.train, opt, rt.device, job.workers,
                      channels_last=rt.channels_last)
    epochs = 0
    if trains:
        epochs = job.schedule.epochs
        fit(model, train, job, rt, seed)
    # the label rule (engine/labels.py): mode 2x scores the fixed validation slice, every other mode the test split
    eval_set = labels.selection_set(job.index) if job.mode.job == "val" else labels.final_eval_set(job.index)
    y_true, y_pred = evaluate(model, eval_set, job, rt)
    if not rt.is_main:
        return {}
    # 2x/3x: the classifier's own draw (seed, shots) as its checkpoint records it (engine/evaljob.py)
    n_train = len(train) if trains else job.init_meta.get("n_train", "")
    metrics = report(y_true, y_pred, job, ts, seed, n_train, len(eval_set), epochs, time.time() - t0,
                     hos=str(job.hos), probe="", eval_set=eval_set)
    if trains:
        path = ckpt.ckpt_path(job.ckpt_dir, job.netnum, job.expnum + f"_ts{ts:g}_s{seed}", epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = job.init_meta
        ckpt.atomic_save({"model": model.state_dict(), "meta": {
            "netnum": job.netnum, "dataset": opt.name, "classes": list(opt.classes),
            "split_version": job.index.split_version, "ts": ts, "seed": seed, "n_train": len(train),
            "shots": sorted(s.key for s in train), "pretrain": job.pretext, "input_size": opt.input_size,
            "selected_by": meta.get("selected_by", ""), "pretrain_meta": classifier_origin(meta),
            "init_sha": job.flags.get("init_sha", ""),
            **({"provenance": meta["provenance"]} if "provenance" in meta else {}),
            **({"band_groups": meta["band_groups"]} if "band_groups" in meta else {}),
            "metrics": {k: metrics[k] for k in ("OA", "AA", "kappa", "macro_F1")}}}, path)
        log.info("classifier saved to %s", path)
    return metrics


def fit(model: nn.Module, train: list[Sample], job: EvalJob, rt: Runtime, seed: int) -> None:
    """Train ``model`` on the few-shot set under protocol ``--hos``."""
    opt = job.opt
    groups = param_groups(model, job.hos, job.layer_decay)
    net = model
    if rt.distributed and job.sync_bn and job.hos != 9:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(rt.device)
        net = model
    if rt.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
    tf = lambda o: build_plan(TRAIN_PLAN, o.input_size, o.mean, o.std, o.rgb_index)  # noqa: E731
    ds = make_dataset(opt, train, tf, cache=job.pin_memory)
    loader, sampler, gen = train_loader(ds, job.bs, rt, seed, job.workers)
    optimizer = job.optim.build(groups)
    schedule = job.schedule.build(job.optim.lr, len(loader))
    criterion = nn.CrossEntropyLoss()
    frozen = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()} if job.hos == 9 else None
    bar = use_tqdm(rt)
    epoch_log = EpochLog(job.log, resume=True, key=("seed",)) if rt.is_main and job.log is not None else None
    epochs = range(job.sepoch, job.schedule.epochs)       # --sepoch: epochs already done (with --resume)
    if bar:
        from tqdm import tqdm
        epochs = tqdm(epochs, desc=f"fine-tune seed {seed}", leave=False)
    for epoch in epochs:
        start_epoch(sampler, gen, seed, epoch, rt.rank)
        net.train()
        if job.hos == 9:
            model.backbone.eval()                # BatchNorm statistics stay frozen too
        total, n = 0.0, 0
        for i, (x, y, _) in enumerate(loader):
            schedule.step(optimizer, epoch * len(loader) + i)
            x, y = move_to(x, rt.device, rt.channels_last), y.to(rt.device)
            with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
                loss = criterion(net(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            n += len(y)
        if frozen is not None and epoch == job.sepoch:
            check_frozen(model.backbone, frozen)
        if epoch_log is not None:
            epoch_log.add(epoch + 1, {"seed": seed, "loss": total / max(n, 1), "lr": optimizer.param_groups[0]["lr"]})
        if rt.is_main and ((epoch + 1) % max(1, job.schedule.epochs // 5) == 0 or epoch + 1 == job.schedule.epochs):
            log.info("seed %d epoch %d/%d  loss %.4f", seed, epoch + 1, job.schedule.epochs, total / max(n, 1))


def train_loader(ds, bs: int, rt: Runtime, seed: int, workers: int) -> tuple[DataLoader, Sampler, torch.Generator]:
    """Shuffled batches of this process's share (``bs`` is the total over processes) and the generator that
    seeds its order and its workers' augmentations (:func:`start_epoch` before every epoch)."""
    n = len(ds)
    per_bs = max(1, min(bs // rt.world, n // rt.world or 1))
    gen = torch.Generator().manual_seed(seed)
    sampler = (DistributedSampler(ds, rt.world, rt.rank, shuffle=True, seed=seed) if rt.distributed
               else RandomSampler(ds, generator=gen))
    # a trailing batch of ONE image would break BatchNorm in training mode: drop only that
    lone = len(sampler) > 1 and len(sampler) % per_bs == 1
    loader = DataLoader(ds, batch_size=per_bs, sampler=sampler, num_workers=workers, drop_last=lone,
                        worker_init_fn=seed_worker, generator=gen, pin_memory=rt.device.type == "cuda")
    return loader, sampler, gen


def start_epoch(sampler: Sampler, gen: torch.Generator, seed: int, epoch: int, rank: int) -> None:
    """Seed an epoch: rank 0 (and a single process) from ``(seed, epoch)`` as always; every other rank folds its
    rank in (as pretraining's per-sample seeds do), so ranks never share their workers' augmentation streams."""
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    gen.manual_seed(seed * 1_000_003 + epoch if rank == 0 else sample_seed(seed, epoch, rank, RANK_STREAM))


@torch.no_grad()
def evaluate(model: nn.Module, samples: list[Sample], job: EvalJob, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """Predictions for ``samples`` (each exactly once, also when distributed); ``--tta`` averages 8 views."""
    ds = make_dataset(job.opt, samples, lambda o: plain(o.input_size, o.mean, o.std))
    sampler = ShardSampler(len(ds), rt.rank, rt.world)
    loader = DataLoader(ds, batch_size=EVAL_BATCH, sampler=sampler, num_workers=job.workers)
    model.eval()
    idx_all, pred_all = [], []
    for x, _, idx in loader:
        x = move_to(x, rt.device, rt.channels_last)
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            if job.tta:
                prob = torch.stack([model(v).float().softmax(1) for v in tta_views(x)]).mean(0)
            else:
                prob = model(x).float().softmax(1)
        idx_all.append(idx)
        pred_all.append(torch.where(torch.isfinite(prob).all(1), prob.argmax(1), -1).cpu())   # -1: NaN output
    idx = torch.cat(idx_all) if idx_all else torch.zeros(0, dtype=torch.long)
    pred = torch.cat(pred_all) if pred_all else torch.zeros(0, dtype=torch.long)
    if rt.distributed:
        gathered: list = [None] * rt.world
        dist.all_gather_object(gathered, (idx.tolist(), pred.tolist()))
        pairs = {i: p for ids, ps in gathered for i, p in zip(ids, ps)}
        idx = torch.tensor(sorted(pairs))
        pred = torch.tensor([pairs[i] for i in sorted(pairs)])
    if len(idx) != len(samples) or len(set(idx.tolist())) != len(samples):
        raise RuntimeError(f"evaluation covered {len(set(idx.tolist()))} of {len(samples)} images")
    bad = [samples[i].path.as_posix() for i, p in zip(idx.tolist(), pred.tolist()) if p < 0]
    if bad:                 # never scored as class 0
        raise UserError(f"the classifier gives NaN or infinite outputs for {len(bad)} of the {len(samples)} images "
                        f"(e.g. {', '.join(bad[:3])}): their pixel values overflow it, or training diverged; check "
                        "those files, or train with a lower --lr")
    order = torch.argsort(idx)
    y_true = np.array([samples[i].label for i in idx[order].tolist()])
    return y_true, pred[order].numpy()


def run(argv: list[str] | None, parser: argparse.ArgumentParser) -> None:
    """Entry point of main_cls.py (after parsing)."""
    main(parser.parse_args(argv))
