"""Modes 911-916 (MoCo v2, BYOL, SimSiam, Barlow Twins, VICReg, DINO): models, their
per-step updates, flags, and runs through the real entry script (tiny demo data, CPU).

The losses themselves are checked against the papers' pseudo-code in
tests/losses/test_ssl_losses.py, the multi-process behaviour in tests/losses/test_ssl_dist.py.
"""
from __future__ import annotations

import argparse
import csv
import math

import pytest
import torch

import main_cls_ss_train
from config.errors import UserError
from engine import checkpoint as ckpt
from engine import pretrain, pretrain_flags, recipes
from engine.cli import base_parser
from models import build_backbone, build_model
from models.pretext import byol, dino, moco, simsiam, barlow, vicreg
from models.pretext.ema import cosine_momentum
from tests.models.pretext_data import make_opt, raw_images

MODES = {911: moco, 912: byol, 913: simsiam, 914: barlow, 915: vicreg, 916: dino}
SMALL = {"feature_dim": 16, "hidden_dim": 32, "pred_hidden": 8, "tau": None}


def namespace(module, recipe: str = "paper", **over) -> argparse.Namespace:
    """The parsed flags of ``module`` resolved by ``recipe``, small heads, plus ``over``."""
    args = pretrain_flags.add_args(base_parser("", "pretrain")).parse_args(["--recipe", recipe, "--mepoch", "2"])
    for k, v in {**SMALL, **over}.items():
        setattr(args, k, v)
    recipes.resolve(args, module)
    args.tau = args.tau or getattr(module, "TAU", None)
    if module is moco and "moco_queue" not in over:
        args.moco_queue = 12
    if module is moco and "moco_bn_splits" not in over:
        args.moco_bn_splits = 1
    return args


def built(module, bands: int = 13, **over):
    torch.manual_seed(0)
    args = namespace(module, **over)
    backbone, _ = build_backbone("000000", bands)
    return module.build(args, make_opt(bands, 16), backbone), args


def batch(module, args, bands: int = 13, n: int = 4):
    tf = module.make_transform(args, make_opt(bands, 16))
    views = [tf(x) for x in raw_images(n, bands, side=20)]
    return [torch.stack(v) for v in zip(*views)]


@pytest.mark.parametrize("code", sorted(MODES))
def test_forward_backward_and_stats(code: int) -> None:
    module = MODES[code]
    model, args = built(module)
    views = batch(module, args)
    assert len(views) == (2 + 8 if code == 916 else 2)          # DINO: the paper recipe's 8 local crops
    loss, stats = model(views)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in stats.values())
    assert 0 < float(stats["emb_std"]) < 1
    assert model.backbone.stages[0][0].conv1.weight.grad.abs().sum() > 0
    # frozen copies take no gradient and are not trained
    for name, p in model.named_parameters():
        if name.startswith(("key_", "target_", "teacher_")):
            assert not p.requires_grad and p.grad is None, name


def test_moco_momentum_update_and_queue() -> None:
    model, args = built(moco, moco_queue=6, moco_momentum=0.999)
    views = batch(moco, args)
    q0 = model.queue.clone()
    key0 = [p.clone() for p in model.key_backbone.parameters()]
    with torch.no_grad():                                     # a stand-in optimiser step
        for p in model.backbone.parameters():
            p.add_(0.01)
    model(views)
    keys = tuple(t.clone() for t in model._pending)
    model.on_step_end(0.1)
    for k0, k, q in zip(key0, model.key_backbone.parameters(), model.backbone.parameters()):
        torch.testing.assert_close(k, 0.999 * k0 + 0.001 * q, rtol=0, atol=1e-7)
    keys = keys[0]
    torch.testing.assert_close(model.queue[:4], keys) and torch.testing.assert_close(model.queue[4:], q0[4:])
    assert int(model.queue_ptr) == 4 and torch.allclose(keys.norm(dim=1), torch.ones(4))
    model(views)
    keys2 = model._pending[0].clone()
    model.on_step_end(0.2)                                    # wraps around: 4 + 4 > 6
    assert int(model.queue_ptr) == 2
    torch.testing.assert_close(model.queue[4:], keys2[:2]) and torch.testing.assert_close(model.queue[:2], keys2[2:])


