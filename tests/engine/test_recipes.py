"""``--recipe paper|small``: every pretext's tables, the resolver, and each mode's settings reaching the
optimiser's param groups and the built model (built on the meta device: paper heads of 8192 x 8192 cost no
memory there)."""
from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

import models.pretext as pretexts
from config.codes import PRETEXTS, decode_mode
from config.errors import UserError
from engine import evaljob, plan, pretrain_flags, recipes
from engine.optim import OptimSpec
from engine.cli import CLS_DEFAULTS, base_parser
from engine.optim import LARS, build_optimizer, no_weight_decay_names
from engine.schedules import LRSchedule
from models import build_backbone
from models.pretext import dino, moco
from models.vit import freeze_patch_embed, is_vit
from tests.models.pretext_data import make_opt

BS, N_TRAIN, DATASET_LR, MEPOCH = 64, 375, 1e-4, 200
SSL_CODES = (910, 911, 912, 913, 914, 915, 916)
OPTIMIZER_TYPES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "lars": LARS}


def netnum_for(code: int) -> str:
    """A ViT (ViT-Tiny/8) for the modes made for ViTs (MAE), resnet18_small for the others."""
    return "120000" if getattr(pretexts.load(decode_mode(code, "pretrain")), "VIT_ONLY", False) else "000000"


def parse(code: int, *extra: str) -> argparse.Namespace:
    return pretrain_flags.add_args(base_parser("", "pretrain")).parse_args(
        ["--mode", str(code), "--netnum", netnum_for(code), "--mepoch", str(MEPOCH), *extra])


def resolved(code: int, *extra: str) -> tuple[argparse.Namespace, object]:
    """``prepare``'s recipe steps without a dataset: resolve, head flags, the module's checks, the lr."""
    args = parse(code, *extra)
    mode = decode_mode(code, "pretrain")
    module = pretexts.load(mode)
    recipes.resolve(args, module)
    plan.resolve_head_flags(args, mode, module)
    plan.resolve_vit_training_flags(args)
    if hasattr(module, "check_args"):
        module.check_args(args)
    if hasattr(module, "check_data"):
        module.check_data(args, N_TRAIN, BS)
    recipes.resolve_lr(args, BS, DATASET_LR)
    return args, module


def expected_lr(recipe: dict) -> float:
    base, rule = recipe["lr_base"], recipe["lr_rule"]
    return {"linear": lambda: base * BS / 256, "none": lambda: base, "dataset": lambda: DATASET_LR,
            "sqrt": lambda: base * math.sqrt(BS)}[rule]()


def test_every_pretext_has_both_recipes_each_setting_with_a_source() -> None:
    flags = vars(parse(910))
    for module in pretexts.modules():
        name = module.__name__.rsplit(".", 1)[-1]
        assert set(module.RECIPES) == set(recipes.RECIPE_NAMES), name
        for recipe in recipes.RECIPE_NAMES:
            table, sources = module.RECIPES[recipe], module.SOURCES[recipe]
            assert set(table) == set(sources), (name, recipe, set(table) ^ set(sources))
            assert all(isinstance(s, str) and len(s) > 10 for s in sources.values()), (name, recipe)
            assert set(table) - set(recipes.NOT_FLAGS) <= set(flags), (name, set(table) - set(flags))
            assert {"optimizer", "lr_rule", "wd", "warmup"} <= set(table), (name, recipe)
            assert table["lr_rule"] in recipes.LR_RULES
        assert module.RECIPES["paper"] != module.RECIPES["small"], name


@pytest.mark.parametrize("recipe", recipes.RECIPE_NAMES)
@pytest.mark.parametrize("code", sorted(pretexts.implemented()))
def test_recipe_settings_reach_the_optimizer_and_the_model(code: int, recipe: str) -> None:
    check_recipe(code, recipe)


