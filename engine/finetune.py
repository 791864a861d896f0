"""Supervised work of main_cls.py: train (1x), val (2x), test (3x), finetune (4x); the
frozen-feature probes (``--probe logreg|knn``) live in engine/probe.py.

Protocols (``--hos``): 0 all layers at ``--lr``; 1 backbone at lr/5; 9 linear probe
(backbone frozen AND in eval mode; after the first epoch every backbone tensor is
compared with its starting value and the run fails if one changed).
Every evaluation prints OA, AA, kappa, macro-F1, per-class accuracy and the confusion
matrix, and appends one row to ``results/<ds>.csv``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from config import baselines
from config.codes import Mode, decode_mode, decode_netnum
from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from datasets.folder import make_dataset, prepare_dataset
from datasets.index import Index, Sample, few_shot
from datasets.options import get_opt
from datasets.transforms import Normalize, build_plan, plain
from datasets.views import tta_views
from engine import checkpoint as ckpt
from engine import guards, labels, probe, provenance
from engine.atomic import remove_stale_tmp
from engine.cli import check_process_flags, setup_logging
from engine.dist import spawn
from engine.logger import EpochLog
from engine.lr_decay import param_groups_lrd
from engine.metrics import classification_metrics, format_confusion, save_confusion_png
from engine.optim import build_optimizer
from engine.results import append_result, code_version, save_predictions
from engine.runtime import Runtime, init_runtime, move_to, reseed, seed_worker, use_tqdm
from engine.schedules import LRSchedule
from models import build_model, pretrained
from models.backbones import SMALL_STEMS

log = logging.getLogger(__name__)
PROTOCOLS = {0: "all layers", 1: "backbone at lr/5", 9: "linear probe (frozen backbone)"}
TRAIN_PLAN = "D"   # fine-tuning augmentation: random resized crop + 90-degree rotations/flips


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("classification")
    g.add_argument("--hos", type=int, default=0, help="0 all layers; 1 backbone at lr/5; 9 linear probe")
    g.add_argument("--encoder_cp", "--encoder-cp", dest="encoder_cp", help="a backbone file to start from (instead of --expnum/--cepoch): one written by pretraining, or SSL4EO-S12 / TorchGeo Sentinel-2 ResNet weights (band order, preprocessing and input size mapped)")
    g.add_argument("--weights", help="--mode 1x: ImageNet weights from this torchvision state dict file instead of the torch hub cache (implies --ptcp 1)")
    g.add_argument("--loss", default="CrossEntropyLoss", help="classification loss (CrossEntropyLoss)")
    g.add_argument("--layer-decay", dest="layer_decay", type=float, default=None,
                   help="ViTs: layer-wise lr decay, block k of n at lr * decay^(n + 1 - k) (default 0.75 when a ViT "
                        "trains, MAE's fine-tuning value; 1: off); refused for CNNs")
    g.add_argument("--drop-path", dest="drop_path", type=float, default=None,
                   help="ViTs: stochastic depth rate of the last block (default 0.1 when a ViT trains, MAE's); "
                        "refused for CNNs")
    g.add_argument("--tta", action="store_true", help="test-time augmentation: average the 8 flips/rotations")
    g.add_argument("--probe", choices=("logreg", "knn"), help="frozen-feature protocol instead of training: logistic regression (C by cross-validation on the training shots) or kNN; features once for the whole --ts x --nseeds sweep")
    g.add_argument("--nseeds", type=int, default=1, help="repeat the few-shot draw for seeds --seed .. --seed+N-1 (one row each, for every --ts)")
    probe.add_args(g)
    g.add_argument("--results", help="CSV results table (default results/<ds>.csv)")
    g.add_argument("--allow-overlap", dest="allow_overlap", action="store_true",
                   help="evaluate a checkpoint whose pretraining images include test scenes of --ds (refused otherwise; the row records it)")
    return p


@dataclass
class Job:
    mode: Mode
    opt: DatasetOpt
    index: Index
    init: Path | None          # backbone (1x/4x) or classifier (2x/3x) checkpoint
    init_expnum: str
    init_epoch: str
    pretext: str               # what the backbone learnt from: simclr, ..., random, imagenet
    expnum: str
    results: Path
    init_meta: dict = field(default_factory=dict)   # the checkpoint's meta (provenance, selected_by)
    log: Path | None = None    # per-epoch fine-tuning log, the file that claims ``expnum`` (1x/4x)


def prepare(args: argparse.Namespace) -> Job:
    """Decode codes, find the data and the checkpoint, check every user input once."""
    if args.mode is None:
        raise UserError("--mode is required: 1x train, 2x val, 3x test, 4x finetune (see --list-codes)")
    mode = decode_mode(args.mode, script="cls")
    check_process_flags(args)
    guards.check_values(args)
    decode_netnum(args.netnum)
    if args.hos not in PROTOCOLS:
        raise UserError(f"--hos {args.hos} is not a protocol; use 0 (all layers), 1 (backbone at lr/5) or 9 (linear probe)")
    if args.loss not in ("CrossEntropyLoss", "ce"):
        raise UserError(f"--loss {args.loss} is not a classification loss here; use CrossEntropyLoss")
    if args.nseeds < 1:
        raise UserError(f"--nseeds {args.nseeds} must be >= 1")
    if args.probe and (args.mp_distributed or "WORLD_SIZE" in os.environ):
        raise UserError("--probe runs in one process (features once, a classifier per seed); drop --mp-distributed / torchrun")
    if args.probe and args.tta:
        raise UserError("--tta averages a trained classifier over flips; --probe classifies frozen features: drop one")
    probe.check_args(args)
    if len(args.ts_list) > 1 and mode.job in ("val", "test"):
        raise UserError(f"--mode {mode.code} evaluates one saved classifier, trained at one --ts; give a single "
                        f"--ts, not {','.join(f'{t:g}' for t in args.ts_list)}")
    if args.weights:
        if mode.job != "train":
            raise UserError(f"--weights gives the ImageNet weights --mode 1x starts from, not --mode {mode.code}; "
                            "pretrained Sentinel-2 weights go through --encoder_cp FILE with --mode 4x")
        if not Path(args.weights).is_file():
            raise UserError(f"--weights {args.weights}: no such file; give a torchvision ImageNet state dict file")
        args.ptcp = 1
    if mode.job != "finetune" and args.encoder_cp:
        raise UserError(f"--encoder_cp gives the backbone to fine-tune (--mode 4x), not --mode {mode.code}")
    if mode.job == "finetune" and args.ptcp:
        raise UserError("--ptcp 1 starts from ImageNet (--mode 1x); --mode 4x starts from the pretraining checkpoint: drop --ptcp")
    if args.sepoch and not args.resume:
        raise UserError(f"--sepoch {args.sepoch} says epochs already done; give the classifier to continue with --resume")
    if args.resume:
        if mode.job not in ("train", "finetune") or args.probe:
            raise UserError(f"--resume continues training a classifier; it does not apply to --mode {mode.code}"
                            + (" with --probe" if args.probe else ""))
        if not Path(args.resume).is_file():
            raise UserError(f"--resume {args.resume}: no such file; give a classifier checkpoint written by main_cls.py")
    if args.sync_bn and not torch.cuda.is_available():
        raise UserError("--sync-bn needs GPUs (SyncBatchNorm has no CPU kernel); drop it on CPU")
    if not 0 <= args.sepoch < args.mepoch:
        raise UserError(f"--sepoch {args.sepoch} must be in 0..{args.mepoch - 1} (below --mepoch)")
    opt, index = prepare_dataset(get_opt(args.ds, args))
    if not opt.labelled:
        raise UserError(f"--ds {args.ds} has no class folders; main_cls.py needs labelled data (class-per-folder)")
    if opt.parts:
        raise UserError(f"--ds {args.ds}: pooled datasets are for pretraining only; evaluate on one dataset")
    guards.check_input_size(args.netnum, opt.input_size)
    trains = mode.job in ("train", "finetune") and not args.probe
    guards.resolve_vit_finetune(args, args.netnum, trains)
    world = (int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ
             else (args.nproc or max(1, torch.cuda.device_count())) * args.world_size if args.mp_distributed else 1)
    if trains and args.hos != 9 and (args.bs or opt.batch_size) // world < 2:
        raise UserError(f"--bs {args.bs or opt.batch_size} gives {(args.bs or opt.batch_size) // world} image(s) to each "
                        f"of the {world} process(es); BatchNorm needs at least 2 per process: use --bs {2 * world} or more")
    if mode.job != "val":
        guards.check_split_files(index.test, opt, "test split")
    init, init_exp, init_ep = None, "", ""
    if mode.job in ("finetune", "val", "test"):
        if args.encoder_cp and mode.job == "finetune":
            init = Path(args.encoder_cp)
            init_exp, init_ep = init.stem, ""
        else:
            if not args.expnum or args.cepoch is None:
                raise UserError(f"--mode {mode.code} ({mode.job}) needs --expnum and --cepoch "
                                "(the checkpoint <netnum>_<expnum>_<cepoch>.pth)" + (" or --encoder_cp FILE" if mode.job == "finetune" else ""))
            init = ckpt.ckpt_path(Path(args.ckpt), args.netnum, args.expnum, args.cepoch)
            init_exp, init_ep = args.expnum, str(args.cepoch)
        if not init.is_file():
            near = sorted(p.name for p in init.parent.glob(f"{args.netnum}_*.pth"))[:8] if init.parent.is_dir() else []
            raise UserError(f"checkpoint {init} does not exist" + (f"; found: {', '.join(near)}" if near else "")
                            + "; check --ckpt, --netnum, --expnum and --cepoch")
    elif args.expnum or args.cepoch is not None:
        raise UserError(f"--mode {mode.code} trains from {'ImageNet' if args.ptcp else 'random'} initialisation, so "
                        "--expnum/--cepoch would go unused: drop them, or use --mode 41 to fine-tune that checkpoint")
    if args.probe and mode.job in ("val", "test"):
        raise UserError(f"--probe works with --mode 1x (random/ImageNet features) or 4x (pretrained features), not {mode.code}")
    meta: dict = {}
    native = None                    # the input size a pretrained baseline was trained at
    if mode.job == "train":
        pretext = "imagenet" if args.ptcp else "random"
        native = baselines.IMAGENET_INPUT_SIZE if args.ptcp else None
        if args.allow_overlap:
            raise UserError(f"--allow-overlap lets a pretrained checkpoint see test scenes; --mode {mode.code} "
                            "starts from random/ImageNet weights: drop it")
    elif mode.job == "finetune" and (foreign := pretrained.recognise(
            ckpt.read_checkpoint(init, weights_only=True, hint="pick another file"), init)) is not None:
        meta, pretext, native = foreign.meta, foreign.pretext, baselines.SSL4EO_INPUT_SIZE
        if args.allow_overlap:
            raise UserError(f"{init} holds external weights ({meta['dataset']}) without a scene list, so there is no "
                            "overlap check to override: drop --allow-overlap")
        log.info("%s: external %s weights pretrained on %s; whether those scenes overlap the %s test split "
                 "cannot be checked", init, pretext, meta["dataset"], opt.name)
    else:
        meta = dict(ckpt.read_checkpoint(init, weights_only=False).get("meta") or {})
        pretext = str(meta.get("pretext", meta.get("pretrain", "")))
        native = meta.get("input_size") if mode.job in ("val", "test") else None   # a classifier keeps its size
        check_best(meta, init, args.cepoch)
        external = str(meta.get("pretrain", "")).startswith("ssl4eo-")
        if mode.job in ("val", "test") and (meta.get("pretrain") in ("random", "imagenet") or external):
            if args.allow_overlap:
                raise UserError(f"{init} was trained from {meta['pretrain']} weights, which carry no list of "
                                f"{opt.name} scenes to check: drop --allow-overlap")
        else:
            provenance.check_checkpoint(meta, init, opt, index, args.allow_overlap)
    if native and args.input_size is None and decode_netnum(args.netnum).backbone not in SMALL_STEMS \
            and int(native) != opt.input_size:
        log.info("%s weights: images resized from %d to their native %d px (Corley et al. 2023, 'resize is all "
                 "you need'); --input_size overrides", pretext, opt.input_size, int(native))
        opt = replace(opt, input_size=int(native))
    expnum = args.expnum if mode.job in ("val", "test") else ckpt.make_expnum(mode.name)
    if args.mp_distributed and torch.cuda.is_available() and (args.nproc or 0) > torch.cuda.device_count():
        raise UserError(f"--nproc {args.nproc} exceeds the {torch.cuda.device_count()} GPU(s) here")
    results = Path(args.results) if args.results else Path("results") / f"{opt.name}.csv"
    guards.check_results_table(results)
    log_file = None
    if trains:                          # the run's name is claimed last, when nothing else can fail
        guards.check_writable_folder(Path(args.ckpt), "--ckpt")
        guards.check_dist_port(args)
        if os.environ.get("RANK", "0") == "0":
            remove_stale_tmp(Path(args.ckpt))
            expnum = ckpt.claim_expnum(Path(args.ckpt), args.netnum, mode.name)
            log_file = ckpt.log_path(Path(args.ckpt), args.netnum, expnum)
    return Job(mode, opt, index, init, init_exp, init_ep, pretext, expnum, results, meta, log_file)


def check_best(meta: dict, path: Path, cepoch: str | None) -> None:
    """``--cepoch best`` only for a checkpoint chosen on the validation slice (older ones read TEST labels)."""
    if str(cepoch).strip() == "best" and meta.get("selected_by") != "val-knn":
        raise UserError(f"{path} was chosen as 'best' by {meta.get('selected_by') or 'kNN accuracy on TEST labels (written before the validation slice)'}, "
                        "not by the kNN monitor on the validation slice; pass a numbered --cepoch (the last epoch) or re-run pretraining")


def main(args: argparse.Namespace) -> None:
    setup_logging()
    job = prepare(args)
    if args.mp_distributed and job.init is not None:
        build_classifier(args, job)      # checkpoint mismatches are user errors, before workers start
    if args.probe:
        probe.run_probe(args, job)
        return
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        main_worker(int(os.environ.get("LOCAL_RANK", 0)), None, args, job)
    elif args.mp_distributed:
        nproc = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
        spawn(main_worker, nproc, (nproc, args, job))
    else:
        main_worker(None, None, args, job)


def build_classifier(args: argparse.Namespace, job: Job) -> nn.Module:
    opt = job.opt
    imagenet = bool(args.ptcp) and job.mode.job == "train"
    model = build_model(args.netnum, opt.n_bands, opt.num_classes, imagenet, opt.rgb_index,
                        weights=args.weights if imagenet else None, input_size=opt.input_size,
                        drop_path=args.drop_path or 0.0, band_groups=job.init_meta.get("band_groups"), bands=opt.bands)
    norm = Normalize(opt.mean, opt.std)           # the pipeline's statistics, std floor included
    if imagenet and opt.rgb_index is not None and model.backbone.arch not in SMALL_STEMS:
        targets = pretrained.imagenet_targets(opt.bands, opt.rgb_index, opt.mean,
                                              getattr(model.backbone, "imagenet_stats", None))
        model.backbone.set_input_adapter(pretrained.adapter_for(targets, norm.mean, norm.std))
    if job.mode.job == "finetune":
        foreign = pretrained.recognise(ckpt.read_checkpoint(job.init, weights_only=True), job.init)
        if foreign is not None:
            pretrained.load_foreign(foreign, model.backbone, opt.bands)
            model.backbone.set_input_adapter(
                pretrained.adapter_for(pretrained.ssl4eo_targets(opt.bands), norm.mean, norm.std))
        else:
            meta = ckpt.load_backbone(job.init, model.backbone)
            log.info("backbone from %s (pretext %s, epoch %s, dataset %s)", job.init, meta.get("pretext"),
                     meta.get("epoch"), meta.get("dataset"))
    classifier = job.init if job.mode.job in ("val", "test") else (Path(args.resume) if args.resume else None)
    if classifier is not None:
        state = ckpt.read_checkpoint(classifier, weights_only=False)
        if "model" not in state:
            raise UserError(f"{classifier} holds a backbone, not a trained classifier; --mode 2x/3x and --resume "
                            "take checkpoints written by --mode 1x/4x")
        saved_net = str((state.get("meta") or {}).get("netnum", args.netnum))
        if saved_net != args.netnum:          # e.g. 000000 (resnet18_small) vs 090000 (resnet18): same layer names
            raise UserError(f"{classifier} is a classifier of --netnum {saved_net} ({decode_netnum(saved_net).backbone}), "
                            f"not {args.netnum} ({decode_netnum(args.netnum).backbone}); pass --netnum {saved_net}")
        if "backbone.input_adapter.scale" in state["model"] and model.backbone.input_adapter is None:
            model.backbone.set_input_adapter(pretrained.InputAdapter.identity(opt.n_bands))  # filled by the load
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise UserError(f"{classifier} does not fit --netnum {args.netnum} with {opt.n_bands} bands and "
                            f"{opt.num_classes} classes ({str(err).splitlines()[0]})") from None
        if args.resume:
            log.info("classifier weights from %s; training continues at epoch %d", classifier, args.sepoch + 1)
    return model


def param_groups(model: nn.Module, hos: int, layer_decay: float | None = None) -> list[dict]:
    """Trainable parameter groups of a protocol; ``lr_scale`` is applied by the schedule.

    ``layer_decay`` (ViTs): MAE's layer-wise lr decay groups (engine/lr_decay.py) for the backbone,
    times 0.2 with ``--hos 1``, and the head at scale 1.
    """
    head = list(model.head.parameters())
    if hos == 9:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return [{"params": head, "lr_scale": 1.0}]
    if layer_decay is not None:
        return param_groups_lrd(model.backbone, layer_decay, 0.2 if hos == 1 else 1.0, model.head)
    back = [p for p in model.backbone.parameters()]
    return [{"params": back, "lr_scale": 0.2 if hos == 1 else 1.0}, {"params": head, "lr_scale": 1.0}]


class ShardSampler(Sampler[int]):
    """Indices ``rank::world`` without padding: in distributed evaluation every image counts once."""

    def __init__(self, n: int, rank: int, world: int):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def main_worker(local_rank: int | None, nproc: int | None, args: argparse.Namespace, job: Job) -> None:
    rt = init_runtime(local_rank, nproc, args)
    if rt.distributed and job.mode.job in ("train", "finetune"):    # torchrun: rank 0 alone claimed the name
        name = [job.expnum]
        dist.broadcast_object_list(name, src=0)
        job.expnum = name[0]
    try:
        for ts in args.ts_list:                   # --ts 5,20: every train scale, every seed
            for seed in range(args.seed, args.seed + args.nseeds):
                run_one(argparse.Namespace(**{**vars(args), "ts": ts}), job, rt, seed)
    finally:
        rt.close()


def run_one(args: argparse.Namespace, job: Job, rt: Runtime, seed: int) -> dict:
    """Train (unless val/test) and evaluate one few-shot draw; returns the metrics."""
    t0 = time.time()
    opt = job.opt
    reseed(seed, 0, rt.rank)
    train = few_shot(labels.fewshot_pool(job.index), args.ts, seed, opt.classes)
    model = build_classifier(args, job).to(rt.device)
    epochs = 0
    if job.mode.job in ("train", "finetune"):
        epochs = args.mepoch
        fit(model, train, args, job, rt, seed)
    # the label rule (engine/labels.py): mode 2x scores the fixed validation slice, every other mode the test split
    eval_set = labels.selection_set(job.index) if job.mode.job == "val" else labels.final_eval_set(job.index)
    y_true, y_pred = evaluate(model, eval_set, args, opt, rt)
    if not rt.is_main:
        return {}
    metrics = report(y_true, y_pred, args, job, seed, len(train), len(eval_set), epochs,
                     args.lr or opt.lr, time.time() - t0, hos=str(args.hos), probe="", eval_set=eval_set)
    if job.mode.job in ("train", "finetune"):
        path = ckpt.ckpt_path(Path(args.ckpt), args.netnum, job.expnum + f"_ts{args.ts:g}_s{seed}", epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_save({"model": model.state_dict(), "meta": {"netnum": args.netnum, "dataset": opt.name,
                          "ts": args.ts, "seed": seed, "pretrain": job.pretext, "input_size": opt.input_size,
                          **({"provenance": job.init_meta["provenance"]} if "provenance" in job.init_meta else {}),
                          **({"band_groups": job.init_meta["band_groups"]} if "band_groups" in job.init_meta else {}),
                          "metrics": {k: metrics[k] for k in ("OA", "AA", "kappa", "macro_F1")}}}, path)
        log.info("classifier saved to %s", path)
    return metrics


def fit(model: nn.Module, train: list[Sample], args: argparse.Namespace, job: Job, rt: Runtime, seed: int) -> None:
    """Train ``model`` on the few-shot set under protocol ``--hos``."""
    opt = job.opt
    groups = param_groups(model, args.hos, args.layer_decay)
    net = model
    if rt.distributed and args.sync_bn and args.hos != 9:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(rt.device)
        net = model
    if rt.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
    tf = lambda o: build_plan(TRAIN_PLAN, o.input_size, o.mean, o.std, o.rgb_index)  # noqa: E731
    ds = make_dataset(opt, train, tf, cache=args.pin_memory)
    per_bs = max(1, min((args.bs or opt.batch_size) // rt.world, len(train) // rt.world or 1))
    gen = torch.Generator().manual_seed(seed)
    sampler = (DistributedSampler(ds, rt.world, rt.rank, shuffle=True, seed=seed) if rt.distributed
               else RandomSampler(ds, generator=gen))
    # a trailing batch of ONE image would break BatchNorm in training mode: drop only that
    lone = len(sampler) > 1 and len(sampler) % per_bs == 1
    loader = DataLoader(ds, batch_size=per_bs, sampler=sampler, num_workers=args.workers, drop_last=lone,
                        worker_init_fn=seed_worker, generator=gen, pin_memory=rt.device.type == "cuda")
    lr = args.lr or opt.lr
    optimizer = build_optimizer(args.optimizer, groups, lr, args.momentum, args.wd)
    schedule = LRSchedule(args.lr_policy, lr, args.mepoch, len(loader), args.warmup, args.milestones, args.lr_decay)
    criterion = nn.CrossEntropyLoss()
    frozen = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()} if args.hos == 9 else None
    bar = use_tqdm(rt, args)
    epoch_log = EpochLog(job.log, resume=True, key=("seed",)) if rt.is_main and job.log is not None else None
    epochs = range(args.sepoch, args.mepoch)       # --sepoch: epochs already done (with --resume)
    if bar:
        from tqdm import tqdm
        epochs = tqdm(epochs, desc=f"fine-tune seed {seed}", leave=False)
    for epoch in epochs:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        gen.manual_seed(seed * 1_000_003 + epoch)
        net.train()
        if args.hos == 9:
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
        if frozen is not None and epoch == args.sepoch:
            check_frozen(model.backbone, frozen)
        if epoch_log is not None:
            epoch_log.add(epoch + 1, {"seed": seed, "loss": total / max(n, 1), "lr": optimizer.param_groups[0]["lr"]})
        if rt.is_main and ((epoch + 1) % max(1, args.mepoch // 5) == 0 or epoch + 1 == args.mepoch):
            log.info("seed %d epoch %d/%d  loss %.4f", seed, epoch + 1, args.mepoch, total / max(n, 1))


def check_frozen(backbone: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Linear probe guard: every backbone parameter AND buffer must be unchanged."""
    changed = [k for k, v in backbone.state_dict().items() if not torch.equal(v.detach().cpu(), before[k].cpu())]
    if changed:
        raise RuntimeError(f"linear probe (--hos 9) changed {len(changed)} backbone tensor(s), e.g. "
                           f"{', '.join(changed[:3])}: the backbone is not frozen")
    log.info("linear probe check passed: no backbone tensor changed in epoch 1")


