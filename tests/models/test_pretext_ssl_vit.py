"""Modes 910-916 on Vision Transformers: every method x {ViT-Tiny/16, ViT-Small/16} at 64 px resolves its ViT
recipe, builds and trains a step; MoCo v3 (what 911 runs on a ViT), MoCo v3's random patch projection, DINO's
student-only stochastic depth, the probe feature in the checkpoint meta, and what is refused in one sentence."""
from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

import main_cls_ss_train
import models.pretext as pretexts
from config.codes import decode_mode
from config.errors import UserError
from engine import plan, pretrain_flags, recipes
from engine.cli import base_parser
from engine.loop import train_one_epoch
from engine.optim import OptimSpec
from engine.runtime import Runtime, reseed
from engine.schedules import LRSchedule
from models import build_backbone
from models.pretext import moco
from models.pretext.ema import cosine_momentum
from models.vit import build_vit, freeze_patch_embed, method_feature
from config.codes import VIT_BACKBONES
from tests.models.pretext_data import make_opt, raw_images

SSL = (910, 911, 912, 913, 914, 915, 916)
BANDS, SIZE, BS = 13, 64, 4


def heads(code: int) -> list[str]:
    """Tiny heads through each method's own flags (910's hidden layer is the backbone's width)."""
    return (["--feature_dim", "16"] + (["--hidden-dim", "32"] if code != 910 else [])
            + (["--pred-hidden", "8"] if code in (912, 913) else []))


def resolved(code: int, netnum: str, *extra: str) -> tuple[argparse.Namespace, object]:
    """The plan's flag steps without a dataset (recipe, head flags, ViT flags, the module's checks, the lr);
    tiny heads through the flags, as a user on a CPU would give them."""
    args = pretrain_flags.add_args(base_parser("", "pretrain")).parse_args(
        ["--mode", str(code), "--netnum", netnum, "--mepoch", "2", *heads(code), *extra])
    mode = decode_mode(code, "pretrain")
    module = pretexts.load(mode)
    recipes.resolve(args, module)
    plan.resolve_head_flags(args, mode, module)
    plan.resolve_vit_training_flags(args)
    if hasattr(module, "check_args"):
        module.check_args(args)
    if hasattr(module, "check_data"):
        module.check_data(args, 10 * BS, BS)
    recipes.resolve_lr(args, BS, 1e-4)
    return args, module


def built(code: int, netnum: str, *extra: str):
    """What main_worker builds: the backbone with its method's feature, the model, the frozen patch embedding,
    the optimiser; plus one batch of the method's views."""
    args, module = resolved(code, netnum, *extra)
    torch.manual_seed(0)
    opt = make_opt(BANDS, SIZE)
    backbone, _ = build_backbone(netnum, BANDS, input_size=SIZE)
    backbone.set_feature(method_feature(module.__name__.rsplit(".", 1)[-1]))
    model = module.build(args, opt, backbone)
    frozen = freeze_patch_embed(model) if args.freeze_patch_embed else []
    optimizer = OptimSpec(args.optimizer, args.lr, args.momentum, args.wd, args.lars_eta, args.lars_clip,
                          args.exclude_bias_norm, args.bias_lr_scale, args.beta2).build(model)
    view = module.make_transform(args, opt)
    views = default_collate([view(x) for x in raw_images(BS, BANDS, side=SIZE + 6)])
    return args, model, optimizer, frozen, views


