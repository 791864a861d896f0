"""Command-line flags shared by both entry scripts, defined once.

Each flag does something or fails with a message; names follow the seed code users
already type (``--mepoch``, ``--bs``, ``--lr_policy`` ...), with ``-``/``_`` aliases where
the seed used both spellings.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys

from config import codes
from config.errors import UserError


class ListCodes(argparse.Action):
    """``--list-codes``: print the mode and netnum tables and exit."""

    def __init__(self, option_strings, dest, script: str = "any", **kw):
        self.script = script
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(codes.format_tables(self.script))
        parser.exit(0)


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def _milestones(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated epochs, e.g. 100,150") from None


TS_HELP = ("give a fraction in (0, 1] of each class's training images or a whole number > 1 of images "
           "per class, e.g. --ts 0.1 or --ts 5")


def train_scale(text: str) -> float:
    """One ``--ts`` value: a finite fraction in (0, 1] or a whole number of images per class > 1."""
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"--ts {text} is not a number; {TS_HELP}") from None
    if not math.isfinite(v) or v <= 0:
        raise UserError(f"--ts {text} is not a train scale; {TS_HELP}")
    if v > 1 and v != int(v):
        raise UserError(f"--ts {text}: above 1 it counts images per class, so it must be a whole number; {TS_HELP}")
    return v


class TrainScales(argparse.Action):
    """``--ts 5`` or ``--ts 5,20`` (main_cls.py sweeps every value): ``args.ts_list`` holds them all,
    ``args.ts`` the first (each run of the sweep gets its own)."""

    def __init__(self, option_strings, dest, script: str = "any", **kw):
        self.script = script
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        parts = [v for v in str(values).replace(" ", "").split(",")]
        if not all(parts):
            raise UserError(f"--ts {values}: empty value in the list; e.g. --ts 5,20")
        scales = tuple(train_scale(v) for v in parts)
        if len(set(scales)) != len(scales):
            raise UserError(f"--ts {values} repeats a value; each train scale once, e.g. --ts 5,20")
        if len(scales) > 1 and self.script != "cls":
            raise UserError(f"--ts {values}: pretraining takes one train scale; run one pretraining per value")
        namespace.ts, namespace.ts_list = scales[0], scales


# main_cls.py's optimisation defaults, the same as before --recipe existed (pretraining fills the
# Nones from its recipe instead: engine/recipes.py); LARS's eta and clip stay None = 1e-3, no clipping.
CLS_DEFAULTS = {"optimizer": "adam", "warmup": 0.0, "momentum": 0.9, "wd": 1e-6}


def base_parser(description: str, script: str) -> argparse.ArgumentParser:
    """Flags common to pretraining and classification."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--list-codes", action=ListCodes, script=script, help="print the --mode and --netnum tables and exit")
    g = p.add_argument_group("data")
    g.add_argument("--ds", default="demo", help="dataset option module (aid nr ucm eurorgb euroms euromsrgb demo), a+b to pool, or a folder of your own imagery")
    g.add_argument("--data-root", "--data_root", dest="data_root", help="folder that holds the datasets (default $RSSSL_DATA or ./data)")
    g.add_argument("--cache-dir", dest="cache_dir", help="split records and measured band statistics (default $RSSSL_CACHE or ~/.cache/rs-ssl)")
    g.add_argument("--dtype", help="band group: RGB (3) NIR (1) SAR (1) TEN (10) ALL (12) MS (13); default: the dataset's")
    g.add_argument("--split-file", "--split_file", dest="split_file",
                   help="use this split instead of the built-in one: a path,class,split CSV (python -m datasets --export-split) "
                        "or a folder of Neumann et al. train/val/test lists (eurosat-train.txt ...)")
    g.add_argument("--rgb-bands", dest="rgb_bands", help="your own multispectral imagery: 1-based R,G,B band numbers, e.g. 4,3,2")
    g.add_argument("--ts", action=TrainScales, script=script, default=1.0,
                   help="train scale: <=1 fraction of each class's training split, >1 images per class"
                        + ("; a comma list (5,20) runs every value in one call" if script == "cls" else ""))
    p.set_defaults(ts_list=(1.0,))
    g.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw and of training")
    g.add_argument("--input_size", "--input-size", dest="input_size", type=int, help="side of the network input (default: the dataset's)")
    g.add_argument("--pin-memory", "--pin_memory", dest="pin_memory", action="store_true",
                   help="decode every image once into an in-memory cache (native dtype), and pin host memory on GPU")
    g.add_argument("--workers", "-j", type=int, default=2, help="DataLoader worker processes per training process")
    m = p.add_argument_group("model")
    m.add_argument("--mode", required=False, help="job code; see --list-codes")
    m.add_argument("--netnum", default="000000", help="6-digit network code; see --list-codes")
    m.add_argument("--ptcp", type=int, default=0, choices=(0, 1), help="1: start from ImageNet weights")
    m.add_argument("--ckpt", default="ckpt", help="checkpoint folder")
    m.add_argument("--expnum", help="experiment name <timestamp>_<mode name>; default: a new one")
    if script == "pretrain":
        m.add_argument("--overwrite", action="store_true",
                       help="with --expnum E: delete run E's files (checkpoints, log, figures) and write the new run "
                            "under that name; without it a taken --expnum is refused")
    m.add_argument("--resume", help="pretraining: the full state <ckpt>/<netnum>_<expnum>_state.pth; main_cls.py: a classifier checkpoint to continue training (with --sepoch)")
    m.add_argument("--sepoch", type=int, default=0, help="epochs already done (the schedule starts there)")
    m.add_argument("--cepoch", help="checkpoint epoch (or 'best') of --expnum to start from")
    m.add_argument("--mepoch", type=_positive_int, default=100, help="epochs in total")
    m.add_argument("--vis", action="store_true", help="write PNG figures (views / confusion matrix) next to the results")
    o = p.add_argument_group("optimisation")
    recipe = script != "cls"                  # pretraining: a --recipe fills what is not given (engine/recipes.py)
    o.add_argument("--optimizer", help="sgd | adam | adamw | lars" + (" (default: the --recipe's)" if recipe else ""))
    o.add_argument("--lr", type=float, help="learning rate (default: " + (
        "the --recipe's rule, e.g. base x batch / 256" if recipe else "the dataset's") + ")")
    o.add_argument("--lr_decay", "--lr-decay", dest="lr_decay", type=float, default=0.1, help="decay factor of the step and polyline policies")
    o.add_argument("--lr_policy", "--lr-policy", dest="lr_policy", default="cosine", help="cosine | step | linear | polyline | const")
    o.add_argument("--milestones", type=_milestones, default=[], help="epochs where step/polyline decay, e.g. 100,150")
    o.add_argument("--warmup", type=float, help="epochs of linear warm-up" + (" (default: the --recipe's)" if recipe else ""))
    o.add_argument("--momentum", type=float, help="SGD/LARS momentum, Adam's beta1")
    o.add_argument("--wd", "--weight-decay", "--weight_decay", dest="wd", type=float,
                   help="weight decay" + (" (default: the --recipe's)" if recipe else ""))
    o.add_argument("--lars-eta", "--lars_eta", dest="lars_eta", type=float,
                   help="LARS trust coefficient eta (default 1e-3, or the --recipe's; solo-learn's small recipes use 0.02)")
    o.add_argument("--lars-clip", dest="lars_clip", action=argparse.BooleanOptionalAction, default=None,
                   help="LARS: cap each layer's rate eta*||w||/||g|| at the scheduled lr (solo-learn's clip_lr; "
                        "default off, or the --recipe's)")
    o.add_argument("--beta2", type=float,
                   help="Adam/AdamW: the second-moment decay (default 0.999, or the --recipe's: MAE 0.95)")
    o.add_argument("--bs", type=int, help="TOTAL batch size over all processes (default: the dataset's)")
    d = p.add_argument_group("devices and processes")
    d.add_argument("--gpu", type=int, help="GPU id for a single-process run")
    d.add_argument("--mp-distributed", "--multiprocessing-distributed", dest="mp_distributed", action="store_true",
                   help="one process per GPU (or --nproc gloo processes on CPU) with DistributedDataParallel")
    d.add_argument("--nproc", type=int, help="processes per node for --mp-distributed (default: GPUs, or 1 on CPU)")
    d.add_argument("--world-size", "--world_size", dest="world_size", type=int, default=1, help="number of nodes")
    d.add_argument("--rank", type=int, default=0, help="rank of this node")
    d.add_argument("--dist-url", "--dist_url", dest="dist_url", default="tcp://localhost:10010", help="rendezvous of the process group")
    d.add_argument("--dist-backend", "--dist_backend", dest="dist_backend", default="nccl", help="nccl on GPUs; gloo is used on CPU")
    d.add_argument("--sync-bn", dest="sync_bn", action="store_true", help="SyncBatchNorm across processes")
    d.add_argument("--amp", action="store_true",
                   help="bf16 autocast (losses stay float32); on a GPU and on CPUs with bf16 units (AVX512-BF16/AMX) "
                        "it is faster, elsewhere it only runs the GPU's code path")
    d.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format for images and convolutions, on every device (the GPU's fast "
                        "layout; 0.95-1.15x per mode on this project's 2-core CPU, docs/benchmarks.md; same "
                        "results up to float rounding); --no-channels-last keeps the contiguous layout")
    d.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars even on a terminal")
    if script == "cls":
        p.set_defaults(**CLS_DEFAULTS)
    return p


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time (it may be swapped, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(is_main: bool = True) -> None:
    """INFO on rank 0, WARNING elsewhere, one format for every module.

    Adds one stdout handler (once per process) and leaves other handlers alone, so
    pytest's capture and a user's own configuration keep working.
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    if not any(getattr(h, "_rsssl", False) for h in root.handlers):
        h = _StdoutHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S"))
        h._rsssl = True  # type: ignore[attr-defined]
        root.addHandler(h)


def check_process_flags(args: argparse.Namespace) -> None:
    """Multi-process flags only mean something with --mp-distributed; --gpu only without it."""
    if not args.mp_distributed:
        given = [f for f, v, d in (("--nproc", args.nproc, None), ("--world-size", args.world_size, 1),
                                   ("--rank", args.rank, 0), ("--dist-url", args.dist_url, "tcp://localhost:10010"))
                 if v != d]
        if given:
            raise UserError(f"{', '.join(given)} set up several processes; add --mp-distributed (or drop them)")
    elif args.gpu is not None:
        raise UserError("--gpu picks the GPU of a single-process run; --mp-distributed uses one process per GPU: drop --gpu")
