"""The evaluation job: main_cls.py's flags, resolved and checked ONCE, before any training or probing.

``add_args`` defines the flags of main_cls.py (training, evaluation, probes); :func:`resolve`
decodes the codes, finds the data and the checkpoint, checks the checkpoint's provenance against
the test split, claims the run's name last, and returns an :class:`EvalJob`: all that
engine/finetune.py and engine/probe.py receive. Nothing below re-reads or re-checks a flag.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from config import baselines
from config.codes import Mode, decode_mode, decode_netnum
from config.atomic import remove_stale_tmp
from config.dataset_cfg import RASTER_EXTENSIONS, DatasetOpt
from config.errors import UserError
from config.limits import check_input_memory, check_input_size
from datasets.fingerprint import file_sha256
from datasets.folder import prepare_dataset
from datasets.index import Index
from datasets.options import get_opt
from engine import checkpoint as ckpt
from engine import guards, labels, provenance
from engine.cli import base_parser, check_process_flags
from engine.identity import flag_columns, flag_values
from engine.optim import OptimSpec
from engine.runtime import Procs
from engine.schedules import ScheduleSpec
from models import pretrained
from models.backbones import SMALL_STEMS

log = logging.getLogger(__name__)
EVAL_BATCH = 128            # images per forward pass when evaluating or extracting features
PROTOCOLS = {0: "all layers", 1: "backbone at lr/5", 9: "linear probe (frozen backbone)"}
BN_POLICIES = ("as-trained", "reestimated")


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of main_cls.py on top of engine.cli.base_parser."""
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
    g.add_argument("--init-seed", dest="init_seed", type=int, default=None,
                   help="random init (--mode 1x without --ptcp): seed of the backbone's initial weights, apart from "
                        "the draw's --seed (default: the draw's seed; a --probe sweep uses the first draw's); the row "
                        "records it as pretrain_seed, the level a summary pairs with a pretraining seed")
    g.add_argument("--nseeds", type=int, default=1, help="repeat the few-shot draw for seeds --seed .. --seed+N-1 (one row each, for every --ts)")
    g.add_argument("--select-on", dest="select_on", choices=("shots", "val"), default=None,
                   help="--probe logreg: choose C by cross-validation on the shots (default; the row used only "
                        "its shots' labels) or on the validation slice")
    g.add_argument("--knn-k", dest="knn_k", type=int, default=None,
                   help="--probe knn: neighbours (default 20; clamped to the number of shots, with a warning)")
    g.add_argument("--knn-vote", dest="knn_vote", choices=("weighted", "majority"), default=None,
                   help="--probe knn: votes weighted by exp(cosine / 0.07) (default) or one vote per neighbour")
    g.add_argument("--bn-stats", dest="bn_stats", choices=BN_POLICIES, default="as-trained",
                   help="frozen backbones (--probe, --hos 9): BatchNorm statistics as the checkpoint has them "
                        "(random init: none) or re-estimated on plain views of the training images, so every "
                        "backbone is compared with the same statistics policy (the row records it)")
    g.add_argument("--results", help="CSV results table (default results/<ds>.csv)")
    g.add_argument("--allow-overlap", dest="allow_overlap", action="store_true",
                   help="evaluate a checkpoint whose pretraining images include test scenes of --ds (refused otherwise; the row records it)")
    p.set_defaults(_identity=flag_columns(p))      # every flag that can change a row's number (engine/identity.py)
    return p


@dataclass
class EvalJob:
    """Everything main_cls.py's processes need, resolved and checked by :func:`resolve`."""

    mode: Mode
    opt: DatasetOpt
    index: Index
    netnum: str
    init: Path | None          # backbone (1x/4x) or classifier (2x/3x) checkpoint
    init_expnum: str
    init_epoch: str
    pretext: str               # what the backbone learnt from: simclr, ..., random, imagenet
    expnum: str
    results: Path
    ts_list: tuple[float, ...]
    seeds: tuple[int, ...]     # --seed .. --seed + --nseeds - 1
    hos: int
    probe: str | None          # logreg | knn | None (training)
    select_on: str | None      # logreg: shots | val
    knn_k: int | None
    knn_vote: str | None
    bn_stats: str              # frozen backbones: as-trained | reestimated
    init_seed: int | None      # random init: the seed of the initial weights (None: the draw's)
    layer_decay: float | None  # ViT fine-tuning: layer-wise lr decay (None: CNNs, frozen backbones)
    drop_path: float           # ViT fine-tuning: stochastic depth (0: off)
    tta: bool
    imagenet: bool             # --mode 1x with --ptcp 1 / --weights
    weights: Path | None       # --weights file
    resume: Path | None        # a classifier to continue training
    sepoch: int
    bs: int                    # total batch of fine-tuning
    optim: OptimSpec
    schedule: ScheduleSpec
    workers: int
    pin_memory: bool
    sync_bn: bool
    vis: bool
    allow_overlap: bool
    ckpt_dir: Path
    procs: Procs
    init_meta: dict = field(default_factory=dict)   # the checkpoint's meta (provenance, selected_by)
    flags: dict = field(default_factory=dict)       # row column -> resolved value of every other identity flag
    log: Path | None = None    # per-epoch fine-tuning log, the file that claims ``expnum`` (1x/4x)

    @property
    def trains(self) -> bool:
        """Whether this job trains a classifier (1x/4x without --probe)."""
        return self.mode.job in ("train", "finetune") and not self.probe


