"""Self-supervised pretraining: ``main`` (how many processes), ``main_worker`` (one process),
``train_one_epoch`` (one epoch).

Everything a user can get wrong (codes, data, batch size) is checked in ``prepare`` in the
launching process, before any worker is spawned, so it ends as one sentence and exit 2.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import models.pretext as pretexts
from config.codes import PRETEXTS, Mode, decode_mode, decode_netnum
from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from datasets.folder import CacheSpec, RasterDataset, make_dataset, prepare_dataset, shared_cache_path
from datasets.index import Index, Sample, few_shot
from datasets.options import get_opt
from datasets.transforms import plain
from engine import checkpoint as ckpt
from engine import guards
from engine.atomic import remove_stale_tmp
from engine.cli import check_process_flags, setup_logging
from engine.dist import spawn
from engine.knn import balanced_subsample, knn_accuracy
from engine.labels import monitor_sets
from engine.logger import EpochLog
from engine.optim import build_optimizer
from engine.provenance import provenance
from engine.runtime import (PerSampleSeed, Runtime, SeededSampler, TrainingDiverged, init_runtime, move_to,
                            reseed, sample_seed, use_tqdm)
from engine.schedules import LRSchedule
from engine.vis import band_triplet, check_vis_flags
from models import build_backbone

log = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of main_cls_ss_train.py on top of engine.cli.base_parser."""
    g = p.add_argument_group("pretraining")
    g.add_argument("--aug", type=int, help="SimCLR: how the two views are made (1-5, see README; default 5)")
    g.add_argument("--aug_p", "--aug-p", dest="aug_p", help="SimCLR: augmentation plan of an augmented view (A-E, S1-S6; default S5)")
    g.add_argument("--loss", help="loss of the pretext (default: the pretext's own, e.g. NTXentLoss for 910)")
    g.add_argument("--feature_dim", "--feature-dim", dest="feature_dim", type=int, default=None,
                   help="projection (or DINO prototype) output size of every method with a projector "
                        "(default: the method's own, e.g. 128 for 910/911, 8192 for 914/915)")
    g.add_argument("--tau", type=float, default=None,
                   help="temperature of every method that has one (default: the method's own: 0.5 for 910, "
                        "0.2 for 911, the student's 0.1 for 916)")
    g.add_argument("--ckpt_freq", "--ckpt-freq", dest="ckpt_freq", type=int, default=0,
                   help="every N epochs save the backbone <netnum>_<expnum>_<epoch>.pth and the full state for --resume (0: only the final backbone)")
    g.add_argument("--no-sync-bn", dest="no_sync_bn", action="store_true",
                   help="keep BatchNorm per process on GPUs (default there with several processes for pretexts whose "
                        "loss couples a batch's images, e.g. 910/920: SyncBatchNorm)")
    g.add_argument("--gpu-aug", dest="gpu_aug", action=argparse.BooleanOptionalAction, default=None,
                   help="make the --aug/--aug_p views of each batch on the device (datasets/gpu_aug.py), the workers "
                        "only decode; default: on with a GPU for the pretexts that use --aug (needs images of one size)")
    g.add_argument("--cache-size", dest="cache_size", type=int, default=None,
                   help="with --pin-memory: cache every image resized to this side (e.g. the training resolution, "
                        "or more to keep random crops sharp) instead of at native resolution")
    g.add_argument("--knn-freq", dest="knn_freq", default="auto",
                   help="kNN monitor on the validation slice: auto (about 5%% of the training time: after epoch 1, "
                        "then as often as that budget allows, and after the last epoch), or every N epochs (0: off)")
    g.add_argument("--vis-every", dest="vis_every", type=int, default=None,
                   help="with --vis: a figure every N epochs, and after the first and the last (default: mepoch // 10)")
    g.add_argument("--vis-bands", dest="vis_bands", default=None,
                   help="with --vis: three band names shown as red, green, blue, e.g. B08,B04,B03 (false colour); "
                        "default: the dataset's true colour")
    g.add_argument("--knn-per-class", dest="knn_per_class", type=int, default=200,
                   help="kNN monitor: at most this many pool images per class in the memory bank (queries: the "
                        "validation slice)")
    owners: dict[str, set[str]] = {}     # flag dest -> pretexts that use it
    defaults: dict[str, object] = {}
    for module in pretexts.modules():
        if hasattr(module, "add_args"):       # a pretext's own flags live in its module
            name = module.__name__.rsplit(".", 1)[-1]
            probe = argparse.ArgumentParser(add_help=False)
            module.add_args(probe.add_argument_group())
            for a in probe._actions:
                owners.setdefault(a.dest, set()).add(name)
                defaults.setdefault(a.dest, a.default)
            module.add_args(_NewFlagsOnly(p.add_argument_group(f"pretext {name}"), p))
    p.set_defaults(_pretext_flags={k: (sorted(v), defaults[k]) for k, v in owners.items()})
    return p


