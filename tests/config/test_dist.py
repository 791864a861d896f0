"""config.dist: single-process fallbacks, and gather_with_grad forward/backward in 2 gloo processes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from config.errors import UserError
from config import dist as edist

ROWS, COLS = 3, 2



def _rows_of(rank: int) -> torch.Tensor:
    """Rank-specific input: distinct values so a wrong order or slice shows."""
    return torch.arange(ROWS * COLS, dtype=torch.float64).view(ROWS, COLS) + 100 * rank


def _weights_of(rank: int, world: int) -> torch.Tensor:
    """Rank-specific weights on the gathered tensor: rank r's loss is sum(w_r * gathered)."""
    return (rank + 1) * torch.arange(world * ROWS * COLS, dtype=torch.float64).view(world * ROWS, COLS)


def _gather_worker(rank: int, world: int, url: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    edist.setup_process_group("gloo", url, world, rank)
    try:
        t = _rows_of(rank).requires_grad_()
        gathered = edist.gather_with_grad(t)
        (gathered * _weights_of(rank, world)).sum().backward()
        torch.save({
            "gathered": gathered.detach(), "grad": t.grad, "nograd": edist.all_gather_nograd(t),
            "info": (edist.is_dist(), edist.rank(), edist.world_size(), edist.is_main()),
        }, Path(out_dir) / f"rank{rank}.pt")
    finally:
        edist.cleanup()
        assert not edist.is_dist()


def test_gather_with_grad_two_processes(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_gather_worker, args=(world, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    expected = torch.cat([_rows_of(r) for r in range(world)])
    # d(sum_r loss_r)/d(rows of rank k) = sum_r w_r[rows of k] = (1 + 2) * w_0[rows of k]
    total_w = sum(_weights_of(r, world) for r in range(world))
    for rank, res in enumerate(results):
        assert res["info"] == (True, rank, world, rank == 0)
        torch.testing.assert_close(res["gathered"], expected, rtol=0, atol=0)
        torch.testing.assert_close(res["nograd"], expected, rtol=0, atol=0)
        torch.testing.assert_close(res["grad"], total_w[rank * ROWS:(rank + 1) * ROWS], rtol=0, atol=0)
    torch.testing.assert_close(results[1]["grad"][0], torch.tensor([18.0, 21.0], dtype=torch.float64))


def test_single_process_fallbacks() -> None:
    assert not edist.is_dist()
    assert (edist.rank(), edist.world_size(), edist.is_main()) == (0, 1, True)
    t = torch.randn(4, 3, requires_grad=True)
    assert edist.gather_with_grad(t) is t
    assert edist.all_gather_nograd(t) is t
    edist.cleanup()


@pytest.mark.skipif(torch.cuda.is_available(), reason="NCCL is usable where a GPU is visible")
def test_nccl_without_gpu_is_a_user_error() -> None:
    with pytest.raises(UserError, match="gloo"):
        edist.setup_process_group("nccl", "tcp://127.0.0.1:1", 1, 0)
    assert not dist.is_initialized()