@pytest.mark.parametrize("netnum", ["110000", "130000"])
@pytest.mark.parametrize("code", SSL)
def test_every_method_trains_a_step_on_a_vit(code: int, netnum: str) -> None:
    args, model, optimizer, frozen, views = built(code, netnum)
    assert args.optimizer == "adamw" and args.lr == pytest.approx(
        {916: 5e-4}.get(code, 1.5e-4) * BS / 256)                    # DINO's and MoCo v3's lr per 256 images
    assert type(model).__name__ == {911: "MoCoV3"}.get(code, type(model).__name__)
    named = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    schedule = LRSchedule("cosine", args.lr, 2, 1)
    stats = train_one_epoch(model, [(views, torch.zeros(BS, dtype=torch.long), torch.arange(BS))], optimizer, schedule,
                            0, Runtime(torch.device("cpu")), 2, None, clip_grad=args.clip_grad)
    assert torch.isfinite(torch.tensor(stats["loss"])) and 0 < stats["emb_std"] < 1
    moved = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert "backbone.blocks.0.attn.qkv.weight" in moved and "backbone.blocks.11.mlp.fc2.weight" in moved
    if code == 916:                                   # DINO trains its patch embedding; no BatchNorm in a ViT's head
        assert not frozen and "backbone.patch_embed.proj.weight" in moved
        assert not any(isinstance(m, nn.BatchNorm1d) for m in model.head.modules())
        assert len(views) == 2 + 8 and views[2].shape[-1] == 32     # 8 local crops of 32 px: a multiple of 16
    else:                                             # MoCo v3's random patch projection: unchanged, in no group
        assert frozen == ["backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias"]
        assert not moved & set(frozen)
        grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert all(id(named[n]) not in grouped for n in frozen)
    kept = getattr(model, "kept_backbone", model.backbone)
    assert kept.feature == "cls" and kept.checkpoint_meta() == {"vit_feature": "cls"}


def test_moco_v3_is_what_911_runs_on_a_vit() -> None:
    """Heads as moco-v3's _build_mlp, the loss as its contrastive_loss on the step's own tensors, and the key
    encoder's momentum on the cosine from 0.99 (the frozen patch embedding stays equal in both encoders)."""
    args, model, optimizer, frozen, views = built(911, "110000")
    assert isinstance(model, moco.MoCoV3) and model.base_momentum == 0.99
    layers = [type(m).__name__ for m in model.projector]
    assert layers == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert [type(m).__name__ for m in model.predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    model.train()
    torch.manual_seed(1)
    loss, _ = model(views)
    with torch.no_grad():
        q1, q2 = (model.predictor(model.projector(model.backbone(v))) for v in views)
        k1, k2 = (model.key_projector(model.key_backbone(v)) for v in views)

    def ctr(q, k, t=0.2):                             # moco-v3 builder.py contrastive_loss, one process
        q, k = nn.functional.normalize(q, dim=1), nn.functional.normalize(k, dim=1)
        return nn.functional.cross_entropy(q @ k.T / t, torch.arange(len(q))) * 2 * t
    assert float(loss.detach()) == pytest.approx(float(ctr(q1, k2) + ctr(q2, k1)), rel=1e-5)
    k0 = [p.clone() for p in model.key_backbone.parameters()]
    with torch.no_grad():
        for p in model.backbone.parameters():
            if p.requires_grad:
                p.add_(0.01)
    model.on_step_end(0.5)
    m = cosine_momentum(0.99, 0.5)
    assert m == pytest.approx(0.995)
    for a, k, q in zip(k0, model.key_backbone.parameters(), model.backbone.parameters()):
        torch.testing.assert_close(k, m * a + (1 - m) * q, rtol=0, atol=1e-6)
    assert torch.equal(model.key_backbone.patch_embed.proj.weight, model.backbone.patch_embed.proj.weight)


def test_no_freeze_patch_embed_trains_it() -> None:
    args, model, optimizer, frozen, views = built(910, "110000", "--no-freeze-patch-embed")
    assert args.freeze_patch_embed is False and frozen == [] and "freeze_patch_embed" not in args.recipe_filled
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model.backbone.patch_embed.proj.weight) in grouped