def test_moco_queue_length_from_the_data() -> None:
    args = namespace(moco, moco_queue=None)
    moco.check_data(args, 375, 64)
    assert args.moco_queue == 311                             # 375 - 64 < 65,536
    args = namespace(moco, moco_queue=None)
    moco.check_data(args, 200_000, 256)
    assert args.moco_queue == 65536
    args = namespace(moco, "small", moco_queue=None)          # the recipe's 4,096, capped at the data too
    moco.check_data(args, 200_000, 256)
    assert args.moco_queue == 4096
    args = namespace(moco, moco_queue=400)                    # given: kept (own keys are masked)
    moco.check_data(args, 375, 64)
    assert args.moco_queue == 400
    with pytest.raises(UserError, match="lower --bs"):
        moco.check_data(namespace(moco, moco_queue=None), 64, 64)


def _moco_views(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 13, 16, 16, generator=g), torch.randn(n, 13, 16, 16, generator=g)]


def test_moco_never_uses_a_key_of_the_querys_own_image_as_a_negative() -> None:
    """6 images, batch 2, a queue of 16 keys (longer than the 4 = images - batch the default allows): from the
    second epoch on, keys of the query's own image sit in the queue, and none of them is a negative: the
    contamination rate is 0, and the loss equals InfoNCE with those keys removed from each query's denominator."""
    model, args = built(moco, moco_queue=16, moco_momentum=0.99)
    images = _moco_views(6, seed=0)
    own_seen = 0.0
    for epoch in range(4):
        order = torch.randperm(6, generator=torch.Generator().manual_seed(epoch))
        for step in range(3):
            index = order[2 * step:2 * step + 2]
            views = [v[index] for v in images]
            queue, queue_index = model.queue.clone(), model.queue_index.clone()
            loss, stats = model(views, index)
            assert float(stats["moco_contamination"]) == 0.0
            own_seen = max(own_seen, float(stats["moco_own_keys"]))
            with torch.no_grad():
                q = model.projector(model.backbone(views[0]))
                k = torch.nn.functional.normalize(model.key_projector(model.key_backbone(views[1])), dim=1)
            ref = sum(model.criterion(q[i:i + 1], k[i:i + 1], queue[queue_index != index[i]])
                      for i in range(2)) / 2
            assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
            if (queue_index[None] == index[:, None]).any():
                assert float(model.criterion(q, k, queue)) != pytest.approx(float(loss.detach()), rel=1e-6)
            model.on_step_end((epoch * 3 + step + 1) / 12)
            assert set(model.queue_index[(model.queue_ptr - 2 + torch.arange(2)) % 16].tolist()) == set(index.tolist())
    assert own_seen == 1.0          # every query of a later epoch had its own image's keys in the queue, masked


