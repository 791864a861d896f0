"""The pretraining epoch loop: host synchronisations, device-side accumulation, the non-finite
stop, the on_step_end hook, bf16/channels_last on CPU, and per-sample augmentation seeds
(persistent workers, 2 gloo ranks, resume)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Dataset, default_collate

import models.pretext as pretexts
from config.codes import decode_mode
from engine import loaders, loop, plan, pretrain, pretrain_flags, recipes
from engine.cli import base_parser
from engine.optim import build_optimizer
from engine.runtime import Runtime, TrainingDiverged
from engine.schedules import LRSchedule
from models import build_backbone
from tests.conftest import REPO
from tests.models.pretext_data import make_opt, raw_images

BANDS = 4
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__")


pytestmark = pytest.mark.usefixtures("one_thread")


@contextmanager
def count_host_syncs(monkeypatch):
    """Record every call of a tensor->host method made FROM the project's code (not torch's, not the tests')."""
    calls: list[tuple[str, str, int]] = []
    tests = str(REPO / "tests")
    venv = str(REPO / ".venv")         # `make` installs the packages inside the checkout
    for name in SYNC_METHODS:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, _real=real, _name=name, **k):
            frame = sys._getframe(1)
            path = frame.f_code.co_filename
            if (path.startswith(str(REPO)) and not path.startswith((tests, venv))
                    and "site-packages" not in path):
                calls.append((_name, path, frame.f_lineno))
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapper)
    yield calls
    monkeypatch.undo()


def pretrain_args(code: int, *extra: str):
    return pretrain_flags.add_args(base_parser("", "pretrain")).parse_args(["--mode", str(code), "--no-progress", *extra])


def setup(code: int, n_batches: int = 3, bs: int = 4, size: int = 32, lr: float = 1e-3, *extra: str):
    """Model, optimizer, schedule and pre-collated batches of mode ``code`` (views made before any count)."""
    torch.manual_seed(0)
    args = pretrain_args(code, *extra)
    mode = decode_mode(code, "pretrain")
    module = pretexts.load(mode)
    recipes.resolve(args, module)
    plan.resolve_head_flags(args, mode, module)
    if args.feature_dim is not None:                # tiny heads: the test is about the loop, not the method
        args.feature_dim = 32
    for dest, value in (("hidden_dim", 32), ("local_crops", 2), ("decoder_depth", 1), ("decoder_dim", 32),
                        ("band_groups", "B01,B02;B03,B04")):
        if hasattr(args, dest):
            setattr(args, dest, value)
    if hasattr(module, "check_args"):
        module.check_args(args)
    if hasattr(module, "check_data"):
        module.check_data(args, n_batches * bs * 4, bs)
    opt = make_opt(BANDS, size)
    netnum = "110000" if getattr(module, "VIT_ONLY", False) else "000000"   # MAE (930/931): a ViT-Tiny/16
    backbone, _ = build_backbone(netnum, BANDS, input_size=size)
    model = module.build(args, opt, backbone)
    view = module.make_transform(args, opt)
    raw = raw_images(n_batches * bs, BANDS, side=size + 8)
    batches = [(default_collate([view(x) for x in raw[i:i + bs]]), torch.zeros(bs, dtype=torch.long),
                torch.arange(i, i + bs)) for i in range(0, n_batches * bs, bs)]
    optimizer = (module.build_optimizer(args, model, lr) if hasattr(module, "build_optimizer")
                 else build_optimizer("adam", model, lr))
    schedule = LRSchedule("cosine", lr, 2, n_batches)
    return args, model, optimizer, schedule, batches


@pytest.mark.parametrize("code", pretexts.implemented())
def test_one_host_sync_per_epoch_in_every_mode(code, monkeypatch):
    """Every mode: 3 training steps make exactly one tensor->host read (the epoch's totals)."""
    args, model, optimizer, schedule, batches = setup(code)
    rt = Runtime(torch.device("cpu"))
    with count_host_syncs(monkeypatch) as calls:
        stats = loop.train_one_epoch(model, batches, optimizer, schedule, 0, rt, args.mepoch, None)
    assert len(calls) == 1, calls
    assert calls[0][0] == "tolist" and calls[0][1].endswith("engine/loop.py")
    assert all(isinstance(v, float) for v in stats.values()) and stats["loss"] == stats["loss"]   # finite floats