class _NewFlagsOnly:
    """An argument group that skips flags already registered by an earlier pretext (shared flags)."""

    def __init__(self, group: argparse._ArgumentGroup, parser: argparse.ArgumentParser) -> None:
        self.group, self.parser = group, parser

    def add_argument(self, *flags: str, **kwargs) -> argparse.Action | None:
        if any(f in self.parser._option_string_actions for f in flags):
            return None
        return self.group.add_argument(*flags, **kwargs)


def resolve_head_flags(args: argparse.Namespace, mode: Mode, module) -> None:
    """``--tau``/``--feature_dim``: refused where the pretext has no temperature/projector, else
    defaulted to the pretext's own value (its module's ``TAU`` / ``FEATURE_DIM``)."""
    for dest, attr, what in (("tau", "TAU", "a temperature"), ("feature_dim", "FEATURE_DIM", "a projector")):
        own = getattr(module, attr, None)
        if own is None and getattr(args, dest) is not None:
            codes = "/".join(str(c) for c, (n, _) in PRETEXTS.items()
                             if getattr(pretexts.try_load(n), attr, None) is not None)
            raise UserError(f"--{dest} applies to the modes with {what} ({codes}); --mode {mode.code} "
                            f"({mode.pretext}) has none: drop it")
        if getattr(args, dest) is None:
            setattr(args, dest, own)
    if args.tau is not None and not 0.005 <= args.tau <= 10:
        raise UserError(f"--tau {args.tau} is outside 0.005..10; the papers use 0.04-0.5")
    if args.feature_dim is not None and args.feature_dim < 1:
        raise UserError(f"--feature_dim {args.feature_dim} must be a positive integer, e.g. 128")


@dataclass
class Plan:
    """What the launching process decided; handed to every worker."""

    mode: Mode
    opt: DatasetOpt
    index: Index
    train: list[Sample]
    expnum: str
    ckpt_dir: Path
    global_bs: int
    start_epoch: int
    init_from: Path | None


