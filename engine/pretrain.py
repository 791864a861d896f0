"""Self-supervised pretraining: ``main`` (how many processes), ``main_worker`` (one process).

The flags were resolved and checked by :func:`engine.plan.resolve` before this module runs;
a worker receives the :class:`~engine.plan.Plan` only. One epoch is engine/loop.py, the data
engine/loaders.py, the kNN monitor and figures engine/monitors.py.
"""
from __future__ import annotations

import argparse
import json
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
from engine.monitors import KnnMonitor, WeightDrift, save_vis
from engine.plan import Plan, plan_summary, planned_world_size, processes_per_node, resolve
from engine.runtime import Runtime, TrainingDiverged, init_runtime, reseed
from models import build_backbone
from models.vit import freeze_patch_embed, is_vit, method_feature

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
    if args.dry_run:
        world = planned_world_size(args)
        iters = (len(plan.train) // world) // (plan.global_bs // world)     # full batches per process (drop_last)
        print(json.dumps(plan_summary(plan, iters), sort_keys=True))
        return
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

    backbone, _ = build_backbone(plan.netnum, opt.n_bands, plan.imagenet_init, opt.rgb_index,
                                 input_size=opt.input_size)
    if plan.init_from is not None:
        meta = ckpt.load_backbone(plan.init_from, backbone)
        log.info("backbone initialised from %s (epoch %s)", plan.init_from, meta.get("epoch"))
    if is_vit(backbone):                   # the probe feature of the method's paper, recorded in the meta
        backbone.set_feature(method_feature(mode.pretext))
    model = module.build(plan.method, opt, backbone)
    if plan.freeze_patch_embed:            # before the optimiser: these parameters stay out of its groups
        frozen = freeze_patch_embed(model)
        if rt.is_main:
            log.info("patch embedding frozen at its initial weights (random patch projection): %d tensors", len(frozen))
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
    drift = WeightDrift(backbone) if rt.is_main else None
    if plan.resume is not None:
        state = ckpt.load_training_state(plan.resume, model, optimizer, None)
        expnum, start_epoch = state["extra"]["expnum"], int(state["epoch"])
        best_knn = float(state["extra"].get("best_knn", -1.0))
        if rt.is_main and "start_weights" in state["extra"]:
            drift = WeightDrift(backbone, {k: v.to(rt.device) for k, v in state["extra"]["start_weights"].items()})
        log.info("resumed %s from %s at epoch %d", expnum, plan.resume, start_epoch)
    stem = f"{plan.netnum}_{expnum}"
    epoch_log = (EpochLog(plan.ckpt_dir / f"{stem}_log.csv", plan.ckpt_dir / "tb" / stem,
                          resume=plan.resume is not None) if rt.is_main else None)
    monitor = None
    if rt.is_main and plan.knn_freq != 0 and plan.index.classes:
        try:
            monitor = KnnMonitor(opt, plan.index, rt, plan.workers, plan.knn_freq)
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
            "args": plan.record, "provenance": plan.provenance, "code_version": plan.code_version,
            **(backbone.checkpoint_meta() if hasattr(backbone, "checkpoint_meta") else {})}   # ViTs: feature, band groups
    last_good, train_seconds = None, 0.0
    try:
        for epoch in range(start_epoch, plan.epochs):
            reseed(plan.seed, epoch + 1, rt.rank)
            sampler.set_epoch(epoch)
            stats = train_one_epoch(net, loader, optimizer, schedule, epoch, rt, plan.epochs, last_good,
                                    augment=augment, clip_grad=plan.clip_grad)
            train_seconds += stats["seconds"]
            done = epoch + 1
            if monitor is not None and monitor.due(done, plan.epochs):
                stats["knn_top1"] = monitor(backbone, done, stats["seconds"])
            if plan.vis and rt.is_main and (done % plan.vis_every == 0 or done == plan.epochs or epoch == start_epoch):
                save_vis(module, model, dataset, opt, plan.ckpt_dir / f"{stem}_vis_e{done:04d}.png", plan.seed, rt,
                         augment=augment, bands=plan.vis_bands)
            if rt.is_main:
                stats["backbone_moved"] = drift(backbone)
                last_good, best_knn = _end_of_epoch(plan, done, stats, meta, expnum, backbone, model, optimizer,
                                                    iters, epoch_log, last_good, best_knn, drift)
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
                  last_good, best_knn: float, drift: WeightDrift):
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
                                                      "start_weights": drift.state(),
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
