"""Per-process runtime: device, process group, AMP/channels_last switches, seeding.

CUDA-only features (bf16 autocast, channels_last, cudnn.benchmark, NCCL) switch on only
when a GPU is present; on CPU the same code runs with gloo and plain float32.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the run ends and keeps its last good checkpoint."""


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    distributed: bool = False
    amp: bool = False
    channels_last: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_runtime(local_rank: int | None, nproc: int | None, args: argparse.Namespace) -> Runtime:
    """Pick the device and join the process group (``local_rank`` None: single process or torchrun)."""
    cuda = torch.cuda.is_available()
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if torchrun:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        init = "env://"
    elif local_rank is not None:
        local, rank, world = local_rank, args.rank * nproc + local_rank, args.world_size * nproc
        init = args.dist_url
    else:
        local, rank, world, init = 0, 0, 1, None
    from engine.cli import setup_logging
    setup_logging(rank == 0)     # spawned workers start with no logging configured
    if cuda:
        gpu = local if (torchrun or local_rank is not None) else (args.gpu or 0)
        torch.cuda.set_device(gpu)
        device = torch.device("cuda", gpu)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    distributed = init is not None
    if distributed:
        backend = args.dist_backend if cuda else "gloo"
        if not cuda and args.dist_backend != "gloo" and rank == 0:
            log.info("no GPU: using the gloo backend instead of %s", args.dist_backend)
        dist.init_process_group(backend, init_method=init, world_size=world, rank=rank,
                                timeout=timedelta(minutes=30))
        if not cuda:
            # Leave the two cores to the processes rather than oversubscribing them.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, nproc or world)))
    amp = bool(getattr(args, "amp", False)) and cuda
    cl = bool(getattr(args, "channels_last", False)) and cuda
    if rank == 0 and not cuda and (getattr(args, "amp", False) or getattr(args, "channels_last", False)):
        log.info("--amp / --channels-last are GPU features; running float32 on CPU")
    return Runtime(device, rank, local, world, distributed, amp, cl)


def reseed(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy and torch from (seed, epoch, rank).

    Reseeding at every epoch makes a resumed run draw exactly the augmentations and
    batches of an uninterrupted one.
    """
    s = (seed * 1_000_003 + epoch * 10_007 + rank) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy/random follow torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def move_to(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Tensors (nested in tuples/lists/dicts) to ``device``; 4-D ones channels_last if asked."""
    if torch.is_tensor(obj):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.dim() == 4:
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(o, device, channels_last) for o in obj)
    if isinstance(obj, dict):
        return {k: move_to(v, device, channels_last) for k, v in obj.items()}
    return obj


def use_tqdm(rt: Runtime, args: argparse.Namespace) -> bool:
    """Progress bars on rank 0, on a terminal, unless --no-progress."""
    return rt.is_main and getattr(args, "progress", True) and sys.stdout.isatty()
