"""One pretraining epoch: forward, backward, step, the method's step hook, and the epoch's one host read.

The step never waits for the device: the loss, the pretext's stats (0-dim tensors) and a
count of non-finite losses are summed ON the device, all-reduced and read by the host ONCE
after the epoch. A non-finite loss therefore ends the run at the end of its epoch, which is
discarded (nothing of it is saved: the last good checkpoint stays the last good one).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from engine.optim import clip_grad_per_tensor
from engine.runtime import Runtime, TrainingDiverged, move_to, use_tqdm
from engine.schedules import LRSchedule

BAR_EVERY = 25       # the progress bar reads the running loss every this many steps (one host sync)


def train_one_epoch(net: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    schedule: LRSchedule, epoch: int, rt: Runtime, total_epochs: int,
                    last_good: Path | None, augment: Callable[[Any, int], Any] | None = None,
                    clip_grad: float = 0.0) -> dict[str, float]:
    """One pass over the loader; means over all processes; stops on a non-finite loss.

    After each optimizer step the model's optional ``on_step_end(progress)`` hook runs
    (progress = global step / total steps of ``total_epochs``, for EMA teachers and momentum
    schedules). A model with ``uses_index = True`` (MoCo: its queue remembers whose keys it
    holds) is called as ``net(views, index)`` with the batch's sample indices. ``augment`` (``--gpu-aug``) turns a device batch of raw images into the
    pretext's views. ``clip_grad`` > 0 (``--clip-grad``) caps each parameter tensor's gradient norm
    after backward, before the step (DINO's ``clip_gradients``).
    """
    net.train()
    model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    on_step_end = getattr(model, "on_step_end", None)
    uses_index = getattr(model, "uses_index", False)
    trained = [p for p in model.parameters() if p.requires_grad] if clip_grad > 0 else []
    iters = len(loader)  # type: ignore[arg-type]
    total_steps = max(1, total_epochs * iters)
    dev = rt.device
    acc = torch.float32 if dev.type == "mps" else torch.float64
    sums: dict[str, torch.Tensor] = {}        # loss and every stat of the pretext, summed over steps
    host: dict[str, float] = {}               # stats a pretext reports as python floats (no sync needed)
    n_bad = torch.zeros((), dtype=acc, device=dev)
    bad_iter = torch.full((), -1.0, dtype=acc, device=dev)   # iteration and loss of the first bad step
    bad_value = torch.zeros((), dtype=acc, device=dev)
    batches, n_images = 0, 0
    t0 = time.perf_counter()
    bar = use_tqdm(rt)
    it_loader = loader
    if bar:
        from tqdm import tqdm
        it_loader = tqdm(loader, total=iters, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)
    for i, (views, _, index) in enumerate(it_loader):
        step = epoch * iters + i
        lr = schedule.step(optimizer, step)
        views = move_to(views, dev, rt.channels_last)
        if augment is not None:
            views = augment(views, step)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=rt.amp):
            loss, stats = net(views, index.to(dev, non_blocking=True)) if uses_index else net(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trained:
            clip_grad_per_tensor(trained, clip_grad)
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
