"""Checks of user input made once, before any work starts, shared by both entry scripts.

Each failing check is a :class:`~config.errors.UserError`: one sentence that names the
value and the fix. ``prepare()`` of each entry script calls these, in the launching
process, so a bad value never surfaces as a traceback inside a worker or after hours of
training.
"""
from __future__ import annotations

import argparse
import csv
import errno
import math
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch

from config.codes import Mode, decode_netnum
from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from datasets.index import Sample
from datasets.reader import header, read_raw
from engine.results import is_result_table
VIT_LAYER_DECAY = 0.75      # MAE main_finetune.py --layer_decay 0.75 (FINETUNE.md: ViT-L/H)
VIT_DROP_PATH = 0.1         # MAE main_finetune.py --drop_path 0.1 (FINETUNE.md: ViT-B)


def check_values(args: argparse.Namespace) -> None:
    """Numbers both entry scripts take: batch size, seed, workers, lr, epochs, processes, GPU."""
    if args.bs is not None and args.bs < 1:
        raise UserError(f"--bs {args.bs} must be a positive total batch size; pass e.g. --bs 64 or leave it out "
                        "for the dataset's default")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed} must be >= 0; pass e.g. --seed 0")
    if args.workers < 0:
        raise UserError(f"--workers {args.workers} must be >= 0 (0 reads in the main process); pass e.g. --workers 2")
    for name in ("lr", "momentum", "wd", "warmup", "lr_decay"):
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name} {value} is not a finite number; pass e.g. "
                            + {"lr": "--lr 1e-3", "momentum": "--momentum 0.9", "wd": "--wd 1e-6",
                               "warmup": "--warmup 10", "lr_decay": "--lr_decay 0.1"}[name])
    if args.lr is not None and args.lr <= 0:
        raise UserError(f"--lr {args.lr} must be a positive number; pass e.g. --lr 1e-4")
    if args.warmup is not None and args.warmup < 0:       # None: the pretraining --recipe fills it
        raise UserError(f"--warmup {args.warmup} must be >= 0 epochs")
    if args.sepoch < 0:
        raise UserError(f"--sepoch {args.sepoch} must be >= 0: the number of epochs already done")
    expnum = getattr(args, "expnum", None)
    if expnum is not None and ("/" in expnum or "\\" in expnum or os.sep in expnum or ".." in expnum
                               or expnum.strip(". ") == ""):
        raise UserError(f"--expnum {expnum} is a name, not a path: drop the folder part ('/', '..'); the folder "
                        "is --ckpt, e.g. --ckpt ck --expnum 26336120000_pretrain")
    if args.input_size is not None and args.input_size < 1:
        raise UserError(f"--input_size {args.input_size} must be a positive number of pixels, e.g. --input_size 64")
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc {args.nproc} must be >= 1 process per node; leave it out for one per GPU")
    if args.world_size < 1:
        raise UserError(f"--world-size {args.world_size} must be >= 1 node")
    if not 0 <= args.rank < args.world_size:
        raise UserError(f"--rank {args.rank} must be in 0..{args.world_size - 1} (this node's number of "
                        f"--world-size {args.world_size})")
    check_gpu(args.gpu)


def check_pretrain_values(args: argparse.Namespace) -> None:
    """Numbers only main_cls_ss_train.py takes (``--knn-freq`` is checked by its parser: auto or N >= 0)."""
    for name, flag, least, example in (("feature_dim", "--feature_dim", 1, "128"),
                                       ("ckpt_freq", "--ckpt_freq", 0, "10 (0: only the final backbone)")):
        value = getattr(args, name)
        if value is not None and value < least:      # None: the pretext's own default
            raise UserError(f"{flag} {value} must be >= {least}; pass e.g. {flag} {example}")