def _check_probe_flags(args: argparse.Namespace) -> None:
    """Probe flags that would go unused fail; defaults are filled in for the probe that uses them."""
    given = {"--select-on": args.select_on, "--knn-k": args.knn_k, "--knn-vote": args.knn_vote}
    owners = {"--select-on": "logreg", "--knn-k": "knn", "--knn-vote": "knn"}
    for flag, value in given.items():
        if value is not None and args.probe != owners[flag]:
            raise UserError(f"{flag} belongs to --probe {owners[flag]}"
                            + (f", not --probe {args.probe}" if args.probe else "; add it or drop the flag"))
    if args.probe == "logreg":
        args.select_on = args.select_on or "shots"
    if args.probe == "knn":
        args.knn_k = 20 if args.knn_k is None else args.knn_k
        args.knn_vote = args.knn_vote or "weighted"
        if args.knn_k < 1:
            raise UserError(f"--knn-k {args.knn_k} must be >= 1 (default 20)")


def _check_flags(args: argparse.Namespace, mode: Mode) -> None:
    """Flag combinations that cannot work, before any data is read."""
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
    _check_probe_flags(args)
    if args.init_seed is not None:
        if mode.job != "train" or args.ptcp or args.weights:
            raise UserError(f"--init-seed {args.init_seed} seeds a random initialisation (--mode 1x without --ptcp/"
                            "--weights); these weights come from a file: drop it")
        if args.init_seed < 0:
            raise UserError(f"--init-seed {args.init_seed} must be >= 0")
    if (args.lars_eta is not None or args.lars_clip is not None) and (
            args.probe or str(args.optimizer).lower() != "lars" or mode.job not in ("train", "finetune")):
        raise UserError("--lars-eta/--lars-clip set LARS's trust ratio when a classifier is trained: they need "
                        "--optimizer lars and --mode 1x/4x without --probe; drop them")
    if args.bn_stats != "as-trained" and not (args.probe or (args.hos == 9 and mode.job in ("train", "finetune"))):
        raise UserError(f"--bn-stats {args.bn_stats} sets the statistics of a FROZEN backbone (--probe, or --hos 9 "
                        "in --mode 1x/4x); fine-tuning learns them and a saved classifier keeps its own: drop it")
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