def test_dino_drop_path_is_the_students_only_at_timms_rates() -> None:
    args, model, *_ = built(916, "110000")
    assert args.drop_path == 0.1 and args.clip_grad == 3.0 and args.dino_bn_head is False
    timm_rates = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0
                  for b in build_vit(VIT_BACKBONES["1"], BANDS, SIZE, drop_path=0.1).blocks]
    ours = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0 for b in model.backbone.blocks]
    assert ours == pytest.approx(timm_rates) and ours[-1] == pytest.approx(0.1) and ours[0] == 0.0
    assert all(isinstance(b.drop_path1, nn.Identity) and isinstance(b.drop_path2, nn.Identity)
               for b in model.teacher_backbone.blocks)
    model.train()
    x = torch.randn(2, BANDS, SIZE, SIZE)
    with torch.no_grad():
        torch.manual_seed(0)
        s1, t1 = model.backbone(x), model.teacher_backbone(x)
        torch.manual_seed(1)
        s2, t2 = model.backbone(x), model.teacher_backbone(x)
    assert not torch.equal(s1, s2) and torch.equal(t1, t2)           # stochastic student, deterministic teacher


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_what_a_combination_refuses_in_one_sentence() -> None:
    for flag in ("--freeze-patch-embed", "--no-freeze-patch-embed"):
        with pytest.raises(UserError, match="about a ViT's patch embedding .* --netnum 000000 is resnet18") as e:
            resolved(910, "000000", flag)
        one_line(e)
    with pytest.raises(UserError, match="--drop-path is stochastic depth of a ViT student") as e:
        resolved(916, "000000", "--drop-path", "0.1")
    one_line(e)
    for flag in ("--moco-queue", "--moco-bn-splits"):
        with pytest.raises(UserError, match=f"{flag} is MoCo v2's; .* runs MoCo v3") as e:
            resolved(911, "110000", flag, "4")
        one_line(e)
    with pytest.raises(UserError, match="--clip-grad -1.0 must be a norm >= 0"):
        resolved(916, "110000", "--clip-grad", "-1")
    args, _ = resolved(911, "000000")                # a CNN code keeps MoCo v2: its queue, no patch-embedding flag
    assert args.moco_queue == 10 * BS - BS and args.freeze_patch_embed is None and args.optimizer == "sgd"


def test_unpublished_vit_recipes_say_so(caplog) -> None:
    for code in (913, 914, 915):
        caplog.clear()
        with caplog.at_level("INFO"):
            resolved(code, "110000")
        assert "no published ViT recipe" in caplog.text and "MoCo v3's ViT optimisation" in caplog.text
        assert "no published ViT recipe; MoCo v3's ViT optimiser" in pretexts.load(
            decode_mode(code, "pretrain")).SOURCES["paper"]["optimizer"]
    caplog.clear()
    with caplog.at_level("INFO"):
        resolved(913, "000000")
    assert "no published ViT recipe" not in caplog.text


@pytest.mark.parametrize("code", SSL)
def test_a_vit_run_records_the_methods_feature_and_its_vit_settings(code, demo_root, tmp_path) -> None:
    """Through the entry script (ViT-Tiny/16, 32 px): the meta names the probe feature of the method's paper and the
    resolved ViT settings; with the random patch projection the saved patch embedding is still its initial one."""
    extra = ["--local-crops", "2"] if code == 916 else []
    main_cls_ss_train.main(["--mode", str(code), "--ds", "demo", "--data-root", str(demo_root), "--netnum", "110000",
                            "--input_size", "32", "--bs", "8", "--mepoch", "1", "--workers", "0", "--seed", "0",
                            "--ckpt", str(tmp_path), "--no-progress", "--knn-freq", "0", "--expnum", "1_pretrain",
                            *heads(code), *extra])
    saved = torch.load(tmp_path / "110000_1_pretrain_1.pth", weights_only=True)
    meta, state = saved["meta"], saved["backbone"]
    name = decode_mode(code, "pretrain").pretext
    assert meta["vit_feature"] == method_feature(name) == "cls"
    assert meta["args"]["optimizer"] == "adamw" and "optimizer" in meta["args"]["recipe_filled"]
    assert meta["args"]["freeze_patch_embed"] is (None if code == 916 else True)
    assert meta["args"]["clip_grad"] == (3.0 if code == 916 else 0.0)
    reseed(0, 0, 0)                                   # what main_worker draws the backbone's initial weights from
    start, _ = build_backbone("110000", 13, input_size=32)
    same = torch.equal(state["patch_embed.proj.weight"], start.patch_embed.proj.weight)
    assert same is (code != 916)                      # DINO keeps its teacher, whose patch embedding learned
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], start.blocks[0].attn.qkv.weight)
