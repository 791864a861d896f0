"""Several processes: the cross-sample terms of modes 911-916 are global.

One gloo run with 2 processes x 8 images against 1 process x 16 images, on the same
embeddings (models without BatchNorm: on CPU there is no SyncBN, see README):
- Barlow Twins and VICReg: batch statistics over the gathered rows -> same loss, same
  DDP gradients (and each process's local-only loss differs, so a missing gather fails);
- MoCo: the keys of both processes enter the queue in rank order -> same loss, gradients,
  queue and pointer;
- MoCo v3: each query meets the keys of both processes, its positive at rank x rows + i ->
  the mean of the processes' losses and the DDP gradients are the one process's;
- DINO: the centre moves to the mean teacher output of the global batch -> same loss,
  gradients and centre.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from losses import BarlowTwinsLoss, MoCoV3Loss, VICRegLoss
from models.pretext.dino import DINO
from models.pretext.moco import MoCo

N, IN_DIM, OUT_DIM, WORLD = 16, 12, 6, 2



class TinyBackbone(nn.Module):
    """A BN-free stand-in backbone (pooled features = one linear layer on the flattened input)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(IN_DIM, 10)
        self.out_dim = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x.flatten(1)))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(N, IN_DIM, generator=g)
    return x_a, x_a + 0.5 * torch.randn(N, IN_DIM, generator=g)


def _models() -> dict[str, nn.Module]:
    """The same initial models in every process."""
    torch.manual_seed(0)
    return {"barlow": nn.Linear(IN_DIM, OUT_DIM), "vicreg": nn.Linear(IN_DIM, OUT_DIM),
            "mocov3": nn.Linear(IN_DIM, OUT_DIM),
            "moco": MoCo(TinyBackbone(), feature_dim=OUT_DIM, hidden_dim=8, queue=40, momentum=0.9, tau=0.2),
            "dino": DINO(TinyBackbone(), out_dim=OUT_DIM * 3, hidden_dim=8, bottleneck=4, momentum=0.9,
                         student_temp=0.1, teacher_temp=0.04, center_momentum=0.9, freeze_last=0.0)}


def step(name: str, net: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """One forward (and the method's update after the step) on these rows; returns the loss."""
    if name == "barlow":
        loss = BarlowTwinsLoss(5e-3)(net(x_a), net(x_b))
    elif name == "vicreg":
        loss = VICRegLoss()(net(x_a), net(x_b))
    elif name == "mocov3":                       # keys: a fixed map of the same rows, as a key encoder's
        key = torch.linspace(-1, 1, IN_DIM * OUT_DIM).view(OUT_DIM, IN_DIM)
        loss = MoCoV3Loss(0.2)(net(x_a), net(x_b), x_a @ key.T, x_b @ key.T)
    elif name == "dino":
        loss, _ = net([x_a, x_b, x_a[:, :IN_DIM] * 0.5])
    else:
        loss, _ = net((x_a, x_b))
    loss.backward()
    model = getattr(net, "module", net)
    if hasattr(model, "on_step_end"):
        model.on_step_end(0.5)
    return loss.detach()


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {f"grad.{k}": p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    out.update({f"buf.{k}": b.clone() for k, b in model.named_buffers()})
    return out


def _worker(rank: int, url: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=url, world_size=WORLD, rank=rank)
    try:
        x_a, x_b = _inputs()
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        results = {}
        for name, model in _models().items():
            ddp = nn.parallel.DistributedDataParallel(model)
            loss = step(name, ddp, x_a[rows], x_b[rows])
            results[name] = {"loss": loss, **state_of(model)}
        with torch.no_grad():     # the loss each process would compute without the gather
            m = _models()
            results["barlow_local"] = BarlowTwinsLoss(gather=False)(m["barlow"](x_a[rows]), m["barlow"](x_b[rows]))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()     # no rank tears gloo down while another's collectives are in flight (a SIGABRT, once)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    x_a, x_b = _inputs()
    models = _models()
    for name, model in models.items():
        single = step(name, model, x_a, x_b)
        ref = state_of(model)
        per_sample_mean = name in ("moco", "mocov3", "dino")      # each process averages its own rows
        got = [r[name] for r in ranks]
        loss = sum(g["loss"] for g in got) / WORLD if per_sample_mean else got[0]["loss"]
        assert abs(loss.item() - single.item()) < 1e-5, name
        if not per_sample_mean:                          # the global loss, identical on every process
            assert abs(got[1]["loss"].item() - single.item()) < 1e-5, name
        grad_keys = [k for k in ref if k.startswith("grad.")]
        assert grad_keys and any(ref[k].abs().max() > 1e-4 for k in grad_keys), name
        for g in got:
            assert set(g) - {"loss"} == set(ref), name
            for k, v in ref.items():
                torch.testing.assert_close(g[k], v, rtol=1e-4, atol=1e-6, msg=f"{name} {k}")
    # a missing gather would show: the local-only Barlow loss differs from the global one
    assert abs(ranks[0]["barlow_local"].item() - ranks[0]["barlow"]["loss"].item()) > 1e-3
    # MoCo: the queue holds both processes' keys, rank 0's rows first; DINO's centre moved
    assert int(ranks[0]["moco"]["buf.queue_ptr"]) == N
    assert ranks[1]["dino"]["buf.criterion.center"].abs().sum() > 0
