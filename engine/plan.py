"""The pretraining plan: main_cls_ss_train.py's flags, resolved and checked ONCE, in the launching process.

``add_args`` defines the flags; :func:`resolve` decodes the codes, loads the dataset index,
fills every default (the pretext's own temperature, projector size, loss, views), checks every
value a user can get wrong and claims the run's name, so a mistake ends as one sentence and
exit 2 before any worker starts. What it returns, a :class:`Plan`, is all a worker receives:
the engine below never sees the parsed namespace and never checks a flag again.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import models.pretext as pretexts
from config.codes import PRETEXTS, Mode, decode_mode, decode_netnum
from config.atomic import remove_stale_tmp
from config.ckptio import describe_file
from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from config.limits import check_input_memory, check_input_size
from datasets.folder import prepare_dataset
from datasets.index import Index, Sample, few_shot
from datasets.options import get_opt
from datasets.views import crop_scale_of
from engine import checkpoint as ckpt
from engine import guards, labels, provenance, recipes
from engine.cli import check_process_flags
from engine.optim import OptimSpec
from engine.pretrain_flags import check_lr_selection, parse_knn_freq
from engine.results import code_version
from engine.runtime import Procs
from engine.schedules import ScheduleSpec
from engine.vis import band_triplet, check_vis_flags
from models import build_backbone

log = logging.getLogger(__name__)

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


def resolve_vit_training_flags(args: argparse.Namespace) -> None:
    """``--freeze-patch-embed`` (recipes set it for ViT codes only, so a value on a CNN code is the user's:
    refused) and ``--clip-grad`` (>= 0; None: off)."""
    code = decode_netnum(args.netnum)
    if args.freeze_patch_embed is not None and code.vit is None:
        raise UserError(f"--{'' if args.freeze_patch_embed else 'no-'}freeze-patch-embed is about a ViT's patch "
                        f"embedding (MoCo v3's random patch projection), and --netnum {args.netnum} is {code.backbone}: "
                        "drop it or use a ViT code (1x0000)")
    if args.clip_grad is None:
        args.clip_grad = 0.0
    if not (math.isfinite(args.clip_grad) and args.clip_grad >= 0):
        raise UserError(f"--clip-grad {args.clip_grad} must be a norm >= 0 (0: off); DINO clips at 3")


@dataclass
class Plan:
    """Everything a pretraining process needs, resolved and checked by :func:`resolve`."""

    mode: Mode
    method: argparse.Namespace       # the pretext's settings: every resolved flag (its own, recipe-filled, common)
    opt: DatasetOpt
    index: Index
    train: list[Sample]
    netnum: str
    imagenet_init: bool              # --ptcp 1
    seed: int
    epochs: int                      # --mepoch
    start_epoch: int
    global_bs: int
    optim: OptimSpec
    schedule: ScheduleSpec
    procs: Procs
    workers: int
    pin_memory: bool
    cache_size: int | None
    gpu_aug: bool
    aug: int                         # the --aug code of the views (the pretext's default when not given)
    aug_p: str
    sync_bn: str                     # "on" (--sync-bn), "off" (--no-sync-bn) or "auto"
    knn_freq: int | str
    ckpt_freq: int
    vis: bool
    vis_every: int                   # epochs between --vis figures (and the first and the last)
    vis_bands: tuple[int, int, int] | None   # --vis-bands positions shown as R, G, B (None: true colour)
    ckpt_dir: Path
    expnum: str                      # "" with --resume: the state file names the run
    init_from: Path | None           # --expnum/--cepoch: a backbone to start from
    resume: Path | None              # --resume: a training state
    record: dict[str, Any]           # the resolved flags, written into every checkpoint's meta["args"]
    provenance: dict[str, Any]       # what the checkpoints saw: this run's images and every earlier stage's
    data: dict[str, Any]             # this run's training images, for a later --resume to compare
    code_version: str                # git describe of the code (``-dirty`` with uncommitted changes)
    freeze_patch_embed: bool = False  # ViTs: the patch embedding takes no gradient (MoCo v3's random patch projection)
    clip_grad: float = 0.0           # per-tensor gradient-norm cap after backward (DINO's clip_gradients; 0: off)

    @property
    def module(self):
        """The pretext module (looked up by name: modules do not travel to spawned processes)."""
        return pretexts.load(self.mode)


def resolve(args: argparse.Namespace) -> Plan:
    """Decode codes, load the dataset index, check every user input once; claim the run's name last
    (not with ``--dry-run``, which writes nothing)."""
    mode = decode_mode(args.mode if args.mode is not None else 910, script="pretrain")
    check_process_flags(args)
    guards.check_values(args)
    guards.check_pretrain_values(args)
    args.knn_freq = knn_freq = parse_knn_freq(args.knn_freq)
    decode_netnum(args.netnum)
    module = pretexts.load(mode)
    guards.check_pretext_backbone(args.netnum, mode, module)
    if (args.aug is not None or args.aug_p is not None or args.crop_scale is not None) \
            and not getattr(module, "USES_AUG", False):
        raise UserError(f"--aug/--aug_p/--crop-scale choose SimCLR's two views; --mode {mode.code} ({mode.pretext}) "
                        "makes its own views: drop them")
    for dest, (owners, default) in getattr(args, "_pretext_flags", {}).items():
        if mode.pretext not in owners and getattr(args, dest, default) != default:
            flag = "--" + dest.replace("_", "-")
            codes = "/".join(str(c) for c, (n, _) in PRETEXTS.items() if n in owners)
            raise UserError(f"{flag} belongs to --mode {codes} ({', '.join(owners)}), not {mode.code} "
                            f"({mode.pretext}): drop it")
    recipes.resolve(args, module)             # every setting the user did not give, from --recipe
    args.loss = args.loss or module.LOSSES[0]
    if args.loss not in module.LOSSES:
        raise UserError(f"--loss {args.loss} does not fit --mode {mode.code} ({mode.pretext}); use {module.LOSSES[0]}")
    resolve_head_flags(args, mode, module)
    resolve_vit_training_flags(args)
    if hasattr(module, "check_args"):
        module.check_args(args)
    if args.cache_size is not None and not args.pin_memory:
        raise UserError("--cache-size sets the side of the --pin-memory cache; add --pin-memory or drop it")
    if args.sync_bn and args.no_sync_bn:
        raise UserError("--sync-bn and --no-sync-bn contradict each other; keep one")
    if args.sync_bn and not torch.cuda.is_available():
        raise UserError("--sync-bn needs GPUs (SyncBatchNorm has no CPU kernel); drop it on CPU")
    opt, index = prepare_dataset(get_opt(args.ds, args))
    check_input_size(args.netnum, opt.input_size)
    check_input_memory(opt.input_size, opt.n_bands, 2 * max(1, (args.bs or opt.batch_size) // planned_world_size(args)))
    module.make_transform(args, opt.parts[0] if opt.parts else opt)   # validates --aug / --aug_p
    if args.cache_size is not None and args.cache_size < opt.input_size:
        raise UserError(f"--cache-size {args.cache_size} is below the input size {opt.input_size}: every view would be "
                        f"upsampled; use at least {opt.input_size}")
    check_vis_flags(args, opt)
    args.gpu_aug = gpu_aug = resolve_gpu_aug(args, module, opt)
    train = index.train if args.ts == 1 else few_shot(index.train, args.ts, args.seed, index.classes)
    args.bs = bs = args.bs or opt.batch_size          # recorded resolved, as --lr is (rows read meta["args"])
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
    untuned = copy.copy(args)
    untuned.lr = None
    recipes.resolve_lr(args, bs, opt.lr)
    check_lr_selection(args.lr_selection, args.lr, lambda: recipes.resolve_lr(untuned, bs, opt.lr))
    optim = OptimSpec(args.optimizer, args.lr, args.momentum, args.wd, args.lars_eta, args.lars_clip,
                      args.exclude_bias_norm, args.bias_lr_scale, args.beta2)
    schedule = ScheduleSpec(args.lr_policy, args.mepoch, args.warmup, tuple(args.milestones), args.lr_decay,
                            args.wd_end)
    # optimiser and schedule flags fail here, in the launching process, not inside a worker
    optim.build([torch.zeros(1, requires_grad=True)])
    schedule.build(args.lr, 1)
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
    prov = provenance.provenance(opt, index, train)
    data = {"netnum": args.netnum, "mode": mode.code, "ds": opt.name, "split_version": index.split_version, "split_file": str(opt.split_file or ""),
            "ts": args.ts, "seed": args.seed, "n_train": len(train), "train_sha": prov["scene_keys_sha"],
            "digests_sha": prov["scene_digests_sha"]}
    if args.resume:
        prov = resumed_provenance(Path(args.resume), args.mepoch, data, prov)
    elif init_from is not None:        # a new run starting from --expnum's checkpoint: never overwrite that run's files
        expnum = None
        meta = ckpt.read_checkpoint(init_from, "checkpoint", weights_only=True).get("meta") or {}
        labels.checkpoint_choice(meta, init_from)
        prov = provenance.merge(meta.get("provenance"), prov, str(init_from))
    if args.overwrite and not expnum:
        raise UserError("--overwrite replaces the run --expnum names" + (", and --resume/--cepoch do not write under "
                        "--expnum" if args.resume or init_from else "") + "; give --expnum E to replace run E, or drop --overwrite")
    if init_from is not None and args.mp_distributed:
        backbone, _ = build_backbone(args.netnum, opt.n_bands, False, opt.rgb_index, input_size=opt.input_size)
        ckpt.load_backbone(init_from, backbone)        # a mismatch is a user error, before workers start
    guards.check_writable_folder(ckpt_dir, "--ckpt")
    guards.check_dist_port(args)
    method = argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith("_")})
    record = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    return Plan(mode=mode, method=method, opt=opt, index=index, train=train, provenance=prov, data=data,
                code_version=code_version(), netnum=args.netnum,
                imagenet_init=bool(args.ptcp), seed=args.seed, epochs=args.mepoch, start_epoch=start, global_bs=bs,
                optim=optim, schedule=schedule, procs=Procs.from_args(args), workers=args.workers,
                pin_memory=bool(args.pin_memory), cache_size=args.cache_size, gpu_aug=gpu_aug,
                aug=aug_code(args, module), aug_p=args.aug_p or "S5",
                sync_bn="on" if args.sync_bn else "off" if args.no_sync_bn else "auto", knn_freq=knn_freq,
                ckpt_freq=args.ckpt_freq, vis=bool(args.vis),
                vis_every=args.vis_every or max(1, args.mepoch // 10), vis_bands=band_triplet(args.vis_bands, opt),
                ckpt_dir=ckpt_dir,
                expnum="" if args.dry_run else claim_run_name(args, mode, ckpt_dir, expnum), init_from=init_from,
                resume=Path(args.resume) if args.resume else None, record=record,
                freeze_patch_embed=bool(args.freeze_patch_embed), clip_grad=args.clip_grad)


def claim_run_name(args: argparse.Namespace, mode: Mode, ckpt_dir: Path, expnum: str | None) -> str:
    """The run's expnum, made its own (last step of ``resolve``: nothing after it can fail).

    A new name is claimed atomically; a given ``--expnum`` must be free unless ``--overwrite``;
    ``--resume`` continues the name in its state file ("" here, set by ``main_worker``).
    Under torchrun only rank 0 claims, and ``main_worker`` broadcasts the name.
    """
    if os.environ.get("RANK", "0") != "0":
        return ""
    for p in remove_stale_tmp(ckpt_dir):        # a resumed run too: a killed save leaves a checkpoint-sized file
        log.info("removed %s, left by a run that was killed while writing", p.name)
    if args.resume:
        return ""
    if expnum:
        ckpt.claim_given_expnum(ckpt_dir, args.netnum, expnum, args.overwrite)
        return expnum
    return ckpt.claim_expnum(ckpt_dir, args.netnum, mode.name)


def resumed_provenance(path: Path, mepoch: int, data: dict, prov: dict) -> dict:
    """``--resume``: the state must be a training state with epochs left, of a run that read the same training
    images (split, draw and bytes); returns the provenance the resumed checkpoints carry (the union)."""
    state = ckpt.read_checkpoint(path, "--resume file", weights_only=False, hint="resume from an older one")
    if not isinstance(state, dict) or "model" not in state or "rng" not in state:
        raise UserError(f"--resume {path} is {describe_file(path)}, not a training state; pass the "
                        "<netnum>_<expnum>_state.pth a run wrote with --ckpt_freq")
    done = int(state.get("epoch", 0))
    if done >= mepoch:
        raise UserError(f"--resume {path} is at epoch {done} and --mepoch is {mepoch}: nothing is left to train; "
                        f"raise --mepoch (e.g. --mepoch {2 * done}) to continue it")
    extra = state.get("extra") or {}
    was = extra.get("data")
    if isinstance(was, dict) and (was.get("netnum"), was.get("mode")) != (data["netnum"], data["mode"]):
        raise UserError(f"--resume {path} is the training state of --netnum {was.get('netnum')} --mode "
                        f"{was.get('mode')}, not of this run's --netnum {data['netnum']} --mode {data['mode']}; "
                        f"resume with --netnum {was.get('netnum')} --mode {was.get('mode')}")
    if not isinstance(was, dict):
        log.warning("--resume %s records no training images (written before they were): cannot check that this "
                    "run reads the same ones", path)
    elif any(was.get(k) != data[k] for k in ("split_version", "train_sha", "digests_sha")):
        flags = (f"--ds {was.get('ds')}" + (f" --split-file {was['split_file']}" if was.get("split_file") else "")
                 + f" --ts {was.get('ts'):g} --seed {was.get('seed')}")
        raise UserError(f"--resume {path}: this run reads other training images than the run it continues "
                        f"({data['n_train']} of split {data['split_version']}; it had {was.get('n_train')} of split "
                        f"{was.get('split_version')}, or their pixels changed); resume with the flags it started "
                        f"with ({flags}) and the same files")
    return provenance.merge(extra.get("provenance"), prov, str(path))


def resolve_gpu_aug(args: argparse.Namespace, module, opt: DatasetOpt) -> bool:
    """``--gpu-aug`` as asked, or by default: with a GPU, for pretexts whose views are ``--aug`` plans
    that the batched path implements; a request it cannot honour is a user error."""
    from datasets.gpu_aug import GPU_AUGS, GPU_PLANS, BatchViews
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
        module.make_transform(args, opt)                                        # the plan exists on the CPU path ...
        BatchViews(aug, plan_code, opt.input_size, opt.mean, opt.std, opt.rgb_index,   # ... and on the device
                   crop_scale=crop_scale_of(args))
    return bool(args.gpu_aug)


def aug_code(args: argparse.Namespace, module) -> int:
    """``--aug``, or the pretext's default (its module's ``AUG``, else 5)."""
    return getattr(module, "AUG", 5) if args.aug is None else args.aug


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


def processes_per_node(plan: Plan) -> int:
    """Processes this node spawns for ``--mp-distributed``."""
    p = plan.procs
    return p.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)


def plan_summary(plan: Plan, iters_per_epoch: int) -> dict[str, Any]:
    """What ``--dry-run`` prints: the resolved settings a script needs (lr, steps, data)."""
    return {"mode": plan.mode.code, "pretext": plan.mode.pretext, "netnum": plan.netnum, "dataset": plan.opt.name,
            "n_train": len(plan.train), "global_bs": plan.global_bs, "iters_per_epoch": iters_per_epoch,
            "epochs": plan.epochs, "steps": iters_per_epoch * plan.epochs, "lr": plan.optim.lr,
            "optimizer": plan.optim.name, "recipe": plan.record.get("recipe"), "lr_rule": plan.record.get("lr_rule"),
            "lr_base": plan.record.get("lr_base"), "input_size": plan.opt.input_size, "bands": list(plan.opt.bands)}