def prepare(args: argparse.Namespace) -> Plan:
    """Decode codes, load the dataset index, and check every user input once."""
    mode = decode_mode(args.mode if args.mode is not None else 910, script="pretrain")
    check_process_flags(args)
    guards.check_values(args)
    guards.check_pretrain_values(args)
    args.knn_freq = parse_knn_freq(args.knn_freq)
    decode_netnum(args.netnum)
    module = pretexts.load(mode)
    guards.check_pretext_backbone(args.netnum, mode, module)
    if (args.aug is not None or args.aug_p is not None) and not getattr(module, "USES_AUG", False):
        raise UserError(f"--aug/--aug_p choose SimCLR's two views; --mode {mode.code} ({mode.pretext}) makes its own "
                        "views: drop them")
    for dest, (owners, default) in getattr(args, "_pretext_flags", {}).items():
        if mode.pretext not in owners and getattr(args, dest, default) != default:
            flag = "--" + dest.replace("_", "-")
            codes = "/".join(str(c) for c, (n, _) in PRETEXTS.items() if n in owners)
            raise UserError(f"{flag} belongs to --mode {codes} ({', '.join(owners)}), not {mode.code} "
                            f"({mode.pretext}): drop it")
    args.loss = args.loss or module.LOSSES[0]
    if args.loss not in module.LOSSES:
        raise UserError(f"--loss {args.loss} does not fit --mode {mode.code} ({mode.pretext}); use {module.LOSSES[0]}")
    resolve_head_flags(args, mode, module)
    if hasattr(module, "check_args"):
        module.check_args(args)
    if args.cache_size is not None and not args.pin_memory:
        raise UserError("--cache-size sets the side of the --pin-memory cache; add --pin-memory or drop it")
    if args.sync_bn and args.no_sync_bn:
        raise UserError("--sync-bn and --no-sync-bn contradict each other; keep one")
    if args.sync_bn and not torch.cuda.is_available():
        raise UserError("--sync-bn needs GPUs (SyncBatchNorm has no CPU kernel); drop it on CPU")
    opt, index = prepare_dataset(get_opt(args.ds, args))
    module.make_transform(args, opt.parts[0] if opt.parts else opt)   # validates --aug / --aug_p
    if args.cache_size is not None and args.cache_size < opt.input_size:
        raise UserError(f"--cache-size {args.cache_size} is below the input size {opt.input_size}: every view would be "
                        f"upsampled; use at least {opt.input_size}")
    guards.check_input_size(args.netnum, opt.input_size)
    check_vis_flags(args, opt)
    args.gpu_aug = resolve_gpu_aug(args, module, opt)
    train = index.train if args.ts == 1 else few_shot(index.train, args.ts, args.seed, index.classes)
    bs = args.bs or opt.batch_size
    world = planned_world_size(args)
    if bs % world:
        raise UserError(f"--bs {bs} is not divisible by the {world} processes; use a multiple of {world}")
    if bs // world > len(train) // world:
        raise UserError(f"--bs {bs} needs {bs // world} images per process but each of the {world} process(es) "
                        f"gets {len(train) // world} of the {len(train)} training images; lower --bs")
    if bs // world < 2:
        raise UserError(f"--bs {bs} leaves {bs // world} image per process; contrastive learning needs at least 2")
    if hasattr(module, "check_data"):         # e.g. MoCo sizes its queue from the training images
        module.check_data(args, len(train), bs)
    # optimiser and schedule flags fail here, in the launching process, not inside a worker
    lr = args.lr or opt.lr
    build_optimizer(args.optimizer, [torch.zeros(1, requires_grad=True)], lr, args.momentum, args.wd)
    LRSchedule(args.lr_policy, lr, args.mepoch, 1, args.warmup, args.milestones, args.lr_decay)
    ckpt_dir = Path(args.ckpt)
    start, init_from, expnum = args.sepoch, None, args.expnum
    if args.resume:
        if not Path(args.resume).is_file():
            raise UserError(f"--resume {args.resume}: no such file; give a <netnum>_<expnum>_state.pth written with --ckpt_freq")
    elif args.cepoch is not None:
        if not args.expnum:
            raise UserError("--cepoch needs --expnum: the run whose checkpoint to start from")
        init_from = ckpt.ckpt_path(ckpt_dir, args.netnum, args.expnum, args.cepoch)
        if not init_from.is_file():
            raise UserError(f"--cepoch {args.cepoch}: {init_from} does not exist; check --ckpt, --netnum and --expnum")
        if args.cepoch != "best" and not args.sepoch:
            start = int(args.cepoch)
    if start >= args.mepoch and not args.resume:
        raise UserError(f"--sepoch/--cepoch {start} is not below --mepoch {args.mepoch}; raise --mepoch")
    if init_from is not None:
        expnum = None      # a new run starting from --expnum's checkpoint: never overwrite that run's files
    if args.overwrite and not expnum:
        raise UserError("--overwrite replaces the run --expnum names" + (", and --resume/--cepoch do not write under "
                        "--expnum" if args.resume or init_from else "") + "; give --expnum E to replace run E, or drop --overwrite")
    if init_from is not None and args.mp_distributed:
        backbone, _ = build_backbone(args.netnum, opt.n_bands, False, opt.rgb_index, input_size=opt.input_size)
        ckpt.load_backbone(init_from, backbone)        # a mismatch is a user error, before workers start
    guards.check_writable_folder(ckpt_dir, "--ckpt")
    guards.check_dist_port(args)
    return Plan(mode, opt, index, train, claim_run_name(args, mode, ckpt_dir, expnum), ckpt_dir, bs, start, init_from)


def claim_run_name(args: argparse.Namespace, mode: Mode, ckpt_dir: Path, expnum: str | None) -> str:
    """The run's expnum, made its own (last step of ``prepare``: nothing after it can fail).

    A new name is claimed atomically; a given ``--expnum`` must be free unless ``--overwrite``;
    ``--resume`` continues the name in its state file ("" here, set by ``main_worker``).
    Under torchrun only rank 0 claims, and ``main_worker`` broadcasts the name.
    """
    if args.resume or os.environ.get("RANK", "0") != "0":
        return ""
    for p in remove_stale_tmp(ckpt_dir):
        log.info("removed %s, left by a run that was killed while writing", p.name)
    if expnum:
        ckpt.claim_given_expnum(ckpt_dir, args.netnum, expnum, args.overwrite)
        return expnum
    return ckpt.claim_expnum(ckpt_dir, args.netnum, mode.name)


def resolve_gpu_aug(args: argparse.Namespace, module, opt: DatasetOpt) -> bool:
    """``--gpu-aug`` as asked, or by default: with a GPU, for pretexts whose views are ``--aug`` plans
    that the batched path implements; a request it cannot honour is a user error."""
    from datasets.gpu_aug import GPU_AUGS, GPU_PLANS
    uses_aug = getattr(module, "USES_AUG", False)
    plan_code, aug = args.aug_p or "S5", aug_code(args, module)
    if args.gpu_aug is None:
        return bool(torch.cuda.is_available() and uses_aug and not opt.parts and plan_code in GPU_PLANS
                    and aug in GPU_AUGS)
    if args.gpu_aug:
        if not uses_aug:
            raise UserError(f"--gpu-aug makes the --aug/--aug_p views of SimCLR-style pretexts; --mode {args.mode} "
                            "makes its own views: drop --gpu-aug")
        if opt.parts:
            raise UserError(f"--gpu-aug normalises a batch with one set of band statistics; --ds {args.ds} pools "
                            "datasets with their own: drop --gpu-aug")
        module.make_transform(args, opt)            # the plan exists on the CPU path ...
        build_batch_views(args, opt, module)        # ... and on the device (plan A and --aug 6 do not)
    return bool(args.gpu_aug)