def check_gpu(gpu: int | None) -> None:
    """``--gpu N`` must name a visible GPU."""
    if gpu is None:
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise UserError(f"--gpu {gpu}: no GPU is visible here (CUDA_VISIBLE_DEVICES, driver); drop --gpu to run on CPU")
    if not 0 <= gpu < n:
        raise UserError(f"--gpu {gpu} does not exist: {n} GPU(s) are visible, numbered 0..{n - 1}")


def check_pretext_backbone(netnum: str, mode: Mode, module) -> None:
    """A pretext that decodes a CNN's conv stages (``NEEDS_CONV_STAGES``) refuses a ViT, and one made
    for ViTs (``VIT_ONLY``: MAE) refuses a CNN, each in one sentence."""
    code = decode_netnum(netnum)
    if code.vit is not None and getattr(module, "NEEDS_CONV_STAGES", False):
        raise UserError(f"--mode {mode.code} ({mode.pretext}) works on the feature maps of a CNN's conv stages, which "
                        f"--netnum {netnum} (vit {code.vit.size} patch {code.vit.patch}) does not have; use a CNN "
                        "code such as --netnum 090000 (resnet18), or --mode 930 (MAE) for a ViT")
    if code.vit is None and getattr(module, "VIT_ONLY", False):
        raise UserError(f"--mode {mode.code} ({mode.pretext}) masks the patch tokens of a Vision Transformer, and "
                        f"--netnum {netnum} is {code.backbone}; use a ViT code such as --netnum 110000 "
                        "(vit tiny patch 16)")


def resolve_vit_finetune(args: argparse.Namespace, netnum: str, trains: bool) -> None:
    """``--layer-decay`` / ``--drop-path``: ViT fine-tuning only (refused for CNNs and for a frozen
    backbone); defaults for a ViT that trains: layer decay 0.75 and drop path 0.1 (MAE
    main_finetune.py: --layer_decay 0.75, --drop_path 0.1), otherwise none."""
    code = decode_netnum(netnum)
    given = [f for f, v in (("--layer-decay", args.layer_decay), ("--drop-path", args.drop_path)) if v is not None]
    if code.vit is None:
        if given:
            raise UserError(f"{', '.join(given)} fine-tune a Vision Transformer, and --netnum {netnum} is "
                            f"{code.backbone}: drop {'them' if len(given) > 1 else 'it'} or use a ViT code (1x0000)")
        return
    frozen = not trains or args.hos == 9
    if frozen:
        if given:
            raise UserError(f"{', '.join(given)} change how a ViT is trained, and here the backbone is frozen "
                            f"({'--probe' if getattr(args, 'probe', None) else '--hos 9' if args.hos == 9 else 'no training'}): "
                            "drop " + ("them" if len(given) > 1 else "it"))
        return
    if args.layer_decay is None:
        args.layer_decay = VIT_LAYER_DECAY
    if args.drop_path is None:
        args.drop_path = VIT_DROP_PATH
    if not 0 < args.layer_decay <= 1:
        raise UserError(f"--layer-decay {args.layer_decay} must be in (0, 1] (1: no decay); MAE fine-tunes with 0.75")
    if not 0 <= args.drop_path < 1:
        raise UserError(f"--drop-path {args.drop_path} must be in [0, 1); MAE fine-tunes ViT-B with 0.1")


def check_dist_port(args: argparse.Namespace) -> None:
    """Before spawning: the ``--dist-url`` port this node (rank 0) will listen on must be free."""
    if not args.mp_distributed or args.rank != 0:
        return
    url = urlparse(args.dist_url)
    if url.scheme != "tcp":
        return                              # env://, file:// rendezvous: nothing to bind
    if url.port is None or not url.hostname:
        raise UserError(f"--dist-url {args.dist_url} has no host:port; pass e.g. --dist-url tcp://localhost:10010")
    if not _is_this_machine(url.hostname):
        return                              # another machine hosts the rendezvous
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the rendezvous store does
        try:
            s.bind(("", url.port))
            s.listen(1)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"--dist-url port {url.port} is already in use on this machine (another run?); "
                                f"pass a free one, e.g. --dist-url tcp://localhost:{_free_port()}") from None
            if err.errno == errno.EACCES:
                raise UserError(f"--dist-url port {url.port} needs privileges to open; use a port above 1023, "
                                f"e.g. --dist-url tcp://localhost:{_free_port()}") from None
            raise


