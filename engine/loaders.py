"""Pretraining data: the training dataset (with the --pin-memory cache), its seeded loader, and
the on-device views of --gpu-aug.

The order of an epoch is a permutation seeded by ``(seed, epoch)`` and split across ranks;
each sample's augmentations are seeded by ``(seed, epoch, rank, index)``
(:class:`engine.runtime.SeededSampler`). Neither depends on the workers' RNG, so workers
persist across epochs and a resumed run sees the views of an uninterrupted one.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datasets.folder import CacheSpec, RasterDataset, make_dataset, shared_cache_path
from datasets.views import crop_scale_of
from engine.plan import Plan
from engine.runtime import PerSampleSeed, Runtime, SeededSampler, sample_seed

log = logging.getLogger(__name__)

DEVICE_STREAM = 2**32      # sample_seed "index" of the device augmentation (above every image index)


def memory_cache(plan: Plan, rt: Runtime) -> bool | CacheSpec:
    """``--pin-memory``: what to cache, and with several processes one shared copy per node
    (the node's first process builds it in /dev/shm, the others map it)."""
    if not plan.pin_memory:
        return False
    shared = None
    if rt.distributed:
        key = [f"{plan.expnum}_{os.getpid()}"]            # the same name on every rank: rank 0's
        dist.broadcast_object_list(key, src=0)
        shared = shared_cache_path(key[0], [s.path for s in plan.train])
    return CacheSpec(size=plan.cache_size, shared=shared, builder=rt.local_rank == 0)


def build_batch_views(plan: Plan):
    """The batched views of the plan's ``--aug``/``--aug_p`` (``--gpu-aug``)."""
    from datasets.gpu_aug import BatchViews
    opt = plan.opt
    return BatchViews(plan.aug, plan.aug_p, opt.input_size, opt.mean, opt.std, opt.rgb_index,
                      crop_scale=crop_scale_of(plan.method))


class DeviceAugment:
    """``--gpu-aug`` in the loop: raw batch on the device -> the pretext's views, drawn from a
    generator seeded by (seed, rank, global step), so a resumed run draws the same views."""

    def __init__(self, views, seed: int, rank: int) -> None:
        self.views, self.seed, self.rank = views, seed, rank

    def __call__(self, raw: torch.Tensor, step: int):
        self.views.seed(raw.device, sample_seed(self.seed, step, self.rank, DEVICE_STREAM))
        return self.views(raw)


def training_data(plan: Plan, rt: Runtime) -> tuple[Dataset, DeviceAugment | None]:
    """The training dataset of this process and, with ``--gpu-aug``, the device augmentation."""
    opt, module = plan.opt, plan.module
    cache = memory_cache(plan, rt)
    threads = max(1, plan.workers) * 2
    augment = None
    if plan.gpu_aug:      # the workers only decode; the views are made on the device
        dataset: Dataset = RasterDataset(plan.train, opt, None, cache=cache, threads=threads, as_float=False)
        augment = DeviceAugment(build_batch_views(plan), plan.seed, rt.rank)
        if rt.is_main:
            log.info("--gpu-aug: views made on %s in batches (datasets/gpu_aug.py)", rt.device)
    else:
        dataset = make_dataset(opt, plan.train, lambda o: module.make_transform(plan.method, o),
                               cache=cache, threads=threads)
    if isinstance(cache, CacheSpec) and cache.shared is not None:
        dist.barrier()                    # every process of the node has mapped the shared cache ...
        if cache.builder:                 # ... so its name can go: the pages live until the last process ends
            for f in cache.shared.parent.glob(f"{cache.shared.stem}*.npy"):
                f.unlink(missing_ok=True)
        if rt.is_main:
            log.info("--pin-memory: one cache per node, shared by its processes (%d in all) through %s", rt.world,
                     cache.shared.parent)
    return dataset, augment


def make_loader(dataset: Dataset, batch_size: int, rt: Runtime, workers: int,
                seed: int) -> tuple[DataLoader, SeededSampler]:
    """Shuffled, full batches of ``(views, label, index)`` for this process, and their sampler.

    Call ``sampler.set_epoch(e)`` before each epoch.
    """
    order = DistributedSampler(dataset, num_replicas=rt.world, rank=rt.rank, shuffle=True, seed=seed,
                               drop_last=True)
    sampler = SeededSampler(order, seed, rt.rank)
    # the workers' base seed is drawn from this otherwise unused generator, so creating the
    # iterator (first epoch, or the first epoch after --resume) never shifts torch's global RNG
    loader = DataLoader(PerSampleSeed(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=rt.device.type == "cuda", drop_last=True, generator=torch.Generator(),
                        persistent_workers=workers > 0)
    return loader, sampler
