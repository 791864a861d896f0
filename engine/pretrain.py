"""Self-supervised pretraining: ``main`` (how many processes), ``main_worker`` (one process).

The flags were resolved and checked by :func:`engine.plan.resolve` before this module runs;
a worker receives the :class:`~engine.plan.Plan` only. One epoch is engine/loop.py, the data
engine/loaders.py, the kNN monitor and figures engine/monitors.py.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from config.dist import spawn
from config.errors import UserError
from engine import checkpoint as ckpt
from engine.cli import setup_logging
from engine.loaders import make_loader, training_data
from engine.logger import EpochLog
from engine.loop import train_one_epoch
from engine.monitors import KnnMonitor, save_vis
from engine.plan import Plan, processes_per_node, resolve
from engine.runtime import Runtime, TrainingDiverged, init_runtime, reseed
from models import build_backbone

log = logging.getLogger(__name__)


def use_sync_bn(plan: Plan, rt: Runtime) -> bool:
    """SyncBatchNorm for this run: with ``--sync-bn``, and by default on GPUs when several processes
    train a pretext whose loss couples the images of a batch (its module sets ``SYNC_BN = True``:
    per-process BN statistics would let a contrastive model tell its positives apart by the
    batch they were normalised in); never with ``--no-sync-bn``. On CPU there is no SyncBatchNorm
    kernel: BN is per process there (the plan refuses ``--sync-bn``)."""
    if not rt.distributed or rt.device.type != "cuda":
        return False
    return plan.sync_bn == "on" or (plan.sync_bn == "auto" and bool(getattr(plan.module, "SYNC_BN", False)))


def main(args: argparse.Namespace) -> None:
    """Resolve the plan, then run one process, spawn one per GPU (or ``--nproc`` on CPU), or join torchrun."""
    setup_logging()
    plan = resolve(args)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:          # launched by torchrun
        main_worker(int(os.environ.get("LOCAL_RANK", 0)), None, plan)
        return
    if plan.procs.mp_distributed:
        nproc = processes_per_node(plan)
        spawn(main_worker, nproc, (nproc, plan))
        return
    main_worker(None, None, plan)


def main_worker(local_rank: int | None, nproc: int | None, plan: Plan) -> None:
    """One training process (rank 0 alone logs and writes)."""
    rt = init_runtime(local_rank, nproc, plan.procs)
    if rt.distributed and plan.resume is None:      # torchrun: rank 0 alone claimed the run's name
        name = [plan.expnum]
        dist.broadcast_object_list(name, src=0)
        plan.expnum = name[0]
    opt, mode, module = plan.opt, plan.mode, plan.module
    per_proc_bs = plan.global_bs // rt.world
    reseed(plan.seed, 0, rt.rank)

    backbone, _ = build_backbone(plan.netnum, opt.n_bands, plan.imagenet_init, opt.rgb_index)
    if plan.init_from is not None:
        meta = ckpt.load_backbone(plan.init_from, backbone)
        log.info("backbone initialised from %s (epoch %s)", plan.init_from, meta.get("epoch"))
    model = module.build(plan.method, opt, backbone)
    if use_sync_bn(plan, rt):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if rt.is_main:
            log.info("BatchNorm synchronised across the %d processes (SyncBatchNorm%s)", rt.world,
                     "" if plan.sync_bn == "on" else "; --no-sync-bn keeps it per process")
    model.to(rt.device)
    backbone = getattr(model, "kept_backbone", backbone)   # what is monitored and saved (DINO: the teacher)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    net = (nn.parallel.DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
           if rt.distributed else model)

    dataset, augment = training_data(plan, rt)
    loader, sampler = make_loader(dataset, per_proc_bs, rt, plan.workers, plan.seed)
    iters = len(loader)
    if hasattr(module, "build_optimizer"):    # e.g. a GAN: Adam(0.5, 0.999) over G and D groups
        optimizer = module.build_optimizer(plan.method, model, plan.optim.lr)
    else:
        optimizer = plan.optim.build(model)
    schedule = plan.schedule.build(plan.optim.lr, iters)

    expnum, start_epoch, best_knn = plan.expnum, plan.start_epoch, -1.0
    if plan.resume is not None:
        state = ckpt.load_training_state(plan.resume, model, optimizer, None)
        expnum, start_epoch = state["extra"]["expnum"], int(state["epoch"])
        best_knn = float(state["extra"].get("best_knn", -1.0))
        log.info("resumed %s from %s at epoch %d", expnum, plan.resume, start_epoch)
    stem = f"{plan.netnum}_{expnum}"
    epoch_log = (EpochLog(plan.ckpt_dir / f"{stem}_log.csv", plan.ckpt_dir / "tb" / stem,
                          resume=plan.resume is not None) if rt.is_main else None)
    monitor = None
    if rt.is_main and plan.knn_freq != 0 and plan.index.classes:
        try:
            monitor = KnnMonitor(opt, plan.index, rt, plan.knn_per_class, plan.seed, plan.workers, plan.knn_freq)
        except UserError as err:             # e.g. a split without a validation slice
            if plan.knn_freq != "auto":      # asked for explicitly: say it cannot be done
                raise
            log.warning("no kNN monitor (and no _best.pth): %s", err)
    if rt.is_main:
        log.info("%s | mode %d (%s) | netnum %s | %s: %d training images, %d bands %dx%d | "
                 "batch %d (%d x %d processes) | %d iterations/epoch | device %s",
                 expnum, mode.code, mode.pretext, plan.netnum, opt.name, len(plan.train), opt.n_bands,
                 opt.input_size, opt.input_size, plan.global_bs, per_proc_bs, rt.world, iters, rt.device)
    meta = {"netnum": plan.netnum, "in_channels": opt.n_bands, "bands": list(opt.bands), "mode": mode.code,
            "pretext": mode.pretext, "expnum": expnum, "dataset": opt.name, "input_size": opt.input_size,
            "mean": [float(v) for v in opt.mean] if opt.mean is not None else None,
            "std": [float(v) for v in opt.std] if opt.std is not None else None,
            "args": plan.record, "provenance": plan.provenance, "code_version": plan.code_version}
    last_good, train_seconds = None, 0.0
    try:
        for epoch in range(start_epoch, plan.epochs):
            reseed(plan.seed, epoch + 1, rt.rank)
            sampler.set_epoch(epoch)
            stats = train_one_epoch(net, loader, optimizer, schedule, epoch, rt, plan.epochs, last_good,
                                    augment=augment)
            train_seconds += stats["seconds"]
            done = epoch + 1
            if monitor is not None and monitor.due(done, plan.epochs):
                stats["knn_top1"] = monitor(backbone, done, stats["seconds"])
            vis_every = max(1, plan.epochs // 10)
            if plan.vis and rt.is_main and (done % vis_every == 0 or done == plan.epochs or epoch == start_epoch):
                save_vis(module, model, dataset, opt, plan.ckpt_dir / f"{stem}_vis_e{done:04d}.png", plan.seed, rt,
                         augment=augment)
            if rt.is_main:
                last_good, best_knn = _end_of_epoch(plan, done, stats, meta, expnum, backbone, model, optimizer,
                                                    iters, epoch_log, last_good, best_knn)
            if rt.distributed:
                dist.barrier()
    finally:
        if epoch_log is not None:
            epoch_log.close()
        rt.close()
    if rt.is_main:
        log.info("done: backbone %s%s", last_good,
                 f" (best validation kNN {best_knn:.2f}%)" if best_knn >= 0 else "")
        if monitor is not None and monitor.runs:
            log.info("kNN monitor: %d passes, %.1f s = %.1f %% of the time spent training", monitor.runs,
                     monitor.seconds, 100 * monitor.seconds / max(train_seconds, 1e-9))


def _end_of_epoch(plan: Plan, done: int, stats: dict, meta: dict, expnum: str, backbone: nn.Module,
                  model: nn.Module, optimizer: torch.optim.Optimizer, iters: int, epoch_log: EpochLog,
                  last_good, best_knn: float):
    """Rank 0 after an epoch: log it, save the backbone / training state / ``best`` it calls for."""
    extra = "  ".join(f"{k} {v:.4g}" for k, v in stats.items()
                      if k not in ("loss", "lr", "img_per_s", "seconds", "knn_top1"))
    log.info("epoch %d/%d  loss %.4f  lr %.3g  %s%s  %.0f img/s  %.1fs", done, plan.epochs,
             stats["loss"], stats["lr"], extra,
             f"  kNN {stats['knn_top1']:.2f}%" if "knn_top1" in stats else "",
             stats["img_per_s"], stats["seconds"])
    epoch_log.add(done, stats)
    meta_e = {**meta, "epoch": done, "steps": done * iters, "stats": stats}
    periodic = plan.ckpt_freq > 0 and (done % plan.ckpt_freq == 0 or done == plan.epochs)
    if periodic or done == plan.epochs:
        last_good = ckpt.ckpt_path(plan.ckpt_dir, plan.netnum, expnum, done)
        ckpt.save_backbone(last_good, backbone.state_dict(),
                           {**meta_e, "selected_by": "last" if done == plan.epochs else "epoch"})
    if periodic:
        ckpt.save_training_state(plan.ckpt_dir / f"{plan.netnum}_{expnum}_state.pth", model, optimizer, done,
                                 done * iters, None, {"expnum": expnum, "best_knn": best_knn,
                                                      "provenance": plan.provenance, "data": plan.data})
    if stats.get("knn_top1", -1.0) > best_knn:
        best_knn = stats["knn_top1"]
        ckpt.save_backbone(ckpt.ckpt_path(plan.ckpt_dir, plan.netnum, expnum, "best"),
                           backbone.state_dict(), {**meta_e, "selected_by": "val-knn", "selected_epoch": done})
    return last_good, best_knn


def run(argv: list[str] | None, parser: argparse.ArgumentParser) -> None:
    """Entry point of main_cls_ss_train.py (after parsing)."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except TrainingDiverged as err:
        logging.getLogger(__name__).error("%s", err)
        sys.exit(1)