def aug_code(args: argparse.Namespace, module) -> int:
    """``--aug``, or the pretext's default (its module's ``AUG``, else 5)."""
    return getattr(module, "AUG", 5) if args.aug is None else args.aug


def build_batch_views(args: argparse.Namespace, opt: DatasetOpt, module):
    """The batched views of ``--aug``/``--aug_p`` (the defaults of the pretext's make_transform)."""
    from datasets.gpu_aug import BatchViews
    return BatchViews(aug_code(args, module), args.aug_p or "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index)


DEVICE_STREAM = 2**32      # sample_seed "index" of the device augmentation (above every image index)


class DeviceAugment:
    """``--gpu-aug`` in the loop: raw batch on the device -> the pretext's views, drawn from a
    generator seeded by (seed, rank, global step), so a resumed run draws the same views."""

    def __init__(self, views, seed: int, rank: int) -> None:
        self.views, self.seed, self.rank = views, seed, rank

    def __call__(self, raw: torch.Tensor, step: int):
        self.views.seed(raw.device, sample_seed(self.seed, step, self.rank, DEVICE_STREAM))
        return self.views(raw)


def planned_world_size(args: argparse.Namespace) -> int:
    """Processes the run will have: torchrun's WORLD_SIZE, nodes x processes per node, or 1."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if args.mp_distributed:
        nproc = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
        if torch.cuda.is_available() and nproc > torch.cuda.device_count():
            raise UserError(f"--nproc {nproc} exceeds the {torch.cuda.device_count()} GPU(s) here")
        return nproc * args.world_size
    return 1


def use_sync_bn(args: argparse.Namespace, module, rt: Runtime) -> bool:
    """SyncBatchNorm for this run: with ``--sync-bn``, and by default on GPUs when several processes
    train a pretext whose loss couples the images of a batch (its module sets ``SYNC_BN = True``:
    per-process BN statistics would let a contrastive model tell its positives apart by the
    batch they were normalised in); never with ``--no-sync-bn``. On CPU there is no SyncBatchNorm
    kernel: BN is per process there (``prepare`` refuses ``--sync-bn``)."""
    if not rt.distributed or rt.device.type != "cuda":
        return False
    return bool(args.sync_bn or (getattr(module, "SYNC_BN", False) and not args.no_sync_bn))


def main(args: argparse.Namespace) -> None:
    """Validate, then run one process, spawn one per GPU (or ``--nproc`` on CPU), or join torchrun."""
    setup_logging()
    plan = prepare(args)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:          # launched by torchrun
        main_worker(int(os.environ.get("LOCAL_RANK", 0)), None, args, plan)
        return
    if args.mp_distributed:
        nproc = planned_world_size(args) // args.world_size
        spawn(main_worker, nproc, (nproc, args, plan))
        return
    main_worker(None, None, args, plan)


def main_worker(local_rank: int | None, nproc: int | None, args: argparse.Namespace, plan: Plan) -> None:
    """One training process (rank 0 alone logs and writes)."""
    rt = init_runtime(local_rank, nproc, args)
    if rt.distributed and not args.resume:      # torchrun: rank 0 alone claimed the run's name
        name = [plan.expnum]
        dist.broadcast_object_list(name, src=0)
        plan.expnum = name[0]
    opt, mode = plan.opt, plan.mode
    module = pretexts.load(mode)
    per_proc_bs = plan.global_bs // rt.world
    reseed(args.seed, 0, rt.rank)

    backbone, _ = build_backbone(args.netnum, opt.n_bands, bool(args.ptcp), opt.rgb_index, input_size=opt.input_size)
    if plan.init_from is not None:
        meta = ckpt.load_backbone(plan.init_from, backbone)
        log.info("backbone initialised from %s (epoch %s)", plan.init_from, meta.get("epoch"))
    model = module.build(args, opt, backbone)
    if use_sync_bn(args, module, rt):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if rt.is_main:
            log.info("BatchNorm synchronised across the %d processes (SyncBatchNorm%s)", rt.world,
                     "" if args.sync_bn else "; --no-sync-bn keeps it per process")
    model.to(rt.device)
    backbone = getattr(model, "kept_backbone", backbone)   # what is monitored and saved (DINO: the teacher)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    net = (nn.parallel.DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
           if rt.distributed else model)

    cache = memory_cache(args, plan, rt)
    augment = None
    if args.gpu_aug:      # the workers only decode; the views are made on the device
        dataset = RasterDataset(plan.train, opt, None, cache=cache, threads=max(1, args.workers) * 2,
                                as_float=False)
        augment = DeviceAugment(build_batch_views(args, opt, module), args.seed, rt.rank)
        if rt.is_main:
            log.info("--gpu-aug: views made on %s in batches (datasets/gpu_aug.py)", rt.device)
    else:
        dataset = make_dataset(opt, plan.train, lambda o: module.make_transform(args, o),
                               cache=cache, threads=max(1, args.workers) * 2)
    if isinstance(cache, CacheSpec) and cache.shared is not None:
        dist.barrier()                    # every process of the node has mapped the shared cache ...
        if cache.builder:                 # ... so its name can go: the pages live until the last process ends
            for f in cache.shared.parent.glob(f"{cache.shared.stem}*.npy"):
                f.unlink(missing_ok=True)
        if rt.is_main:
            log.info("--pin-memory: one cache per node, shared by its processes (%d in all) through %s", rt.world,
                     cache.shared.parent)
    loader, sampler = make_loader(dataset, per_proc_bs, rt, args)
    iters = len(loader)
    if hasattr(module, "build_optimizer"):    # e.g. a GAN: Adam(0.5, 0.999) over G and D groups
        optimizer = module.build_optimizer(args, model, args.lr or opt.lr)
    else:
        optimizer = build_optimizer(args.optimizer, model, args.lr or opt.lr, args.momentum, args.wd)
    schedule = LRSchedule(args.lr_policy, args.lr or opt.lr, args.mepoch, iters, args.warmup,
                          args.milestones, args.lr_decay)

    expnum, start_epoch, best_knn = plan.expnum, plan.start_epoch, -1.0
    if args.resume:
        state = ckpt.load_training_state(args.resume, model, optimizer, None)
        expnum, start_epoch = state["extra"]["expnum"], int(state["epoch"])
        best_knn = float(state["extra"].get("best_knn", -1.0))
        log.info("resumed %s from %s at epoch %d", expnum, args.resume, start_epoch)
    stem = f"{args.netnum}_{expnum}"
    epoch_log = (EpochLog(plan.ckpt_dir / f"{stem}_log.csv", plan.ckpt_dir / "tb" / stem, resume=bool(args.resume))
                 if rt.is_main else None)
    monitor = None
    if rt.is_main and args.knn_freq != 0 and plan.index.classes:
        try:
            monitor = KnnMonitor(args, opt, plan.index, rt)
        except UserError as err:             # e.g. a split without a validation slice
            if args.knn_freq != "auto":      # asked for explicitly: say it cannot be done
                raise
            log.warning("no kNN monitor (and no _best.pth): %s", err)
    if rt.is_main:
        log.info("%s | mode %d (%s) | netnum %s | %s: %d training images, %d bands %dx%d | "
                 "batch %d (%d x %d processes) | %d iterations/epoch | device %s",
                 expnum, mode.code, mode.pretext, args.netnum, opt.name, len(plan.train), opt.n_bands,
                 opt.input_size, opt.input_size, plan.global_bs, per_proc_bs, rt.world, iters, rt.device)
    meta = {"netnum": args.netnum, "in_channels": opt.n_bands, "bands": list(opt.bands), "mode": mode.code,
            "pretext": mode.pretext, "expnum": expnum, "dataset": opt.name, "input_size": opt.input_size,
            "mean": [float(v) for v in opt.mean] if opt.mean is not None else None,
            "std": [float(v) for v in opt.std] if opt.std is not None else None,
            "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))},
            "provenance": provenance(opt, plan.index, plan.train),
            **(backbone.checkpoint_meta() if hasattr(backbone, "checkpoint_meta") else {})}   # ViTs: feature, band groups
    last_good, train_seconds = None, 0.0
    try:
        for epoch in range(start_epoch, args.mepoch):
            reseed(args.seed, epoch + 1, rt.rank)
            sampler.set_epoch(epoch)
            stats = train_one_epoch(net, loader, optimizer, schedule, epoch, rt, args, last_good, augment=augment)
            train_seconds += stats["seconds"]
            done = epoch + 1
            if monitor is not None and monitor.due(done, args.mepoch):
                stats["knn_top1"] = monitor(backbone, done, stats["seconds"])
            vis_every = args.vis_every or max(1, args.mepoch // 10)
            if args.vis and rt.is_main and (done % vis_every == 0 or done == args.mepoch or epoch == start_epoch):
                save_vis(module, model, dataset, opt, plan.ckpt_dir / f"{stem}_vis_e{done:04d}.png", args.seed, rt,
                         augment=augment, bands=band_triplet(args.vis_bands, opt))
            if rt.is_main:
                extra = "  ".join(f"{k} {v:.4g}" for k, v in stats.items()
                                  if k not in ("loss", "lr", "img_per_s", "seconds", "knn_top1"))
                log.info("epoch %d/%d  loss %.4f  lr %.3g  %s%s  %.0f img/s  %.1fs", done, args.mepoch,
                         stats["loss"], stats["lr"], extra,
                         f"  kNN {stats['knn_top1']:.2f}%" if "knn_top1" in stats else "",
                         stats["img_per_s"], stats["seconds"])
                epoch_log.add(done, stats)
                meta_e = {**meta, "epoch": done, "stats": stats}
                periodic = args.ckpt_freq > 0 and (done % args.ckpt_freq == 0 or done == args.mepoch)
                if periodic or done == args.mepoch:
                    last_good = ckpt.ckpt_path(plan.ckpt_dir, args.netnum, expnum, done)
                    ckpt.save_backbone(last_good, backbone.state_dict(),
                                       {**meta_e, "selected_by": "last" if done == args.mepoch else "epoch"})
                if periodic:
                    ckpt.save_training_state(plan.ckpt_dir / f"{stem}_state.pth", model, optimizer, done,
                                             done * iters, None, {"expnum": expnum, "best_knn": best_knn})
                if stats.get("knn_top1", -1.0) > best_knn:
                    best_knn = stats["knn_top1"]
                    ckpt.save_backbone(ckpt.ckpt_path(plan.ckpt_dir, args.netnum, expnum, "best"),
                                       backbone.state_dict(), {**meta_e, "selected_by": "val-knn",
                                                               "selected_epoch": done})
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


def memory_cache(args: argparse.Namespace, plan: Plan, rt: Runtime) -> bool | CacheSpec:
    """``--pin-memory``: what to cache, and with several processes one shared copy per node
    (the node's first process builds it in /dev/shm, the others map it)."""
    if not args.pin_memory:
        return False
    shared = None
    if rt.distributed:
        key = [f"{plan.expnum}_{os.getpid()}"]            # the same name on every rank: rank 0's
        dist.broadcast_object_list(key, src=0)
        shared = shared_cache_path(key[0], [s.path for s in plan.train])
    return CacheSpec(size=args.cache_size, shared=shared, builder=rt.local_rank == 0)


def make_loader(dataset: Dataset, batch_size: int, rt: Runtime, args: argparse.Namespace) -> tuple[DataLoader, SeededSampler]:
    """Shuffled, full batches of ``(views, label, index)`` for this process, and their sampler.

    The order of an epoch is a permutation seeded by ``(--seed, epoch)`` and split across
    ranks (DistributedSampler, also for one process); each sample's augmentations are seeded
    by ``(--seed, epoch, rank, index)`` (:class:`engine.runtime.SeededSampler`). Neither
    depends on the workers' RNG, so the workers persist across epochs and a resumed run
    sees the views of an uninterrupted one. Call ``sampler.set_epoch(e)`` before each epoch.
    """
    order = DistributedSampler(dataset, num_replicas=rt.world, rank=rt.rank, shuffle=True, seed=args.seed,
                               drop_last=True)
    sampler = SeededSampler(order, args.seed, rt.rank)
    # the workers' base seed is drawn from this otherwise unused generator, so creating the
    # iterator (first epoch, or the first epoch after --resume) never shifts torch's global RNG
    loader = DataLoader(PerSampleSeed(dataset), batch_size=batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=rt.device.type == "cuda", drop_last=True, generator=torch.Generator(),
                        persistent_workers=args.workers > 0)
    return loader, sampler


BAR_EVERY = 25       # the progress bar reads the running loss every this many steps (one host sync)


def train_one_epoch(net: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    schedule: LRSchedule, epoch: int, rt: Runtime, args: argparse.Namespace,
                    last_good: Path | None, total_epochs: int | None = None,
                    augment: Callable[[Any, int], Any] | None = None) -> dict[str, float]:
    """One pass over the loader; means over all processes; stops on a non-finite loss.

    The step never waits for the device: the loss, the pretext's stats (0-dim tensors) and a
    count of non-finite losses are summed ON the device, all-reduced and read by the host ONCE
    after the epoch. A non-finite loss therefore ends the run at the end of its epoch, which
    is discarded (nothing of it is saved: the last good checkpoint stays the last good one).
    After each optimizer step the model's optional ``on_step_end(progress)`` hook runs
    (progress = global step / total steps, for EMA teachers and momentum schedules).
    ``augment`` (``--gpu-aug``) turns a device batch of raw images into the pretext's views.
    """
    net.train()
    model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    on_step_end = getattr(model, "on_step_end", None)
    iters = len(loader)  # type: ignore[arg-type]
    total_steps = max(1, (total_epochs or args.mepoch) * iters)
    dev = rt.device
    acc = torch.float32 if dev.type == "mps" else torch.float64
    sums: dict[str, torch.Tensor] = {}        # loss and every stat of the pretext, summed over steps
    host: dict[str, float] = {}               # stats a pretext reports as python floats (no sync needed)
    n_bad = torch.zeros((), dtype=acc, device=dev)
    bad_iter = torch.full((), -1.0, dtype=acc, device=dev)   # iteration and loss of the first bad step
    bad_value = torch.zeros((), dtype=acc, device=dev)
    batches, n_images = 0, 0
    t0 = time.perf_counter()
    bar = use_tqdm(rt, args)
    it_loader = loader
    if bar:
        from tqdm import tqdm
        it_loader = tqdm(loader, total=iters, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)
    for i, (views, _, _) in enumerate(it_loader):
        step = epoch * iters + i
        lr = schedule.step(optimizer, step)
        views = move_to(views, dev, rt.channels_last)
        if augment is not None:
            views = augment(views, step)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=rt.amp):
            loss, stats = net(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step_end is not None:
            on_step_end((step + 1) / total_steps)
        value = loss.detach().to(acc)
        bad = ~torch.isfinite(value)
        first = bad & (n_bad == 0)
        bad_iter = torch.where(first, float(i), bad_iter)
        bad_value = torch.where(first, value, bad_value)
        n_bad = n_bad + bad.to(acc)
        for k, v in (("loss", value), *stats.items()):
            if torch.is_tensor(v):
                v = v.detach().to(acc)
                sums[k] = sums[k] + v if k in sums else v
            else:
                host[k] = host.get(k, 0.0) + float(v)
        batches += 1
        n_images += len(views[0]) if isinstance(views, (tuple, list)) else len(views)
        if bar and (i + 1) % BAR_EVERY == 0:
            it_loader.set_postfix(loss=f"{(sums['loss'] / batches).item():.3f}", lr=f"{lr:.2g}")
    keys, hkeys = sorted(sums), sorted(host)
    zero = torch.zeros((), dtype=acc, device=dev)
    shared = torch.stack([sums[k] for k in keys] + [zero + host[k] for k in hkeys]
                         + [zero + batches, zero + n_images, n_bad])
    if rt.distributed:
        dist.all_reduce(shared)
    values = torch.cat([shared, torch.stack([n_bad, bad_iter, bad_value])]).tolist()      # the epoch's one host sync
    seconds = time.perf_counter() - t0
    *means, total_batches, total_images, total_bad, my_bad, bad_iter, bad_value = values
    if total_bad > 0:
        where = (f"the loss became {bad_value} at epoch {epoch + 1}, iteration {int(bad_iter) + 1}" if my_bad
                 else f"the loss became non-finite on another process at epoch {epoch + 1}")
        raise TrainingDiverged(
            f"{where}; nothing from this epoch was saved (last good checkpoint: {last_good or 'none yet'}); "
            "lower --lr, raise --tau or add --warmup")
    out = {k: m / max(total_batches, 1) for k, m in zip(keys + hkeys, means)}
    return {**out, "lr": optimizer.param_groups[0]["lr"], "img_per_s": total_images / seconds, "seconds": seconds}


MONITOR_BUDGET = 0.05      # --knn-freq auto: the monitor's share of the training time


def parse_knn_freq(text: str) -> int | str:
    """``--knn-freq``: ``auto``, or every N epochs (0: off)."""
    if str(text).lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise UserError(f"--knn-freq {text} must be >= 0 epochs (0: off) or auto; pass e.g. --knn-freq auto")
    return n


class KnnMonitor:
    """Weighted kNN accuracy (k=20, cosine) of backbone features on the VALIDATION slice.

    Memory: up to ``--knn-per-class`` images per class of the few-shot pool; queries: the
    validation slice (:func:`engine.labels.monitor_sets`, the only labels a monitor may read).
    Both are decoded once and kept as the plain view at INPUT resolution (resized and
    normalised, float16: 2 bytes a value, e.g. 0.3 MB a 224 px RGB image), so a monitor pass
    is forward passes only, with no decoding and no workers.

    Cadence (``--knn-freq auto``, the default): after the first epoch, then every
    ``ceil(t_monitor / (0.05 * t_epoch))`` epochs (measured; the interval is re-derived
    after every pass), and always after the last epoch, so the monitor costs about 5 % of
    the training time or less. ``best`` is the best of the MONITORED epochs.
    """

    def __init__(self, args: argparse.Namespace, opt: DatasetOpt, index: Index, rt: Runtime):
        memory, queries = monitor_sets(index)
        mem_y = np.array([s.label for s in memory])
        memory = [memory[i] for i in balanced_subsample(mem_y, args.knn_per_class, args.seed)]
        t = time.perf_counter()
        tf = lambda o: plain(o.input_size, o.mean, o.std)  # noqa: E731
        self.memory, self.memory_y = _plain_views(make_dataset(opt, memory, tf), args.workers)
        self.queries, self.query_y = _plain_views(make_dataset(opt, queries, tf), args.workers)
        self.num_classes, self.rt = opt.num_classes, rt
        self.freq = args.knn_freq
        self.next_due = None                  # auto: the next epoch to monitor (None: the first one)
        self.runs, self.seconds = 0, 0.0
        mb = (self.memory.nbytes + self.queries.nbytes) / 2**20
        log.info("kNN monitor: %d pool images as memory, %d validation images as queries, cached at %d px "
                 "(%.0f MiB, %.1f s)", len(memory), len(queries), opt.input_size, mb, time.perf_counter() - t)

    def due(self, done: int, last: int) -> bool:
        """Whether to run after epoch ``done`` (1-based) of ``last``."""
        if done == last:
            return True
        if self.freq == "auto":
            return self.next_due is None or done >= self.next_due
        return done % self.freq == 0

    def __call__(self, backbone: nn.Module, done: int, epoch_seconds: float) -> float:
        """kNN top-1 (%) of ``backbone``; with ``auto`` cadence, schedules the next pass."""
        t = time.perf_counter()
        f_mem = _features(backbone, self.memory, self.rt)
        f_q = _features(backbone, self.queries, self.rt)
        acc = knn_accuracy(f_mem, self.memory_y, f_q, self.query_y, self.num_classes, k=20)
        spent = time.perf_counter() - t
        self.runs, self.seconds = self.runs + 1, self.seconds + spent
        if self.freq == "auto":
            self.next_due = done + auto_interval(spent, epoch_seconds)
        return acc


def auto_interval(monitor_seconds: float, epoch_seconds: float, budget: float = MONITOR_BUDGET) -> int:
    """Epochs between monitor passes so that a pass costs at most ``budget`` of the training time."""
    return max(1, math.ceil(monitor_seconds / (budget * max(epoch_seconds, 1e-9)) - 1e-9))


def _plain_views(dataset: Dataset, workers: int, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """All plain views of ``dataset`` in ONE preallocated float16 tensor (no list + stack: peak = the result)."""
    n = len(dataset)  # type: ignore[arg-type]
    out: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.long)
    for x, y, idx in DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False):
        if out is None:
            out = torch.empty((n, *x.shape[1:]), dtype=torch.float16)
        out[idx] = x.to(torch.float16)
        labels[idx] = torch.as_tensor(y)
    assert out is not None
    return out, labels


@torch.no_grad()
def _features(backbone: nn.Module, images: torch.Tensor, rt: Runtime, batch: int = 256) -> torch.Tensor:
    """Pooled float32 features of cached plain views (BatchNorm in eval mode), on the CPU."""
    was = backbone.training
    backbone.eval()
    feats = []
    for i in range(0, len(images), batch):
        x = move_to(images[i:i + batch], rt.device, rt.channels_last).float()
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            feats.append(backbone(x).float())
    backbone.train(was)
    return torch.cat(feats).cpu()


def save_vis(module, model: nn.Module, dataset, opt: DatasetOpt, path: Path, seed: int, rt: Runtime,
             n: int = 8, augment: DeviceAugment | None = None, bands: tuple[int, int, int] | None = None) -> None:
    """``--vis``: a PNG grid, one row per image, true colour for multispectral data (or the ``bands``
    positions shown as R, G, B: ``--vis-bands``).

    A pretext with ``vis_rows(model, views)`` shows what it learns (input, corrupted,
    reconstruction; GAN samples); otherwise the views themselves are shown.
    """
    from torch.utils.data import default_collate

    from engine.vis import save_grid
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n].tolist()
    batch = default_collate([dataset[i][0] for i in idx])
    if augment is not None:                    # --gpu-aug: the dataset holds raw images
        batch = augment(batch.to(rt.device), 0)
    if hasattr(module, "vis_rows"):
        was = model.training
        model.eval()
        with torch.no_grad():
            rows = module.vis_rows(model, move_to(batch, rt.device))
        model.train(was)
    else:
        items = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        rows = []
        for j in range(len(idx)):
            row = []
            for v in items:                   # images; jigsaw tile stacks; labels are skipped
                if torch.is_tensor(v) and v.dim() == 4:
                    row.append(v[j])
                elif torch.is_tensor(v) and v.dim() == 5:
                    row.extend(v[j])
            rows.append(row)
    save_grid(rows, path, opt, getattr(module, "VIS_COLUMNS", None), bands)
    log.info("figure written to %s", path)


def run(argv: list[str] | None, parser: argparse.ArgumentParser) -> None:
    """Entry point of main_cls_ss_train.py (after parsing)."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except TrainingDiverged as err:
        logging.getLogger(__name__).error("%s", err)
        sys.exit(1)