@pytest.mark.parametrize("recipe", recipes.RECIPE_NAMES)
@pytest.mark.parametrize("code", SSL_CODES)
def test_vit_recipe_settings_reach_the_optimizer_and_the_model(code: int, recipe: str) -> None:
    """910-916 on a ViT-Tiny/16: the ``vit`` values (MoCo v3's optimisation, DINO's ViT-S/16 run) are the ones used."""
    args = check_recipe(code, recipe, "110000")
    assert args.optimizer == "adamw"
    if code != 916:                                       # MoCo v3's random patch projection; DINO has none
        assert args.freeze_patch_embed is True and args.exclude_bias_norm is False
        assert args.wd == 0.1 and args.warmup == min({"paper": 40, "small": 10}[recipe], MEPOCH // 10)


def check_recipe(code: int, recipe: str, netnum: str | None = None) -> argparse.Namespace:
    """Every setting of ``code``'s ``recipe`` (for ``netnum``'s family) in the namespace, the optimiser and the model."""
    args, module = resolved(code, "--recipe", recipe, *(["--netnum", netnum] if netnum else []))
    table = recipes.recipe_of(module, recipe, recipes.backbone_kind(args.netnum))
    assert args.recipe == recipe
    # every setting of the table is in the namespace (what the checkpoint's meta records)
    for key, value in table.items():
        if key in recipes.NOT_FLAGS:
            continue
        if value is None:                                 # does not apply to this family: the flag stays unset
            assert getattr(args, key) is None, key
            continue
        if value == "backbone":
            value = recipes.backbone_width(args.netnum)   # ResNet-18: 512, ViT-Tiny: 192
        elif key in recipes.EPOCH_CAPS:
            value = min(value, math.floor(recipes.EPOCH_CAPS[key] * MEPOCH))
        elif key == "moco_queue":
            value = min(value, N_TRAIN - BS)
        elif key in recipes.LARS_KEYS and table["optimizer"] != "lars":
            value = None
        assert getattr(args, key) == value, (key, getattr(args, key), value)
    assert args.lr == pytest.approx(expected_lr(table))
    assert set(args.recipe_filled) == {k for k, v in table.items() if k not in recipes.NOT_FLAGS and v is not None} | {"lr"}
    # the optimiser's param groups
    opt = make_opt(13 if code == 931 else 4, 32)             # 931 groups Sentinel-2 bands by name
    with torch.device("cpu" if code in (930, 931) else "meta"):    # MAE's sin-cos tables come from numpy
        backbone, _ = build_backbone(args.netnum, opt.n_bands, input_size=32)
        model = module.build(args, opt, backbone)
    frozen = freeze_patch_embed(model) if args.freeze_patch_embed else []   # what main_worker does before the optimiser
    assert len(frozen) == (2 if table.get("freeze_patch_embed") else 0)      # the student's proj weight and bias
    if hasattr(module, "build_optimizer"):
        optimizer = module.build_optimizer(args, model, args.lr)
        groups = optimizer.param_groups
        assert type(optimizer) is torch.optim.Adam and all(g["weight_decay"] == table["wd"] for g in groups)
    else:
        optimizer = OptimSpec(args.optimizer, args.lr, args.momentum, args.wd, args.lars_eta, args.lars_clip,
                              args.exclude_bias_norm, args.bias_lr_scale, args.beta2).build(model)
        assert type(optimizer) is OPTIMIZER_TYPES[table["optimizer"]]
        groups = optimizer.param_groups
        if table.get("exclude_bias_norm", True):
            assert [g["name"] for g in groups] == ["weights", "bias_norm"]
            assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (table["wd"], 0.0)
            assert groups[1]["lr_scale"] == pytest.approx(table.get("bias_lr_scale", 1.0))
            tokens = {id(p) for n, p in model.named_parameters() if n in no_weight_decay_names(model)}
            assert all(p.ndim < 2 or id(p) in tokens for p in groups[1]["params"])       # ViTs: cls_token, pos_embed
            assert all(p.ndim >= 2 and id(p) not in tokens for p in groups[0]["params"])
        else:
            assert [g["name"] for g in groups] == ["all"] and groups[0]["weight_decay"] == table["wd"]
        if table["optimizer"] == "lars":
            assert all((g["eta"], g["clip"]) == (table["lars_eta"], table["lars_clip"]) for g in groups)
        momentum = groups[0]["betas"][0] if "betas" in groups[0] else groups[0]["momentum"]
        assert momentum == table["momentum"]
        if "beta2" in table:
            assert groups[0]["betas"][1] == table["beta2"]
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in in_groups for n, p in model.named_parameters() if n in frozen)
    schedule = LRSchedule(args.lr_policy, args.lr, args.mepoch, 5, args.warmup)
    assert schedule.warmup_iters == round(args.warmup * 5)
    schedule.step(optimizer, 5 * MEPOCH // 2)
    scale = groups[-1].get("lr_scale", 1.0) if len(groups) > 1 else 1.0
    assert groups[-1]["lr"] == pytest.approx(schedule.lr_at(MEPOCH / 2) * scale)
    check_model(code, model, args, table)
    if getattr(module, "USES_AUG", False):
        views = module.make_transform(args, opt)
        crop = views.view_a.steps[0]
        assert (crop.scale, crop.p) == (tuple(table["crop_scale"]), 1.0)
        assert views.aug == table["aug"] and views.view_a.code == table["aug_p"]
    return args


def check_model(code: int, model: nn.Module, args: argparse.Namespace, table: dict) -> None:
    """The mode's own settings in the built model."""
    def widths(seq):
        return [m.out_features for m in seq if isinstance(m, nn.Linear)]
    if code == 910:
        assert model.criterion.temperature == table["tau"] and model.projector.out_dim == table["feature_dim"]
    elif code == 920:
        assert args.tau == table["tau"] and args.feature_dim == table["feature_dim"]
    elif code == 911 and is_vit(model.backbone):          # MoCo v3: BN heads ending in an affine-free BN, no queue
        hidden, out = table["hidden_dim"], table["feature_dim"]
        assert widths(model.projector) == [hidden, hidden, out] and widths(model.predictor) == [hidden, out]
        for head in (model.projector, model.predictor):
            assert isinstance(head[-1], nn.BatchNorm1d) and not head[-1].affine
            assert all(m.bias is None for m in head if isinstance(m, nn.Linear))
        assert model.base_momentum == table["moco_momentum"] and model.criterion.temperature == table["tau"]
        assert not hasattr(model, "queue") and not getattr(model, "uses_index", False)
    elif code == 911:
        assert widths(model.projector) == [512, table["feature_dim"]]        # hidden = the backbone's width
        assert model.momentum == table["moco_momentum"] and model.criterion.temperature == table["tau"]
        assert model.queue.shape[0] == min(table["moco_queue"], N_TRAIN - BS)
        assert model.bn_splits == table["moco_bn_splits"]
        split = [m for m in model.backbone.modules() if isinstance(m, moco.SplitBatchNorm)]
        assert split and all(m.num_splits == table["moco_bn_splits"] for m in split)
        assert not [m for m in model.backbone.modules() if type(m) is nn.BatchNorm2d]
    elif code == 912:
        assert widths(model.projector) == [table["hidden_dim"], table["feature_dim"]]
        assert widths(model.predictor) == [table["pred_hidden"], table["feature_dim"]]
        assert model.base_momentum == table["byol_momentum"]
    elif code == 913:
        hidden = model.backbone.out_dim if table["hidden_dim"] == "backbone" else table["hidden_dim"]
        assert widths(model.projector) == [hidden, hidden, table["feature_dim"]]
        assert widths(model.predictor) == [table["pred_hidden"], table["feature_dim"]]
    elif code == 914:
        assert widths(model.projector) == [table["hidden_dim"], table["hidden_dim"], table["feature_dim"]]
        assert model.criterion.lambd == table["barlow_lambda"]
        assert model.scale == table["barlow_scale"]
    elif code == 915:
        assert widths(model.projector) == [table["hidden_dim"], table["hidden_dim"], table["feature_dim"]]
        crit = model.criterion
        assert (crit.sim_coeff, crit.std_coeff, crit.cov_coeff) == (25.0, 25.0, 1.0)
    elif code == 916:
        assert model.head.last_layer.out_features == table["feature_dim"]
        assert any(isinstance(m, nn.BatchNorm1d) for m in model.head.mlp) == table["dino_bn_head"]
        assert model.base_momentum == table["dino_momentum"] and model.teacher_temp == table["teacher_temp"]
        assert model.warmup_teacher_temp == table["warmup_teacher_temp"]
        assert model.warmup_fraction == pytest.approx(args.warmup_teacher_temp_epochs / MEPOCH)
        assert model.criterion.center_init == table["dino_center_init"]
        assert model.freeze_last == pytest.approx(table["dino_freeze_last"] / MEPOCH)
        crops = dino.make_transform(args, make_opt(4, 32))
        assert crops.n_local == table["local_crops"]
        assert crops.global_views[0].steps[0].scale == tuple(table["global_crops_scale"])
        assert args.clip_grad == table["clip_grad"]
        if is_vit(model.backbone):                        # stochastic depth on the student's last block only
            assert model.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(table["drop_path"])
            assert isinstance(model.teacher_backbone.blocks[-1].drop_path1, nn.Identity)
    elif code in (930, 931):
        assert model.mask_ratio == table["mask_ratio"] and model.criterion.norm_pix == table["norm_pix_loss"]
        assert len(model.decoder.blocks) == table["decoder_depth"]
        assert model.decoder.embed.out_features == table["decoder_dim"]
        if code == 931:
            assert model.consistent == table["consistent_mask"]


def test_default_recipe_is_paper_and_keeps_the_specs_defaults() -> None:
    args, _ = resolved(910)
    assert (args.recipe, args.tau, args.feature_dim, args.optimizer) == ("paper", 0.5, 128, "lars")
    args, _ = resolved(916)
    assert (args.tau, args.teacher_temp, args.feature_dim, args.optimizer) == (0.1, 0.04, 65536, "sgd")
    args, _ = resolved(914)
    assert args.bias_lr_scale == pytest.approx(0.024) and args.barlow_lambda == 0.0051


def test_user_flags_beat_the_recipe() -> None:
    args, _ = resolved(914, "--optimizer", "adam")
    assert (args.lr_rule, args.bias_lr_scale, args.lars_eta) == ("dataset", 1.0, None)   # LARS-era choices dropped
    assert "bias_lr_scale" not in args.recipe_filled and args.exclude_bias_norm is True
    args, _ = resolved(914, "--recipe", "paper", "--optimizer", "sgd", "--wd", "0", "--warmup", "3",
                       "--hidden-dim", "64", "--feature_dim", "32", "--no-exclude-bias-norm", "--bias-lr-scale", "1",
                       "--barlow-lambda", "0.01")
    assert (args.optimizer, args.wd, args.warmup, args.hidden_dim, args.feature_dim) == ("sgd", 0.0, 3.0, 64, 32)
    assert (args.exclude_bias_norm, args.bias_lr_scale, args.barlow_lambda) == (False, 1.0, 0.01)
    # the recipe's lr rule belongs to its optimiser (LARS): another one takes the dataset's lr, and no LARS setting
    assert (args.lr_rule, args.lr, args.lars_eta, args.lars_clip) == ("dataset", DATASET_LR, None, None)
    assert args.momentum == 0.9 and "momentum" in args.recipe_filled and "wd" not in args.recipe_filled
    args, _ = resolved(910, "--recipe", "small", "--lr", "0.5", "--lars-eta", "0.001", "--no-lars-clip")
    assert (args.lr, args.lr_rule, args.lars_eta, args.lars_clip, args.wd) == (0.5, "given", 0.001, False, 1e-4)
    args, _ = resolved(916, "--recipe", "small", "--teacher-temp", "0.05", "--dino-momentum", "0.996",
                       "--local-crops", "2", "--no-dino-bn-head", "--dino-center-init", "zero")
    assert (args.teacher_temp, args.dino_momentum, args.local_crops, args.dino_bn_head, args.dino_center_init) == \
        (0.05, 0.996, 2, False, "zero")


def test_recipe_epochs_are_capped_at_a_share_of_the_run() -> None:
    args, _ = resolved(910, "--mepoch", "25")
    assert args.warmup == 2                                # 10 epochs, at most floor(0.1 x 25)
    args, _ = resolved(910, "--mepoch", "5")
    assert args.warmup == 0
    args, _ = resolved(910, "--mepoch", "25", "--warmup", "7")
    assert args.warmup == 7.0                              # the user's value is never capped
    args, _ = resolved(916, "--recipe", "small", "--mepoch", "100")
    assert (args.warmup_teacher_temp_epochs, args.dino_freeze_last) == (30, 1)


def test_a_view_plan_the_user_names_keeps_its_own_crop() -> None:
    args, module = resolved(910, "--aug", "3", "--aug_p", "S5")
    assert args.crop_scale == "plan" and "crop_scale" not in args.recipe_filled
    views = module.make_transform(args, make_opt(4, 32))
    assert (views.view_b.steps[0].scale, views.view_b.steps[0].p) == ((0.5, 1.0), 0.8)
    args, module = resolved(910, "--aug", "3", "--crop-scale", "0.3,1")
    assert args.crop_scale == [0.3, 1.0]
    assert module.make_transform(args, make_opt(4, 32)).view_b.steps[0].scale == (0.3, 1.0)


def test_dino_without_local_crops_widens_a_recipes_global_crops() -> None:
    """main_dino.py's advice: 0.14-1 for the global crops when multi-crop is off (the ViT recipe has 0.4-1)."""
    args = parse(916, "--local-crops", "0")
    args.global_crops_scale = None
    recipes.resolve(args, dino)
    args.global_crops_scale = [0.4, 1.0]                  # as the ViT column would fill it
    dino.check_args(args)
    assert args.global_crops_scale == dino.WIDE_GLOBAL
    given = parse(916, "--local-crops", "0", "--global-crops-scale", "0.4,1")
    recipes.resolve(given, dino)
    dino.check_args(given)
    assert given.global_crops_scale == [0.4, 1.0]         # given: kept


def test_backbone_family_columns_and_width() -> None:
    assert recipes.backbone_width("000000") == 512 and recipes.backbone_width("020000") == 2048
    assert recipes.backbone_kind("020000") == "convnet"
    vit = recipes.recipe_of(dino, "paper", "vit")
    assert (vit["optimizer"], vit["lr_base"], vit["wd"], vit["global_crops_scale"]) == ("adamw", 5e-4, 0.04, [0.4, 1.0])
    # DINO's ViT-S/16 run: teacher 0.04 -> 0.07 over 30 epochs, 8 local crops of 0.05-0.4, clip 3, drop path 0.1, no BN
    assert (vit["warmup_teacher_temp"], vit["teacher_temp"], vit["warmup_teacher_temp_epochs"]) == (0.04, 0.07, 30)
    assert (vit["local_crops"], vit["local_crops_scale"], vit["clip_grad"], vit["drop_path"]) == (8, [0.05, 0.4], 3.0, 0.1)
    assert vit["dino_bn_head"] is False and recipes.recipe_of(dino, "small", "vit")["dino_bn_head"] is False
    assert (vit["feature_dim"], vit["dino_momentum"]) == (65536, 0.996)
    assert vit["wd_end"] == 0.4 and recipes.recipe_of(dino, "small", "vit")["wd_end"] == 0.4     # main_dino.py
    assert recipes.recipe_of(dino, "paper", "convnet")["wd_end"] is None                         # constant 1e-4
    v3 = recipes.recipe_of(moco, "paper", "vit")          # MoCo v3's ViT-S/B command
    assert (v3["optimizer"], v3["lr_base"], v3["wd"], v3["warmup"], v3["tau"], v3["moco_momentum"]) == \
        ("adamw", 1.5e-4, 0.1, 40, 0.2, 0.99)
    assert (v3["freeze_patch_embed"], v3["exclude_bias_norm"], v3["moco_queue"], v3["moco_bn_splits"]) == \
        (True, False, None, None)
    assert recipes.recipe_of(moco, "paper", "convnet")["freeze_patch_embed"] is None      # ViTs only
    resnet = recipes.recipe_of(dino, "paper", "convnet")
    assert (resnet["optimizer"], resnet["lr_base"], resnet["wd"]) == ("sgd", 0.03, 1e-4)
    args, _ = resolved(911, "--netnum", "020000")
    assert args.hidden_dim == 2048                        # MoCo v2's head: the backbone's width


def test_lr_rules() -> None:
    ns = argparse.Namespace(lr=None, lr_rule="linear", lr_base=0.3, recipe="paper", recipe_filled=[])
    assert recipes.resolve_lr(ns, 512, 1e-4) == pytest.approx(0.6)
    ns = argparse.Namespace(lr=None, lr_rule="sqrt", lr_base=0.075, recipe="paper", recipe_filled=[])
    assert recipes.resolve_lr(ns, 4096, 1e-4) == pytest.approx(0.075 * 64)
    ns = argparse.Namespace(lr=None, lr_rule="dataset", lr_base=None, recipe="paper", recipe_filled=[])
    assert recipes.resolve_lr(ns, 64, 3e-4) == 3e-4 and ns.lr_base == 3e-4


def test_user_errors() -> None:
    with pytest.raises(SystemExit):
        parse(910, "--recipe", "big")
    with pytest.raises(UserError, match="--exclude-bias-norm does not apply to gan"):
        recipes.resolve(parse(990, "--exclude-bias-norm"), pretexts.load(decode_mode(990, "pretrain")))
    args, _ = resolved(911)
    with pytest.raises(UserError, match="--lars-eta sets LARS's trust ratio but --optimizer is sgd"):
        build_optimizer(args.optimizer, [torch.zeros(1, requires_grad=True)], 0.1, eta=0.02)


def test_main_cls_keeps_todays_defaults() -> None:
    args = evaljob.add_args(base_parser("", "cls")).parse_args(["--mode", "11"])
    assert {k: getattr(args, k) for k in CLS_DEFAULTS} == {"optimizer": "adam", "warmup": 0.0, "momentum": 0.9,
                                                            "wd": 1e-6}
    assert (args.lars_eta, args.lars_clip) == (None, None)
    bad = evaljob.add_args(base_parser("", "cls")).parse_args(["--mode", "11", "--lars-eta", "0.02"])
    with pytest.raises(UserError, match="--lars-eta/--lars-clip .* need --optimizer lars"):
        evaljob.resolve(bad)


def test_every_pretraining_mode_takes_a_recipe() -> None:
    assert {pretexts.load(decode_mode(c, "pretrain")).__name__.rsplit(".", 1)[-1]
            for c in pretexts.implemented()} == {n for c, (n, _) in PRETEXTS.items() if c in pretexts.implemented()}
    for code in pretexts.implemented():
        for recipe in recipes.RECIPE_NAMES:
            args, _ = resolved(code, "--recipe", recipe)
            assert args.optimizer in OPTIMIZER_TYPES and args.lr > 0 and args.wd >= 0 and args.warmup >= 0


@pytest.mark.parametrize("kind", recipes.BACKBONE_KINDS)
def test_docs_table_matches_the_code_for_the_ssl_methods(kind: str) -> None:
    """docs/recipes.md's rows for 910-916 (ResNet rows and the rows marked ViT) show each recipe's optimiser,
    base lr, weight decay and warm-up."""
    from tests.conftest import REPO
    rows = [r for r in (REPO / "docs" / "recipes.md").read_text().splitlines() if r.startswith("| 91")]
    for code in SSL_CODES:
        module = pretexts.load(decode_mode(code, "pretrain"))
        for recipe in recipes.RECIPE_NAMES:
            table = recipes.recipe_of(module, recipe, kind)
            row = [r for r in rows if r.startswith(f"| {code} ") and r.split("|")[2].strip().startswith(recipe)
                   and (("ViT" in r.split("|")[2]) == (kind == "vit"))]
            assert len(row) == 1, (code, recipe)
            cells = [c.strip() for c in row[0].split("|")]
            assert cells[3].lower().startswith(table["optimizer"]), (code, recipe, cells[3])
            base, rule = cells[4].split()[:2]
            assert (float(base), rule) == (table["lr_base"], table["lr_rule"]), (code, recipe, cells[4])
            assert float(cells[5].split(",")[0].split()[0]) == table["wd"], (code, recipe, cells[5])
            assert cells[6] == f"{table['warmup']:g}", (code, recipe, cells[6])
            assert ("patch embedding frozen" in cells[10]) == bool(table.get("freeze_patch_embed")), (code, recipe)