def test_device_augmentation_adds_no_host_sync(monkeypatch):
    """--gpu-aug: the views are made in the loop from raw batches, still one host read per epoch,
    and the views of a step depend only on (seed, rank, step)."""
    args, model, optimizer, schedule, _ = setup(910)
    raw = raw_images(12, BANDS, side=40)
    batches = [(raw[i:i + 4], torch.zeros(4, dtype=torch.long), torch.arange(i, i + 4)) for i in range(0, 12, 4)]
    from datasets.gpu_aug import BatchViews
    opt = make_opt(BANDS, 32)
    augment = loaders.DeviceAugment(BatchViews(5, "S5", opt.input_size, opt.mean, opt.std, opt.rgb_index), 0, 0)
    with count_host_syncs(monkeypatch) as calls:
        stats = loop.train_one_epoch(model, batches, optimizer, schedule, 0, Runtime(torch.device("cpu")), args.mepoch,
                                     None, augment=augment)
    assert len(calls) == 1, calls
    assert 0 < stats["loss"] < 10
    a1, b1 = augment(raw[:4], 5)
    a2, b2 = augment(raw[:4], 5)
    a3, _ = augment(raw[:4], 6)
    assert a1.shape == (4, BANDS, 32, 32) and torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, a3)


def test_epoch_means_equal_the_steps_values():
    """With the optimizer step a no-op the weights stay put, so each batch's loss and emb_std can be
    recomputed afterwards."""
    args, model, optimizer, schedule, batches = setup(910)
    optimizer.step = lambda: None
    rt = Runtime(torch.device("cpu"))
    stats = loop.train_one_epoch(model, batches, optimizer, schedule, 0, rt, args.mepoch, None)
    model.train()
    with torch.no_grad():
        per_step = [model(views) for views, _, _ in batches]
    assert stats["loss"] == pytest.approx(sum(l.item() for l, _ in per_step) / 3, rel=1e-5)
    assert stats["emb_std"] == pytest.approx(sum(s["emb_std"].item() for _, s in per_step) / 3, rel=1e-5)
    assert stats["img_per_s"] > 0 and stats["seconds"] > 0


def test_non_finite_loss_stops_after_the_epoch_naming_the_step():
    args, model, optimizer, schedule, batches = setup(910)
    real, calls = type(model).forward, {"n": 0}

    def nan_at_step_two(self, views):
        loss, stats = real(self, views)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), stats

    model.forward = nan_at_step_two.__get__(model)
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at epoch 4, iteration 2; nothing from this epoch"):
        loop.train_one_epoch(model, batches, optimizer, schedule, 3, Runtime(torch.device("cpu")), args.mepoch,
                             Path("last.pth"))
    assert calls["n"] == 3          # the epoch ran to its end: the check is read once, after it


def test_on_step_end_gets_the_run_progress():
    args, model, optimizer, schedule, batches = setup(910)
    seen: list[float] = []
    model.on_step_end = seen.append
    loop.train_one_epoch(model, batches, optimizer, schedule, 1, Runtime(torch.device("cpu")), 2, None)
    assert seen == pytest.approx([4 / 6, 5 / 6, 6 / 6])


def test_the_loop_hands_sample_indices_to_a_model_that_uses_them():
    """MoCo (uses_index): forward gets each batch's sample indices; a queue long enough to hold the first
    epoch's keys then finds every query's own image in it, masked (contamination 0). Other models get views only."""
    args, model, optimizer, schedule, batches = setup(911, 3, 4, 32, 1e-3, "--moco-queue", "12",
                                                      "--moco-bn-splits", "2")
    assert model.uses_index and not getattr(setup(910)[1], "uses_index", False)
    got: list[torch.Tensor] = []
    real = model.forward
    model.forward = lambda views, index=None: (got.append(index), real(views, index))[1]
    rt = Runtime(torch.device("cpu"))
    first = loop.train_one_epoch(model, batches, optimizer, schedule, 0, rt, args.mepoch, None)
    assert [t.tolist() for t in got] == [b[2].tolist() for b in batches]
    second = loop.train_one_epoch(model, batches, optimizer, schedule, 1, rt, args.mepoch, None)
    assert first["moco_own_keys"] == 0.0 and second["moco_own_keys"] == 1.0
    assert first["moco_contamination"] == second["moco_contamination"] == 0.0
    assert sorted(model.queue_index.tolist()) == list(range(12))


def test_bf16_autocast_and_channels_last_run_on_cpu():
    """--amp and --channels-last take effect on CPU: bf16 convolutions, channels_last inputs."""
    args, model, optimizer, schedule, batches = setup(910)
    model.to(memory_format=torch.channels_last)
    seen: dict[str, object] = {}

    def record(module, inputs, output):
        seen.setdefault("dtype", output.dtype)
        seen.setdefault("channels_last", inputs[0].is_contiguous(memory_format=torch.channels_last))

    model.backbone.register_forward_hook(record)
    rt = Runtime(torch.device("cpu"), amp=True, channels_last=True)
    stats = loop.train_one_epoch(model, batches, optimizer, schedule, 0, rt, args.mepoch, None)
    assert seen == {"dtype": torch.bfloat16, "channels_last": True}
    assert 0 < stats["loss"] < 10 and 0 < stats["emb_std"] < 1


