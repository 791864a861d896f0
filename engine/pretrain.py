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

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import models.pretext as pretexts
from config.codes import PRETEXTS, Mode, decode_mode, decode_netnum
from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from datasets.folder import make_dataset, prepare_dataset
from datasets.index import Index, Sample, few_shot
from datasets.options import get_opt
from datasets.transforms import plain
from engine import checkpoint as ckpt
from engine import guards
from engine.atomic import remove_stale_tmp
from engine.cli import check_process_flags, setup_logging
from engine.dist import spawn
from engine.knn import balanced_subsample, extract_features, knn_accuracy
from engine.logger import EpochLog
from engine.optim import build_optimizer
from engine.provenance import provenance
from engine.runtime import (Runtime, TrainingDiverged, init_runtime, move_to, reseed, seed_worker,
                            use_tqdm)
from engine.schedules import LRSchedule
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
    g.add_argument("--knn-freq", dest="knn_freq", type=int, default=1, help="kNN monitor every N epochs (0: off)")
    g.add_argument("--knn-per-class", dest="knn_per_class", type=int, default=200,
                   help="kNN monitor: at most this many training images per class in the memory bank (test: half)")
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
    decode_netnum(args.netnum)
    module = pretexts.load(mode)
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
    if args.sync_bn and not torch.cuda.is_available():
        raise UserError("--sync-bn needs GPUs (SyncBatchNorm has no CPU kernel); drop it on CPU")
    opt, index = prepare_dataset(get_opt(args.ds, args))
    module.make_transform(args, opt.parts[0] if opt.parts else opt)   # validates --aug / --aug_p
    guards.check_input_size(args.netnum, opt.input_size)
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
        backbone, _ = build_backbone(args.netnum, opt.n_bands, False, opt.rgb_index)
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

    backbone, _ = build_backbone(args.netnum, opt.n_bands, bool(args.ptcp), opt.rgb_index)
    if plan.init_from is not None:
        meta = ckpt.load_backbone(plan.init_from, backbone)
        log.info("backbone initialised from %s (epoch %s)", plan.init_from, meta.get("epoch"))
    model = module.build(args, opt, backbone)
    if rt.distributed and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(rt.device)
    backbone = getattr(model, "kept_backbone", backbone)   # what is monitored and saved (DINO: the teacher)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    net = (nn.parallel.DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
           if rt.distributed else model)

    dataset = make_dataset(opt, plan.train, lambda o: module.make_transform(args, o),
                           cache=args.pin_memory, threads=max(1, args.workers) * 2)
    gen = torch.Generator()
    sampler = (DistributedSampler(dataset, num_replicas=rt.world, rank=rt.rank, shuffle=True,
                                  seed=args.seed, drop_last=True)
               if rt.distributed else RandomSampler(dataset, generator=gen))
    loader = DataLoader(dataset, batch_size=per_proc_bs, sampler=sampler, num_workers=args.workers,
                        pin_memory=rt.device.type == "cuda", drop_last=True, worker_init_fn=seed_worker,
                        generator=gen, persistent_workers=False)
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
    monitor = KnnMonitor(args, opt, plan.index, rt) if rt.is_main and args.knn_freq > 0 and plan.index.classes else None
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
            "provenance": provenance(opt, plan.index, plan.train)}
    last_good = None
    try:
        for epoch in range(start_epoch, args.mepoch):
            reseed(args.seed, epoch + 1, rt.rank)
            gen.manual_seed(args.seed * 1_000_003 + epoch)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            stats = train_one_epoch(net, loader, optimizer, schedule, epoch, rt, args, last_good)
            done = epoch + 1
            if monitor is not None and (done % args.knn_freq == 0 or done == args.mepoch):
                stats["knn_top1"] = monitor(backbone)
            vis_every = max(1, args.mepoch // 10)
            if args.vis and rt.is_main and (done % vis_every == 0 or done == args.mepoch or epoch == start_epoch):
                save_vis(module, model, dataset, opt, plan.ckpt_dir / f"{stem}_vis_e{done:04d}.png", args.seed, rt)
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
                    ckpt.save_backbone(last_good, backbone.state_dict(), meta_e)
                if periodic:
                    ckpt.save_training_state(plan.ckpt_dir / f"{stem}_state.pth", model, optimizer, done,
                                             done * iters, None, {"expnum": expnum, "best_knn": best_knn})
                if stats.get("knn_top1", -1.0) > best_knn:
                    best_knn = stats["knn_top1"]
                    ckpt.save_backbone(ckpt.ckpt_path(plan.ckpt_dir, args.netnum, expnum, "best"),
                                       backbone.state_dict(), meta_e)
            if rt.distributed:
                dist.barrier()
    finally:
        if epoch_log is not None:
            epoch_log.close()
        rt.close()
    if rt.is_main:
        log.info("done: backbone %s%s", last_good,
                 f" (best kNN {best_knn:.2f}%)" if best_knn >= 0 else "")


def train_one_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    schedule: LRSchedule, epoch: int, rt: Runtime, args: argparse.Namespace,
                    last_good: Path | None) -> dict[str, float]:
    """One pass over the loader; averages over all processes; stops on a non-finite loss."""
    net.train()
    iters = len(loader)
    sums: dict[str, float] = {}           # loss and every stat the pretext reports, summed over batches
    batches, n_images = 0, 0
    t0 = time.perf_counter()
    bar = use_tqdm(rt, args)
    it_loader = loader
    if bar:
        from tqdm import tqdm
        it_loader = tqdm(loader, total=iters, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)
    for i, (views, _, _) in enumerate(it_loader):
        lr = schedule.step(optimizer, epoch * iters + i)
        views = move_to(views, rt.device, rt.channels_last)
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            loss, stats = net(views)
        value = loss.item()                     # the step's one host sync
        bad = not math.isfinite(value)
        if rt.distributed:                      # every rank must stop together
            flag = torch.tensor([float(bad)], device=loss.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = flag.item() > 0
        if bad:
            raise TrainingDiverged(
                f"the loss became {value} at epoch {epoch + 1}, iteration {i + 1}; nothing from this "
                f"epoch was saved (last good checkpoint: {last_good or 'none yet'}); lower --lr, raise --tau or add --warmup")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if hasattr(model := getattr(net, "module", net), "on_step_end"):    # EMA teachers, queues, schedules
            model.on_step_end((epoch * iters + i + 1) / (args.mepoch * iters))
        for k, v in {"loss": value, **stats}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        batches += 1
        n_images += len(views[0]) if isinstance(views, (tuple, list)) else len(views)
        if bar:
            it_loader.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2g}")
    seconds = time.perf_counter() - t0
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [float(batches), float(n_images)], dtype=torch.float64)
    if rt.distributed:
        dist.all_reduce(totals)
    means = {k: totals[j].item() / max(totals[-2].item(), 1) for j, k in enumerate(keys)}
    return {**means, "lr": optimizer.param_groups[0]["lr"], "img_per_s": totals[-1].item() / seconds,
            "seconds": seconds}