def _is_this_machine(host: str) -> bool:
    """True when ``host`` names an address of this machine (it can be bound here)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def check_writable_folder(folder: Path, flag: str) -> None:
    """``folder`` can be created (if missing) and written to; checked before any training."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {folder}: {probe} is a file, not a folder; pass a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag} {folder} cannot be created ({err.strerror}); pass a folder you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder} is not writable; pass a folder you can write to or fix its permissions")


def check_split_files(samples: Sequence[Sample], opt: DatasetOpt, what: str) -> None:
    """A split read after training: non-empty, and every file present with the right band
    count in its header; one file per class is decoded in full, and so is every file whose
    pixels could be gaps (a nodata tag) or NaN (float values). Cheap (headers only, e.g. 2 s
    for EuroSAT's 5,400 test GeoTIFFs), and what fails here would otherwise fail after the fit."""
    if not samples:
        if opt.split_file is not None:
            raise UserError(f"--split-file {opt.split_file} has no {what.split()[0]} rows; give it rows with split "
                            f"{what.split()[0]} (e.g. export one with python -m datasets --ds {opt.name} --export-split F)")
        raise UserError(f"the {what} of --ds {opt.name} ({opt.root}) is empty; every class needs at least 2 images "
                        "so that one lands in it")
    want = len(opt.band_names)
    full: list[Path] = []          # files whose pixels must be read to know they are all measurements

    def check_header(s: Sample) -> None:
        try:
            if s.path.stat().st_size == 0:
                raise UserError(f"{s.path} (in the {what}) is an empty file; re-download or remove it")
        except FileNotFoundError:
            raise UserError(f"{s.path} (in the {what}) is gone; restore it or remove it from the dataset folder") from None
        head = header(s.path)
        n = head.bands
        if n != want and not (n == 1 and want == 3):        # a grayscale jpg in an RGB set is read as RGB
            raise UserError(f"{s.path} (in the {what}) has {n} band(s) but --ds {opt.name} expects {want}; "
                            "check --ds / --dtype or remove the file")
        if head.needs_pixel_check:                           # float values or nodata tags: NaN / gaps refused
            full.append(s.path)

    with ThreadPoolExecutor(4) as pool:                      # GDAL releases the GIL while opening
        list(pool.map(check_header, samples))
    first = {}
    for s in samples:
        first.setdefault(s.label, s.path)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: read_raw(p, opt.band_index, want), sorted(set(first.values()) | set(full))))


def check_results_table(path: Path) -> None:
    """``--results``: a UTF-8 CSV with our columns, today's or an older schema that appending
    migrates (or no file yet), in a writable folder; checked before training so the row of a
    long fit is never refused at the end."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--results {path} is a folder; pass the path of a .csv file, e.g. {path / 'results.csv'}")
    check_writable_folder(path.parent, "--results folder")
    if not path.exists():
        return
    if not os.access(path, os.R_OK | os.W_OK):
        raise UserError(f"--results {path} is not readable and writable; fix its permissions or pass another file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")       # a byte-order mark (a spreadsheet's save) is fine
    except UnicodeDecodeError as err:
        raise UserError(f"--results {path} is not UTF-8 text (byte {err.start}); pass another --results file "
                        "or convert it to UTF-8") from None
    if not text.strip():
        return
    header = next(csv.reader([text.split("\n", 1)[0].rstrip("\r")]), [])
    if not is_result_table(header):           # ours, today's columns or an older schema (migrated on append)
        raise UserError(f"--results {path} is not a results table of this project (its columns start "
                        f"{', '.join(header[:4])}); pass another --results file or move it away")