def test_cli_amp_channels_last_on_cpu(demo_root, tmp_path, caplog):
    import logging

    import main_cls_ss_train
    caplog.set_level(logging.INFO)
    main_cls_ss_train.main(["--mode", "910", "--ds", "demo", "--data-root", str(demo_root), "--netnum", "000000",
                            "--input_size", "32", "--bs", "16", "--ts", "3", "--mepoch", "1", "--workers", "0", "--knn-freq", "0",
                            "--ckpt", str(tmp_path), "--no-progress", "--amp", "--channels-last", "--expnum", "1_pretrain"])
    assert "--amp on CPU: bf16 autocast runs" in caplog.text
    state = torch.load(tmp_path / "000000_1_pretrain_1.pth", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state["backbone"].values())     # weights stay float32


# ------------------------------------------------------------------ per-sample augmentation seeds
class RawViews(Dataset):
    """SimCLR views of fixed raw images (what RasterDataset hands out, without files)."""

    def __init__(self, n: int = 24) -> None:
        args = pretrain_args(910)
        self.view = pretexts.load(decode_mode(910, "pretrain")).make_transform(args, make_opt(BANDS, 16))
        self.raw = raw_images(n, BANDS, side=24)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int):
        return self.view(self.raw[i]), 0, i


def _first_batches(rank: int, world: int, epochs: int, workers: int) -> list:
    rt = Runtime(torch.device("cpu"), rank=rank, world=world, distributed=dist.is_initialized())
    loader, sampler = loaders.make_loader(RawViews(), 4, rt, workers, seed=7)
    out = []
    for e in range(epochs):
        sampler.set_epoch(e)
        views, _, idx = next(iter(loader))
        out.append((idx, views[0], views[1]))
    return out