class KnnMonitor:
    """Weighted kNN (k=20, cosine) of backbone features: training split -> test split."""

    def __init__(self, args: argparse.Namespace, opt: DatasetOpt, index: Index, rt: Runtime):
        tr_y = np.array([s.label for s in index.train])
        te_y = np.array([s.label for s in index.test])
        tr = [index.train[i] for i in balanced_subsample(tr_y, args.knn_per_class, args.seed)]
        te = [index.test[i] for i in balanced_subsample(te_y, max(1, args.knn_per_class // 2), args.seed)]
        tf = lambda o: plain(o.input_size, o.mean, o.std)  # noqa: E731
        kw = dict(batch_size=256, num_workers=args.workers, shuffle=False)
        self.train_loader = DataLoader(make_dataset(opt, tr, tf, cache=True), **kw)
        self.test_loader = DataLoader(make_dataset(opt, te, tf, cache=True), **kw)
        self.num_classes, self.rt = opt.num_classes, rt
        log.info("kNN monitor: %d training images as memory, %d test images", len(tr), len(te))

    def __call__(self, backbone: nn.Module) -> float:
        f_tr, y_tr = extract_features(backbone, self.train_loader, self.rt.device, self.rt.amp, self.rt.channels_last)
        f_te, y_te = extract_features(backbone, self.test_loader, self.rt.device, self.rt.amp, self.rt.channels_last)
        return knn_accuracy(f_tr, y_tr, f_te, y_te, self.num_classes, k=20)


def save_vis(module, model: nn.Module, dataset, opt: DatasetOpt, path: Path, seed: int, rt: Runtime,
             n: int = 8) -> None:
    """``--vis``: a PNG grid, one row per image, true colour for multispectral data.

    A pretext with ``vis_rows(model, views)`` shows what it learns (input, corrupted,
    reconstruction; GAN samples); otherwise the views themselves are shown.
    """
    from torch.utils.data import default_collate

    from engine.vis import save_grid
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n].tolist()
    batch = default_collate([dataset[i][0] for i in idx])
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
    save_grid(rows, path, opt, getattr(module, "VIS_COLUMNS", None))
    log.info("figure written to %s", path)


def run(argv: list[str] | None, parser: argparse.ArgumentParser) -> None:
    """Entry point of main_cls_ss_train.py (after parsing)."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except TrainingDiverged as err:
        logging.getLogger(__name__).error("%s", err)
        sys.exit(1)
