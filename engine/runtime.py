"""Per-process runtime: device, process group, AMP/channels_last switches, seeding.

``--amp`` (bf16 autocast) and ``--channels-last`` work on every device (on CPU they mostly
exist so that CI runs the same code paths a GPU run takes); cudnn.benchmark and NCCL switch
on only when a GPU is present, gloo is used on CPU.

Augmentation randomness is derived per SAMPLE from ``(seed, epoch, rank, index)``
(:class:`SeededSampler` + :class:`PerSampleSeed`), not from the DataLoader workers' RNG
state, so workers can persist across epochs, every rank draws its own augmentations, and a
resumed run draws exactly the views of an uninterrupted one.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler, get_worker_info
from engine.cli import setup_logging

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the run ends and keeps its last good checkpoint."""


@dataclass(frozen=True)
class Procs:
    """How the run uses processes and devices: the resolved ``--mp-distributed``, ``--nproc``,
    ``--world-size``, ``--rank``, ``--dist-url``, ``--dist-backend``, ``--gpu``, ``--amp``,
    ``--channels-last`` and ``--no-progress`` flags (checked by the entry point's plan)."""

    mp_distributed: bool = False
    nproc: int | None = None
    world_size: int = 1
    rank: int = 0
    dist_url: str = "tcp://localhost:10010"
    dist_backend: str = "nccl"
    gpu: int | None = None
    amp: bool = False
    channels_last: bool = False
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Procs":
        return cls(bool(args.mp_distributed), args.nproc, int(args.world_size), int(args.rank), str(args.dist_url),
                   str(args.dist_backend), args.gpu, bool(getattr(args, "amp", False)),
                   bool(getattr(args, "channels_last", False)), bool(getattr(args, "progress", True)))


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    distributed: bool = False
    amp: bool = False
    channels_last: bool = False
    progress: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_runtime(local_rank: int | None, nproc: int | None, procs: Procs) -> Runtime:
    """Pick the device and join the process group (``local_rank`` None: single process or torchrun)."""
    cuda = torch.cuda.is_available()
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if torchrun:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        init = "env://"
    elif local_rank is not None:
        local, rank, world = local_rank, procs.rank * nproc + local_rank, procs.world_size * nproc
        init = procs.dist_url
    else:
        local, rank, world, init = 0, 0, 1, None
    setup_logging(rank == 0)     # spawned workers start with no logging configured
    if cuda:
        gpu = local if (torchrun or local_rank is not None) else (procs.gpu or 0)
        torch.cuda.set_device(gpu)
        device = torch.device("cuda", gpu)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    distributed = init is not None
    if distributed:
        backend = procs.dist_backend if cuda else "gloo"
        if not cuda and procs.dist_backend != "gloo" and rank == 0:
            log.info("no GPU: using the gloo backend instead of %s", procs.dist_backend)
        dist.init_process_group(backend, init_method=init, world_size=world, rank=rank,
                                timeout=timedelta(minutes=30))
        if not cuda:
            # Leave the two cores to the processes rather than oversubscribing them.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, nproc or world)))
    amp, cl = procs.amp, procs.channels_last
    if rank == 0 and not cuda and amp:
        log.info("--amp on CPU: bf16 autocast runs (convolutions and matmuls in bf16), usually slower than "
                 "float32 on CPUs without bf16 units; it is there so CPU runs take the GPU's code path")
    return Runtime(device, rank, local, world, distributed, amp, cl, procs.progress)


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
    """DataLoader worker_init_fn (fine-tuning): numpy/random follow torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def sample_seed(seed: int, epoch: int, rank: int, index: int) -> int:
    """The 63-bit seed of one sample's augmentations in one epoch on one rank (a SeedSequence hash,
    so nearby tuples give unrelated streams)."""
    state = np.random.SeedSequence([seed % 2**63, epoch, rank, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class SeededSampler(Sampler):
    """Wraps a sampler of indices; yields ``(index, sample_seed(seed, epoch, rank, index))``.

    Call :meth:`set_epoch` before each epoch (it also forwards to a DistributedSampler).
    The sampler runs in the main process, so the epoch reaches persistent workers through
    the indices they are handed.
    """

    def __init__(self, base: Sampler, seed: int, rank: int) -> None:
        self.base, self.seed, self.rank, self.epoch = base, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.base:
            yield int(i), sample_seed(self.seed, self.epoch, self.rank, int(i))


class PerSampleSeed(Dataset):
    """``dataset[(i, s)]`` = ``dataset[i]`` drawn with torch, numpy and random seeded by ``s``.

    In a DataLoader worker the global generators are simply reseeded (the worker owns them);
    in the main process (``--workers 0``) their state is saved and restored around the
    sample, so the training step's own randomness does not depend on the data.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        i, s = key
        if get_worker_info() is not None:
            _seed_all(s)
            return self.dataset[i]
        states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        try:
            _seed_all(s)
            return self.dataset[i]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.random.set_rng_state(states[2])


def _seed_all(s: int) -> None:
    """Seed the CPU generators of torch, numpy and random (no CUDA: workers never touch it)."""
    torch.random.default_generator.manual_seed(s)
    np.random.seed(s % 2**32)
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


def use_tqdm(rt: Runtime) -> bool:
    """Progress bars on rank 0, on a terminal, unless --no-progress."""
    return rt.is_main and rt.progress and sys.stdout.isatty()
