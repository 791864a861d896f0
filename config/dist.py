"""Small helpers around ``torch.distributed``, safe to call in a single process.

Every helper degrades to the single-process answer when no process group is
initialised, so library code (losses, logging) can call them unconditionally.
Contrastive losses need the negatives of ALL processes with gradient, so that
2 processes x 64 images train exactly like 1 process x 128 images:
:func:`gather_with_grad` provides that and works on gloo (CPU) as well as NCCL.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from config.errors import EXIT_USAGE, UserError, user_message

log = logging.getLogger(__name__)


def is_dist() -> bool:
    """True when a process group is initialised (i.e. this is one of several processes)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on the process that logs, evaluates and writes checkpoints (rank 0)."""
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sends each rank the gradient of its own rows.

    Every rank's loss uses the rows of all ranks, so the gradient of this rank's input
    is the SUM over ranks of the gradient each rank computed for these rows: an
    all_reduce of the full gradient followed by taking this rank's slice (gloo has no
    reduce_scatter, so the slice is cut after a plain all_reduce).
    """

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rows = t.shape[0]
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from all ranks along dim 0 (rank order), keeping gradients.

    All ranks must pass tensors of the same shape. Identity when not distributed.
    """
    if not is_dist() or world_size() == 1:
        return t
    return _GatherWithGrad.apply(t)


@torch.no_grad()
def all_gather_nograd(t: Tensor) -> Tensor:
    """Concatenate ``t`` from all ranks along dim 0 without gradient (metrics, features)."""
    if not is_dist() or world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def setup_process_group(backend: str, init_method: str, world_size: int, rank: int) -> None:
    """Join the process group (``--dist-backend``, ``--dist-url``): NCCL on GPUs, gloo on CPU."""
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError(f"--dist-backend {backend} needs CUDA GPUs and none is visible; use --dist-backend gloo on CPU")
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run without --mp-distributed")
    dist.init_process_group(backend=backend, init_method=init_method, world_size=world_size, rank=rank)
    log.debug("process group up: backend %s, rank %d of %d", backend, rank, world_size)


def cleanup() -> None:
    """Leave the process group, if one is initialised."""
    if is_dist():
        dist.destroy_process_group()


def spawn(fn: Callable[..., None], nprocs: int, args: tuple) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)``: when one process fails, all end.

    A :class:`UserError` in any process ends the run with THAT sentence and exit 2, even
    when another process fails first with a follow-on error (a gloo "connection reset"
    once its peer is gone): each process writes its sentence to a file before it exits,
    and those files win. Other failures keep their traceback (exit 1).
    """
    import torch.multiprocessing as mp

    errdir = Path(tempfile.mkdtemp(prefix="rsssl-spawn-"))
    try:
        mp.spawn(_guarded, nprocs=nprocs, args=(fn, errdir, *args), join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
        sentences = sorted(errdir.glob("rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
        if sentences:
            raise UserError(sentences[0].read_text(encoding="utf-8")) from None
        text = str(err).strip()
        if "TrainingDiverged: " in text:
            log.error("%s", text[text.rfind("TrainingDiverged: ") + len("TrainingDiverged: "):])
        else:
            log.error("a training process failed:\n%s", text)
        sys.exit(1)
    finally:
        shutil.rmtree(errdir, ignore_errors=True)


def _guarded(index: int, fn: Callable[..., None], errdir: Path, *args) -> None:
    """Run one spawned process; a user error leaves its sentence in ``errdir`` and exits 2."""
    try:
        fn(index, *args)
    except UserError as err:
        tmp = errdir / f".rank{index}.txt"
        tmp.write_text(user_message(err), encoding="utf-8")
        tmp.rename(errdir / f"rank{index}.txt")
        sys.exit(EXIT_USAGE)
