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
from engine import plan, pretrain
from models import build_backbone, build_model
from models.pretext import byol, dino, moco, simsiam, barlow, vicreg
from models.pretext.ema import cosine_momentum
from tests.models.pretext_data import make_opt, raw_images

MODES = {911: moco, 912: byol, 913: simsiam, 914: barlow, 915: vicreg, 916: dino}
SMALL = {"feature_dim": 16, "hidden_dim": 32, "pred_hidden": 8, "tau": None}


def namespace(module, **over) -> argparse.Namespace:
    """The parsed flags of ``module`` with their defaults, small heads, plus ``over``."""
    p = argparse.ArgumentParser()
    plan.add_args(p)
    args = p.parse_args([])
    args.aug, args.aug_p, args.mepoch = None, None, 2
    for k, v in {**SMALL, **over}.items():
        setattr(args, k, v)
    args.tau = args.tau or getattr(module, "TAU", None)
    if module is moco and "moco_queue" not in over:
        args.moco_queue = 12
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
    assert len(views) == (2 + 6 if code == 916 else 2)
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
    model, args = built(moco, moco_queue=6)
    views = batch(moco, args)
    q0 = model.queue.clone()
    key0 = [p.clone() for p in model.key_backbone.parameters()]
    with torch.no_grad():                                     # a stand-in optimiser step
        for p in model.backbone.parameters():
            p.add_(0.01)
    model(views)
    keys = model._pending.clone()
    model.on_step_end(0.1)
    for k0, k, q in zip(key0, model.key_backbone.parameters(), model.backbone.parameters()):
        torch.testing.assert_close(k, 0.999 * k0 + 0.001 * q, rtol=0, atol=1e-7)
    torch.testing.assert_close(model.queue[:4], keys) and torch.testing.assert_close(model.queue[4:], q0[4:])
    assert int(model.queue_ptr) == 4 and torch.allclose(keys.norm(dim=1), torch.ones(4))
    model(views)
    keys2 = model._pending.clone()
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
    with pytest.raises(UserError, match="--moco-queue 400 exceeds training images - batch = 375 - 64 = 311"):
        moco.check_data(namespace(moco, moco_queue=400), 375, 64)
    with pytest.raises(UserError, match="lower --bs"):
        moco.check_data(namespace(moco, moco_queue=None), 64, 64)


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
    model, args = built(dino, local_crops=2, mepoch=4)        # freeze 1 epoch of 4 = first quarter
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


def test_heads_follow_the_papers() -> None:
    backbone, _ = build_backbone("000000", 3)
    sizes = lambda m: [l.out_features for l in m if isinstance(l, torch.nn.Linear)]  # noqa: E731
    assert sizes(moco.MoCo(backbone).projector) == [2048, 128]
    b = byol.BYOL(backbone)
    assert sizes(b.projector) == [4096, 256] and sizes(b.predictor) == [4096, 256]
    s = simsiam.SimSiam(backbone)
    assert sizes(s.projector) == [2048, 2048, 2048] and sizes(s.predictor) == [512, 2048]
    assert not s.projector[-1].affine
    assert sizes(barlow.BarlowTwins(backbone).projector) == [8192, 8192, 8192]
    assert sizes(vicreg.VICReg(backbone).projector) == [8192, 8192, 8192]
    assert (moco.TAU, moco.MOMENTUM, moco.QUEUE) == (0.2, 0.999, 65536)
    assert (byol.MOMENTUM, barlow.LAMBDA, vicreg.WEIGHTS) == (0.996, 5e-3, "25,25,1")
    assert (dino.TAU, dino.TEACHER_TEMP, dino.FEATURE_DIM, dino.LOCAL_CROPS) == (0.1, 0.04, 65536, 6)
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
            "--feature_dim", "16", "--hidden-dim", "32", "--knn-per-class", "4", *extra]


@pytest.mark.parametrize("code", sorted(MODES))
def test_spec_command_line_trains_and_the_backbone_loads_in_main_cls(code, demo_root, tmp_path) -> None:
    extra = ["--local-crops", "2"] if code == 916 else []
    main_cls_ss_train.main(cli(demo_root, tmp_path, code, "--expnum", "1_pretrain", *extra))
    saved = tmp_path / "000000_1_pretrain_1.pth"
    meta = torch.load(saved, weights_only=True)["meta"]
    assert meta["mode"] == code and meta["pretext"] == MODES[code].__name__.rsplit(".", 1)[-1]
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