def test_split_batchnorm_normalises_each_group_and_keys_come_back_in_order() -> None:
    """The colab's SplitBatchNorm: image i normalised with the images j = i (mod S); running stats the mean of
    the groups'; eval = plain BN with the same state dict; the shuffled key batch is restored to its order."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    split = moco.split_batchnorm(torch.nn.Sequential(bn), 2)[0]
    assert isinstance(split, moco.SplitBatchNorm) and split.state_dict().keys() == bn.state_dict().keys()
    x = torch.randn(6, 3, 4, 4) * 3 + 1
    out = split(x)
    for g in range(2):
        xs = x[g::2]
        ref = (xs - xs.mean((0, 2, 3), keepdim=True)) / torch.sqrt(xs.var((0, 2, 3), unbiased=False, keepdim=True)
                                                                  + 1e-5)
        ref = ref * split.weight.view(1, 3, 1, 1) + split.bias.view(1, 3, 1, 1)
        torch.testing.assert_close(out[g::2], ref.detach(), rtol=1e-5, atol=1e-5)
    expect = 0.9 * torch.zeros(3) + 0.1 * torch.stack([x[g::2].mean((0, 2, 3)) for g in range(2)]).mean(0)
    torch.testing.assert_close(split.running_mean, expect, rtol=1e-5, atol=1e-6)
    split.eval()
    torch.testing.assert_close(split(x), torch.nn.functional.batch_norm(
        x, split.running_mean, split.running_var, split.weight, split.bias, False), rtol=0, atol=0)
    model, _ = built(moco, moco_bn_splits=2)
    assert model.bn_splits == 2
    model.eval()                                              # per-sample BN: the order is the only difference
    xk = _moco_views(4, seed=1)[1]
    torch.manual_seed(3)
    shuffled = model.keys(xk)
    plain = torch.nn.functional.normalize(model.key_projector(model.key_backbone(xk)), dim=1)
    torch.testing.assert_close(shuffled, plain, rtol=1e-5, atol=1e-6)


def test_moco_bn_splits_fit_the_batch() -> None:
    args = namespace(moco, moco_queue=None, moco_bn_splits=None)     # the recipe's 8
    moco.check_data(args, 375, 8)
    assert args.moco_bn_splits == 4                           # 8 images: 4 groups of 2
    args = namespace(moco, moco_queue=None, moco_bn_splits=None)
    moco.check_data(args, 375, 64)
    assert args.moco_bn_splits == 8
    with pytest.raises(UserError, match="--moco-bn-splits 3 must split --bs 64"):
        moco.check_data(namespace(moco, moco_queue=None, moco_bn_splits=3), 375, 64)
    args = namespace(moco, moco_queue=None, moco_bn_splits=None, mp_distributed=True)
    moco.check_data(args, 375, 64)
    assert args.moco_bn_splits == 1
    with pytest.raises(UserError, match="with several processes"):
        moco.check_data(namespace(moco, moco_queue=None, moco_bn_splits=8, mp_distributed=True), 375, 64)


def test_byol_target_follows_the_cosine_schedule() -> None:
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 0.5) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)
    model, _ = built(byol)
    t0 = [p.clone() for p in model.target_projector.parameters()]
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(0.5)
    model.on_step_end(0.5)
    for a, t, o in zip(t0, model.target_projector.parameters(), model.projector.parameters()):
        torch.testing.assert_close(t, 0.998 * a + 0.002 * o, rtol=0, atol=1e-6)
    model.on_step_end(1.0)                                    # momentum 1 at the end: no change
    after = [p.clone() for p in model.target_projector.parameters()]
    model.on_step_end(1.0)
    assert all(torch.equal(a, b) for a, b in zip(after, model.target_projector.parameters()))


def test_dino_keeps_the_teacher_and_freezes_the_last_layer_first() -> None:
    model, args = built(dino, local_crops=2, mepoch=4, dino_freeze_last=1)   # freeze 1 epoch of 4 = first quarter
    assert model.kept_backbone is model.teacher_backbone
    views = batch(dino, args)
    assert [v.shape[-1] for v in views] == [16, 16, 7, 7]
    model(views)[0].backward()
    assert model.head.last_layer.weight.grad.abs().sum() == 0
    assert model.head.mlp[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    model.on_step_end(0.25)
    model(views)[0].backward()
    assert model.head.last_layer.weight.grad.abs().sum() > 0
    # the centre moved towards the teacher outputs
    assert model.criterion.center.abs().sum() > 0


def test_dino_teacher_temperature_warm_up_and_freeze_schedules() -> None:
    """10 epochs of 5 steps: the teacher temperature rises linearly from 0.04 to 0.07 over the first 2 epochs
    (10 steps) and stays; the last layer gets no gradient during the first epoch (steps 0-4), then learns."""
    model, args = built(dino, local_crops=0, mepoch=10, teacher_temp=0.07, warmup_teacher_temp=0.04,
                        warmup_teacher_temp_epochs=2, dino_freeze_last=1)
    total = 50
    for step in (0, 1, 5, 9, 10, 11, 30, 49):
        model.progress.fill_(step / total)               # what on_step_end leaves before step `step`
        assert float(model.teacher_temp_now()) == pytest.approx(0.04 + 0.03 * min(1.0, step / 10), rel=1e-6)
    views = batch(dino, args)
    for step, frozen in ((0, True), (4, True), (5, False), (20, False)):
        model.zero_grad()
        model.progress.fill_(step / total)
        loss, stats = model(views)
        loss.backward()
        assert float(stats["teacher_temp"]) == pytest.approx(0.04 + 0.03 * min(1.0, step / 10), rel=1e-6)
        assert 0 < float(stats["teacher_entropy"]) <= 1
        assert (model.head.last_layer.weight.grad.abs().sum() == 0) == frozen, step
    constant, _ = built(dino, local_crops=0, teacher_temp=0.04, warmup_teacher_temp=0.04,
                        warmup_teacher_temp_epochs=0)
    assert float(constant.teacher_temp_now()) == pytest.approx(0.04)


def test_heads_follow_the_papers() -> None:
    backbone, _ = build_backbone("000000", 3)
    sizes = lambda m: [l.out_features for l in m if isinstance(l, torch.nn.Linear)]  # noqa: E731
    assert sizes(moco.MoCo(backbone).projector) == [512, 128]            # hidden = the backbone's width
    b = byol.BYOL(backbone)
    assert sizes(b.projector) == [4096, 256] and sizes(b.predictor) == [4096, 256]
    s = simsiam.SimSiam(backbone)
    assert sizes(s.projector) == [512, 512, 2048] and sizes(s.predictor) == [512, 2048]
    assert not s.projector[-1].affine
    assert sizes(barlow.BarlowTwins(backbone).projector) == [8192, 8192, 8192]
    assert sizes(vicreg.VICReg(backbone).projector) == [8192, 8192, 8192]
    assert (moco.TAU, moco.MOMENTUM, moco.QUEUE) == (0.2, 0.999, 65536)
    assert (byol.MOMENTUM, barlow.LAMBDA, vicreg.WEIGHTS) == (0.996, 0.0051, "25,25,1")
    assert (dino.TAU, dino.TEACHER_TEMP, dino.FEATURE_DIM, dino.LOCAL_CROPS) == (0.1, 0.04, 65536, 8)
    layers = [type(m).__name__ for m in dino.DINOHead(512, 64, 32, 16, use_bn=True).mlp]
    assert layers == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
    assert "BatchNorm1d" not in [type(m).__name__ for m in dino.DINOHead(512, 64, 32, 16).mlp]
    assert byol.AUG == barlow.AUG == vicreg.AUG == 6


def test_user_errors() -> None:
    with pytest.raises(UserError, match="--vicreg-weights"):
        vicreg.check_args(namespace(vicreg, vicreg_weights="25,25"))
    with pytest.raises(UserError, match="--moco-momentum 1.5"):
        moco.check_args(namespace(moco, moco_momentum=1.5))
    with pytest.raises(UserError, match="--local-crops -1"):
        dino.check_args(namespace(dino, local_crops=-1))
    with pytest.raises(UserError, match="--dino-center-momentum 1.0"):
        dino.check_args(namespace(dino, dino_center_momentum=1.0))
    with pytest.raises(UserError, match="--hidden-dim 0"):
        barlow.check_args(namespace(barlow, hidden_dim=0))
    with pytest.raises(UserError, match="local crops are 28 px .* --netnum 050000 needs at least 32 px"):
        dino.make_transform(namespace(dino, netnum="050000"), make_opt(13, 64))
    assert len(dino.make_transform(namespace(dino, netnum="050000", local_crops=0), make_opt(13, 64))(
        raw_images(1, 13, side=70)[0])) == 2


# --- through the entry script ------------------------------------------------------------------
def cli(root, ckpt_dir, mode: int, *extra: str) -> list[str]:
    """A SPEC-style command line, tiny: ResNet-18 small stem, 16 px, batch 8."""
    return ["--mode", str(mode), "--ds", "demo", "--data-root", str(root), "--netnum", "000000", "--ts", "1",
            "--input_size", "16", "--bs", "8", "--mepoch", "1", "--lr", "1e-3", "--lr_policy", "cosine",
            "--optimizer", "adam", "--workers", "0", "--ckpt", str(ckpt_dir), "--no-progress",
            "--feature_dim", "16", "--hidden-dim", "32", *extra]


@pytest.mark.parametrize("code", sorted(MODES))
def test_spec_command_line_trains_and_the_backbone_loads_in_main_cls(code, demo_root, tmp_path) -> None:
    extra = ["--local-crops", "2"] if code == 916 else []
    main_cls_ss_train.main(cli(demo_root, tmp_path, code, "--expnum", "1_pretrain", *extra))
    saved = tmp_path / "000000_1_pretrain_1.pth"
    meta = torch.load(saved, weights_only=True)["meta"]
    assert meta["mode"] == code and meta["pretext"] == MODES[code].__name__.rsplit(".", 1)[-1]
    # the recipe and what it resolved travel in the checkpoint (the user's --lr, --optimizer ... won)
    table = MODES[code].RECIPES["paper"]
    assert meta["args"]["recipe"] == "paper" and meta["args"]["lr"] == 1e-3 and meta["args"]["optimizer"] == "adam"
    assert meta["args"]["wd"] == recipes.pick(table["wd"], "convnet") and "wd" in meta["args"]["recipe_filled"]
    assert meta["args"]["lr_rule"] == "given" and "optimizer" not in meta["args"]["recipe_filled"]
    with open(tmp_path / "000000_1_pretrain_log.csv") as f:
        row = next(csv.DictReader(f))
    assert math.isfinite(float(row["loss"])) and 0 < float(row["emb_std"]) < 1 and 0 <= float(row["knn_top1"]) <= 100
    model = build_model("000000", 13, 6)
    ckpt.load_backbone(saved, model.backbone)
    state = torch.load(saved, weights_only=True)["backbone"]
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("code", [911, 916])
def test_resume_restores_queue_teacher_and_centre_exactly(code, demo_root, tmp_path, monkeypatch) -> None:
    extra = ["--mepoch", "2", "--ckpt_freq", "1", "--knn-freq", "0"] + (["--local-crops", "1"] if code == 916 else [])
    full, part = tmp_path / "full", tmp_path / "part"
    main_cls_ss_train.main(cli(demo_root, full, code, "--expnum", "1_pretrain", *extra))
    real = pretrain.train_one_epoch
    calls = {"n": 0}

    def crash_in_epoch_two(*a, **k):
        if calls["n"] == 1:
            raise KeyboardInterrupt("simulated crash")
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(pretrain, "train_one_epoch", crash_in_epoch_two)
    with pytest.raises(SystemExit) as stop:                  # Ctrl-C: exit 130
        main_cls_ss_train.main(cli(demo_root, part, code, "--expnum", "2_pretrain", *extra))
    assert stop.value.code == 130
    monkeypatch.setattr(pretrain, "train_one_epoch", real)
    main_cls_ss_train.main(cli(demo_root, part, code, *extra, "--resume", str(part / "000000_2_pretrain_state.pth")))
    a = torch.load(full / "000000_1_pretrain_state.pth", weights_only=False)["model"]
    b = torch.load(part / "000000_2_pretrain_state.pth", weights_only=False)["model"]
    assert a.keys() == b.keys()
    stateful = [k for k in a if k.startswith(("queue", "key_", "teacher_", "criterion.center", "progress"))]
    assert len(stateful) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_list_codes_names_the_new_modes(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(["--list-codes"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    for code, module in MODES.items():
        assert f"{code}" in out and module.__name__.rsplit(".", 1)[-1] in out