@torch.no_grad()
def evaluate(model: nn.Module, samples: list[Sample], args: argparse.Namespace, opt: DatasetOpt,
             rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """Predictions for ``samples`` (each exactly once, also when distributed); ``--tta`` averages 8 views."""
    ds = make_dataset(opt, samples, lambda o: plain(o.input_size, o.mean, o.std))
    sampler = ShardSampler(len(ds), rt.rank, rt.world)
    loader = DataLoader(ds, batch_size=128, sampler=sampler, num_workers=args.workers)
    model.eval()
    idx_all, pred_all = [], []
    for x, _, idx in loader:
        x = move_to(x, rt.device, rt.channels_last)
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            if args.tta:
                prob = torch.stack([model(v).float().softmax(1) for v in tta_views(x)]).mean(0)
            else:
                prob = model(x).float().softmax(1)
        idx_all.append(idx)
        pred_all.append(prob.argmax(1).cpu())
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
    order = torch.argsort(idx)
    y_true = np.array([samples[i].label for i in idx[order].tolist()])
    return y_true, pred[order].numpy()


def report(y_true: np.ndarray, y_pred: np.ndarray, args: argparse.Namespace, job: Job, seed: int,
           n_train: int, n_test: int, epochs: int, lr: float, seconds: float, hos: str, probe: str, *,
           eval_set: list[Sample] | None = None, probe_param: str = "", select_on: str = "",
           selection_labels: str = "") -> dict:
    """Print the metrics, save the per-image predictions and append one row to the results table.

    ``eval_set`` lists the images ``y_true``/``y_pred`` belong to, in order (default: the
    test split). Probes pass what they chose and on which labels: ``probe_param`` (e.g.
    ``C=0.1``), ``select_on`` (``shots`` or ``val``) and ``selection_labels`` (how many
    labels the choice read).
    """
    opt = job.opt
    samples = job.index.test if eval_set is None else eval_set
    if not (len(samples) == len(y_true) == len(y_pred) == n_test):
        raise RuntimeError(f"report: {len(samples)} images, {len(y_true)} labels, {len(y_pred)} predictions, "
                           f"n_test {n_test}")
    raw = classification_metrics(y_true, y_pred, opt.num_classes, opt.classes)
    m = {"OA": 100 * raw["OA"], "AA": 100 * raw["AA"], "kappa": raw["kappa"], "macro_F1": 100 * raw["macro_f1"],
         "per_class_acc": [100 * a for a in raw["per_class_acc"]], "confusion": raw["confusion"]}
    log.info("%s ts=%g seed=%d %s: OA %.2f  AA %.2f  kappa %.4f  macro-F1 %.2f  (%d train / %d test)",
             opt.name, args.ts, seed, probe or f"hos {hos}", m["OA"], m["AA"], m["kappa"], m["macro_F1"], n_train, n_test)
    log.info("per-class accuracy: %s", ", ".join(f"{c} {a:.1f}" for c, a in zip(opt.classes, m["per_class_acc"])))
    log.info("confusion matrix (rows true, columns predicted):\n%s", format_confusion(m["confusion"], opt.classes))
    predictions = save_predictions(
        job.results, f"{opt.name}_{job.mode.code}_{probe or 'hos' + hos}_ts{args.ts:g}_s{seed}",
        [Path(s.path).relative_to(opt.root).as_posix() for s in samples],
        [opt.classes[int(t)] for t in y_true], [opt.classes[int(p)] for p in y_pred])
    trained = job.mode.job in ("train", "finetune") and not probe
    meta = job.init_meta
    if job.mode.job == "train":
        pretrain_datasets, selected_by = ("imagenet" if args.ptcp else ""), ""
    else:
        pretrain_datasets = provenance.pretrain_datasets(meta)
        selected_by = str(meta.get("selected_by") or ("" if job.init_epoch == "" else "epoch"))
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "code_version": code_version(), "ds": opt.name,
           "split_version": getattr(job.index, "split_version", "unknown"),
           "ts": args.ts, "seed": seed, "mode": job.mode.code, "netnum": args.netnum, "pretext": job.pretext,
           "pretrain_expnum": job.init_expnum if job.mode.job != "train" else ("imagenet" if args.ptcp else "random"),
           "pretrain_epoch": job.init_epoch, "pretrain_datasets": pretrain_datasets, "ckpt_selected_by": selected_by,
           "hos": hos, "probe": probe, "probe_param": probe_param, "select_on": select_on,
           "selection_labels": selection_labels, "dtype": opt.dtype, "bands": " ".join(opt.bands),
           "input_size": opt.input_size, "tta": int(bool(args.tta)),
           "bs": (args.bs or opt.batch_size) if trained else "", "optimizer": args.optimizer if trained else "",
           "lr": lr if trained else "", "wd": args.wd if trained else "", "epochs": epochs,
           "aug": TRAIN_PLAN if trained else "", "allow_overlap": int(bool(getattr(args, "allow_overlap", False))),
           "OA": round(m["OA"], 4), "AA": round(m["AA"], 4), "kappa": round(m["kappa"], 5),
           "macro_F1": round(m["macro_F1"], 4), "n_train": n_train, "n_test": n_test,
           "seconds": round(seconds, 1), "per_class": json.dumps([round(a, 2) for a in m["per_class_acc"]]),
           "predictions": predictions}
    append_result(job.results, row)
    if args.vis:
        png = job.results.parent / "figures" / f"confusion_{opt.name}_{job.mode.code}_{probe or 'hos' + hos}_ts{args.ts:g}_s{seed}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        save_confusion_png(m["confusion"], opt.classes, png)
    return m


def run(argv: list[str] | None, parser: argparse.ArgumentParser) -> None:
    main(parser.parse_args(argv))