def _rank_worker(rank: int, world: int, url: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=url, world_size=world, rank=rank)
    try:
        torch.save(_first_batches(rank, world, 2, workers=2), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _two_ranks(out: Path) -> list:
    out.mkdir()
    # a file rendezvous: no port to race for with other jobs on the machine
    mp.start_processes(_rank_worker, args=(2, f"file://{out}/rendezvous", str(out)), nprocs=2, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_two_ranks_two_workers_draw_their_own_views_reproducibly(tmp_path):
    """2 gloo processes x 2 persistent workers: each rank its own images and augmentations, and the
    same views again when rank r's draws are redone here (no process group, no workers)."""
    first = _two_ranks(tmp_path / "a")
    for epoch in range(2):
        (i0, _, _), (i1, _, _) = first[0][epoch], first[1][epoch]
        assert set(i0.tolist()).isdisjoint(i1.tolist())                   # each rank its own images (their
        # augmentations differ by rank even for one image: test_ranks_drawing_the_same_image_get_their_own_views)
    for r in range(2):
        again = _first_batches(r, 2, 2, workers=0)
        for epoch in range(2):
            for x, y in zip(first[r][epoch], again[epoch]):
                assert torch.equal(x, y)                                 # the same seed: the same views
    assert not torch.equal(first[0][0][1], first[0][1][1])             # a new epoch reaches persistent workers


def test_ranks_drawing_the_same_image_get_their_own_views():
    """Issue 19: two ranks that draw the SAME image in the same epoch must make different views of it (the rank is
    part of every sample's seed); with the rank left out they would collide. Disjoint images (the test above)
    cannot show this: their views differ anyway."""
    from engine.runtime import PerSampleSeed, SeededSampler
    data = PerSampleSeed(RawViews())
    views = {}
    for rank in (0, 1, 0):
        sampler = SeededSampler(list(range(6)), seed=7, rank=rank)
        sampler.set_epoch(3)
        views.setdefault(rank, []).append([data[key][0][0] for key in sampler])
    (r0, again), (r1,) = views[0], views[1]
    assert all(torch.equal(a, b) for a, b in zip(r0, again))                 # a rank's draws are reproducible
    assert not any(torch.equal(a, b) for a, b in zip(r0, r1))                # and its own, image by image


def test_persistent_workers_give_a_resumed_epoch_the_same_views():
    """Epoch 2 after epochs 0-1 in persistent workers == epoch 2 of a fresh loader (a --resume), and
    == the same epoch drawn without workers."""
    run = _first_batches(0, 1, 3, workers=2)
    loader, sampler = loaders.make_loader(RawViews(), 4, Runtime(torch.device("cpu")), 2, seed=7)
    assert loader.persistent_workers
    sampler.set_epoch(2)
    resumed = next(iter(loader))
    inline = _first_batches(0, 1, 3, workers=0)[2]
    for x, y, z in zip(run[2], (resumed[2], *resumed[0]), inline):
        assert torch.equal(x, y) and torch.equal(x, z)


def test_main_process_sampling_leaves_the_global_rng_alone():
    """--workers 0: drawing the views does not move torch's generator (the step's own randomness)."""
    loader, sampler = loaders.make_loader(RawViews(), 4, Runtime(torch.device("cpu")), 0, seed=0)
    sampler.set_epoch(0)
    torch.manual_seed(3)
    expect = torch.rand(3)
    torch.manual_seed(3)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expect)


# ------------------------------------------------------------------ SyncBatchNorm default
@pytest.mark.parametrize("code,flags,device,distributed,expect", [
    (910, [], "cuda", True, True),                     # contrastive, several GPU processes: on by default
    (920, [], "cuda", True, True),                     # multi-branch with exemplar contrast
    (910, ["--no-sync-bn"], "cuda", True, False),      # opted out
    (96, [], "cuda", True, False),                     # per-image loss: per-process BN is fine
    (96, ["--sync-bn"], "cuda", True, True),           # --sync-bn keeps working
    (910, [], "cuda", False, False),                   # one process: nothing to synchronise
    (910, [], "cpu", True, False),                     # no CPU kernel: BN per process
])
def test_sync_bn_default(code, flags, device, distributed, expect):
    args = pretrain_args(code, *flags)
    module = pretexts.load(decode_mode(code, "pretrain"))
    rt = Runtime(torch.device(device), world=2 if distributed else 1, distributed=distributed)
    stand_in = SimpleNamespace(module=module, sync_bn="on" if args.sync_bn else "off" if args.no_sync_bn else "auto")
    assert pretrain.use_sync_bn(stand_in, rt) is expect


def test_sync_bn_flags_contradicting_exit_2(demo_root, tmp_path, capsys):
    import main_cls_ss_train
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(["--mode", "910", "--ds", "demo", "--data-root", str(demo_root), "--ckpt", str(tmp_path),
                                "--sync-bn", "--no-sync-bn"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--sync-bn and --no-sync-bn contradict each other" in err and "Traceback" not in err


def dino_clip_gradients(model: torch.nn.Module, clip: float) -> None:
    """facebookresearch/dino utils.clip_gradients, transcribed: each parameter's gradient on its own."""
    for _, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def test_clip_grad_caps_each_tensor_after_backward_as_dino_does(monkeypatch):
    """--clip-grad: the gradients the optimiser steps with are DINO's clip_gradients of the backward's (at a cap
    that clips some tensors and not others), with no extra host sync; 0 leaves them as backward made them."""
    import copy
    args, model, optimizer, schedule, batches = setup(910, 1)
    ref = copy.deepcopy(model)
    loss, _ = ref(batches[0][0])
    loss.backward()
    norms = sorted(float(p.grad.norm()) for p in ref.parameters() if p.grad is not None)
    cap = norms[len(norms) // 2]                            # the median: half the tensors are clipped
    raw = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    dino_clip_gradients(ref, cap)
    expect = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert sum(not torch.equal(raw[n], expect[n]) for n in raw) >= len(raw) // 2 - 1
    seen: dict[str, torch.Tensor] = {}
    optimizer.step = lambda: seen.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    rt = Runtime(torch.device("cpu"))
    with count_host_syncs(monkeypatch) as calls:
        loop.train_one_epoch(model, batches, optimizer, schedule, 0, rt, args.mepoch, None, clip_grad=cap)
    assert len(calls) == 1, calls
    assert seen.keys() == expect.keys()
    for n in expect:
        torch.testing.assert_close(seen[n], expect[n], rtol=1e-5, atol=1e-8)
        assert float(seen[n].norm()) <= cap * (1 + 1e-5)
    loop.train_one_epoch(model, batches, optimizer, schedule, 0, rt, args.mepoch, None, clip_grad=0.0)
    ref.zero_grad()
    ref.load_state_dict(model.state_dict())
    ref(batches[0][0])[0].backward()
    for n, p in ref.named_parameters():                     # off: the step sees the backward's gradients
        if p.grad is not None:
            torch.testing.assert_close(seen[n], p.grad, rtol=1e-5, atol=1e-8)