def resolve(args: argparse.Namespace) -> EvalJob:
    """Decode codes, find the data and the checkpoint, check every user input once."""
    if args.mode is None:
        raise UserError("--mode is required: 1x train, 2x val, 3x test, 4x finetune (see --list-codes)")
    mode = decode_mode(args.mode, script="cls")
    _check_flags(args, mode)
    opt, index = prepare_dataset(get_opt(args.ds, args))
    if not opt.labelled:
        held = sorted({p.parent.name for p in Path(opt.root).glob("*/*") if p.suffix.lower() in RASTER_EXTENSIONS})
        if len(held) == 1 and not any(p.suffix.lower() in RASTER_EXTENSIONS for p in Path(opt.root).glob("*")):
            raise UserError(f"--ds {args.ds} holds one class folder ({held[0]}); classification needs at least two "
                            "classes: add the other class folders beside it")
        raise UserError(f"--ds {args.ds} has no class folders; main_cls.py needs labelled data (class-per-folder)")
    if opt.parts:
        raise UserError(f"--ds {args.ds}: pooled datasets are for pretraining only; evaluate on one dataset")
    check_input_size(args.netnum, opt.input_size)
    trains = mode.job in ("train", "finetune") and not args.probe
    guards.resolve_vit_finetune(args, args.netnum, trains)
    world = (int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ
             else (args.nproc or max(1, torch.cuda.device_count())) * args.world_size if args.mp_distributed else 1)
    check_input_memory(opt.input_size, opt.n_bands, max(min(EVAL_BATCH, len(index.train) + len(index.test)),
                                                        (args.bs or opt.batch_size) // world if trains else 1))
    if trains and args.hos != 9 and (args.bs or opt.batch_size) // world < 2:
        raise UserError(f"--bs {args.bs or opt.batch_size} gives {(args.bs or opt.batch_size) // world} image(s) to each "
                        f"of the {world} process(es); BatchNorm needs at least 2 per process: use --bs {2 * world} or more")
    if mode.job != "val":
        guards.check_split_files(index.test, opt, "test split")
    labels.check_classes_covered(index, "val" if mode.job == "val" else "test")
    init, init_exp, init_ep = _checkpoint(args, mode)
    if args.probe and mode.job in ("val", "test"):
        raise UserError(f"--probe works with --mode 1x (random/ImageNet features) or 4x (pretrained features), not {mode.code}")
    meta, pretext, native = _provenance(args, mode, opt, index, init)
    ts_list, seeds = tuple(args.ts_list), tuple(range(args.seed, args.seed + args.nseeds))
    if mode.job in ("val", "test"):
        ts_list, seeds = _classifier_draw(args, meta, init, opt, index, mode)
    if args.encoder_cp and not init_ep and meta.get("epoch") is not None:
        init_ep = str(meta["epoch"])          # the row names the epoch of the file, as with --cepoch
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
    lr = args.lr or opt.lr
    optim = OptimSpec(args.optimizer, lr, args.momentum, args.wd, args.lars_eta, args.lars_clip, beta2=args.beta2)
    schedule = ScheduleSpec(args.lr_policy, args.mepoch, args.warmup, tuple(args.milestones), args.lr_decay)
    if trains:                         # optimiser and schedule flags fail here, not after the features
        optim.build([torch.zeros(1, requires_grad=True)])
        schedule.build(lr, 1)
    flags = flag_values(args, getattr(args, "_identity", None) or flag_columns(add_args(base_parser("", "cls"))))
    init_sha = (meta.get("init_sha", "") if mode.job in ("val", "test") else file_sha256(init)[:16] if init
                else file_sha256(Path(args.weights))[:16] if args.weights else "")
    flags.update(amp=int(bool(args.amp)), loss="CrossEntropyLoss", processes=world,
                 init_sha=init_sha, resumed=f"{file_sha256(Path(args.resume))[:16]}@{args.sepoch}" if args.resume else "")
    log_file = None
    if trains:                          # the run's name is claimed last, when nothing else can fail
        guards.check_writable_folder(Path(args.ckpt), "--ckpt")
        guards.check_dist_port(args)
        if os.environ.get("RANK", "0") == "0":
            remove_stale_tmp(Path(args.ckpt))
            expnum = ckpt.claim_expnum(Path(args.ckpt), args.netnum, mode.name)
            log_file = ckpt.log_path(Path(args.ckpt), args.netnum, expnum)
    return EvalJob(mode=mode, opt=opt, index=index, netnum=args.netnum, init=init, init_expnum=init_exp,
                   init_epoch=init_ep, pretext=pretext, expnum=expnum, results=results, ts_list=ts_list,
                   seeds=seeds, hos=args.hos, probe=args.probe,
                   select_on=args.select_on, knn_k=args.knn_k, knn_vote=args.knn_vote, bn_stats=args.bn_stats, init_seed=args.init_seed,
                   layer_decay=args.layer_decay, drop_path=args.drop_path or 0.0, tta=bool(args.tta),
                   imagenet=bool(args.ptcp) and mode.job == "train",
                   weights=Path(args.weights) if args.weights else None,
                   resume=Path(args.resume) if args.resume else None, sepoch=args.sepoch,
                   bs=args.bs or opt.batch_size, optim=optim, schedule=schedule, workers=args.workers,
                   pin_memory=bool(args.pin_memory), sync_bn=bool(args.sync_bn), vis=bool(args.vis),
                   allow_overlap=bool(args.allow_overlap), ckpt_dir=Path(args.ckpt), procs=Procs.from_args(args),
                   init_meta=meta, flags=flags, log=log_file)


def _checkpoint(args: argparse.Namespace, mode: Mode) -> tuple[Path | None, str, str]:
    """The checkpoint a 2x/3x/4x job reads, with the expnum and epoch the row names."""
    if mode.job not in ("finetune", "val", "test"):
        if args.expnum or args.cepoch is not None:
            raise UserError(f"--mode {mode.code} trains from {'ImageNet' if args.ptcp else 'random'} initialisation, so "
                            "--expnum/--cepoch would go unused: drop them, or use --mode 41 to fine-tune that checkpoint")
        return None, "", ""
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
    return init, init_exp, init_ep


def _classifier_draw(args: argparse.Namespace, meta: dict, init: Path, opt: DatasetOpt, index: Index,
                     mode: Mode) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """--mode 2x/3x: the classifier must be one of this dataset (its classes) and split (its shots must not be
    what it is scored on); the row takes the classifier's own draw, its train scale and seed."""
    name, classes = meta.get("dataset"), meta.get("classes")
    if (classes is not None and list(classes) != list(opt.classes)) or (classes is None and name and name != opt.name):
        listed = f" ({', '.join(list(classes)[:4])}{', ...' if len(classes) > 4 else ''})" if classes else ""
        raise UserError(f"{init} is a classifier of --ds {name}{listed}, not of --ds {opt.name}; evaluate it with "
                        f"--ds {name}")
    scored = index.val if mode.job == "val" else index.test
    leaked = sorted(set(meta.get("shots", [])) & {s.key for s in scored})
    if meta.get("split_version") is None:
        log.warning("%s records no split version (written before it was): cannot check that its shots are not "
                    "among the images it is scored on", init)
    elif meta["split_version"] != index.split_version or leaked:
        raise UserError(f"{init} was trained on split {meta['split_version']} of --ds {name}, this run's split is "
                        f"{index.split_version}" + (f" ({len(leaked)} of its shots are scored here)" if leaked else "")
                        + ": pass the --split-file it was trained with, or train a classifier on this split")
    if meta.get("ts") is None or meta.get("seed") is None:
        return tuple(args.ts_list), (args.seed,)
    ts, seed = float(meta["ts"]), int(meta["seed"])
    if tuple(args.ts_list) != (1.0,) and float(args.ts_list[0]) != ts:
        raise UserError(f"{init} was trained at --ts {ts:g}, not {args.ts_list[0]:g}; drop --ts (the row takes the "
                        f"classifier's) or pass --ts {ts:g}")
    if args.seed not in (0, seed) or args.nseeds != 1:
        raise UserError(f"{init} was trained with --seed {seed} (one draw); drop --seed/--nseeds (the row takes the "
                        f"classifier's) or pass --seed {seed}")
    return (ts,), (seed,)


def _provenance(args: argparse.Namespace, mode: Mode, opt: DatasetOpt, index: Index,
                init: Path | None) -> tuple[dict, str, int | None]:
    """The checkpoint's meta, what the backbone learnt from, and the input size its weights want;
    a checkpoint that saw test scenes (or was chosen on test labels) is refused here."""
    if mode.job == "train":
        if args.allow_overlap:
            raise UserError(f"--allow-overlap lets a pretrained checkpoint see test scenes; --mode {mode.code} "
                            "starts from random/ImageNet weights: drop it")
        return {}, "imagenet" if args.ptcp else "random", baselines.IMAGENET_INPUT_SIZE if args.ptcp else None
    assert init is not None
    if mode.job == "finetune" and (foreign := pretrained.recognise(ckpt.read_checkpoint(
            init, "--encoder_cp file" if args.encoder_cp else "checkpoint", weights_only=True,
            hint="pass a backbone <netnum>_<expnum>_<epoch>.pth written by pretraining, or SSL4EO-S12/TorchGeo "
                 "weights"), init)) is not None:
        if args.allow_overlap:
            raise UserError(f"{init} holds external weights ({foreign.meta['dataset']}) without a scene list, so there "
                            "is no overlap check to override: drop --allow-overlap")
        log.info("%s: external %s weights pretrained on %s; whether those scenes overlap the %s test split "
                 "cannot be checked", init, foreign.pretext, foreign.meta["dataset"], opt.name)
        return foreign.meta, foreign.pretext, baselines.SSL4EO_INPUT_SIZE
    meta = dict(ckpt.read_checkpoint(init, weights_only=False).get("meta") or {})
    pretext = str(meta.get("pretext", meta.get("pretrain", "")))
    native = meta.get("input_size") if mode.job in ("val", "test") else None   # a classifier keeps its size
    meta["selected_by"] = labels.checkpoint_choice(meta, init)      # refuses one chosen on TEST labels
    external = str(meta.get("pretrain", "")).startswith("ssl4eo-")
    if mode.job in ("val", "test") and (meta.get("pretrain") in ("random", "imagenet") or external):
        if args.allow_overlap:
            raise UserError(f"{init} was trained from {meta['pretrain']} weights, which carry no list of "
                            f"{opt.name} scenes to check: drop --allow-overlap")
    else:
        provenance.check_checkpoint(meta, init, opt, index, args.allow_overlap)
    return meta, pretext, native
