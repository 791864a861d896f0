"""ViT backbones (family 1, timm): layout, any band count, sizes, the named feature, position-embedding
resampling, token parameters, layer-wise lr decay, band groups and the guards that know patches."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from config import codes
from config.codes import VIT_BACKBONES, decode_mode, decode_netnum
from config.dataset_cfg import opt_euroms
from config.errors import UserError
from datasets.views import MultiCrop, local_crop_size
from engine import checkpoint as ckpt
from config import limits
from engine import guards
from engine.lr_decay import param_groups_lrd
from models import build_backbone, build_model
from models import pretext as pretexts
from models.vit import GroupedViTBackbone, resolve_groups, sincos_2d

EUROSAT = opt_euroms.BAND_NAMES          # B01..B12, B8A last


@pytest.mark.parametrize("digit", sorted(VIT_BACKBONES))
def test_layout_is_timms_vit_for_13_bands(digit: str) -> None:
    """Every ViT code has exactly the keys and shapes of timm's model of that size and patch."""
    spec = VIT_BACKBONES[digit]
    ours, dim = build_backbone(f"1{digit}0000", 13, input_size=64)
    theirs = timm.create_model(spec.timm_arch, pretrained=False, in_chans=13, img_size=64, num_classes=0,
                               patch_size=spec.patch)
    mine = {k: v.shape for k, v in ours.state_dict().items() if k != "feature_code"}
    assert mine == {k: v.shape for k, v in theirs.state_dict().items()}
    assert dim == ours.out_dim == spec.embed_dim and len(ours.blocks) == spec.depth
    assert ours.patch_embed.proj.weight.shape == (spec.embed_dim, 13, spec.patch, spec.patch)
    assert ours.pos_embed.shape == (1, 1 + (64 // spec.patch) ** 2, spec.embed_dim)


@pytest.mark.parametrize("size", [64, 224])
def test_13_band_vit_forward_and_backward(size: int) -> None:
    torch.manual_seed(0)
    model = build_model("110000", 13, 5, input_size=size)
    x = torch.randn(2, 13, size, size)
    out = model(x)
    out.sum().backward()
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.backbone.pos_embed.shape[1] == 1 + (size // 16) ** 2


def test_feature_is_named_and_travels_with_the_weights() -> None:
    torch.manual_seed(0)
    b, _ = build_backbone("110000", 4, input_size=32)
    x = torch.randn(3, 4, 32, 32)
    with torch.no_grad():
        tokens = b.forward_features(x)
        assert b.feature == "cls" and torch.equal(b(x), tokens[:, 0])
        torch.testing.assert_close(b.encode_tokens(b.patch_tokens(x)), tokens)     # MAE's split path = timm's
        b.set_feature("avg")
        torch.testing.assert_close(b(x), tokens[:, 1:].mean(1))
    other, _ = build_backbone("110000", 4, input_size=32)
    assert other.feature == "cls"
    other.load_state_dict(b.state_dict())                 # the buffer carries the name: no meta needed
    assert other.feature == "avg" and int(other.feature_code) == 1
    clf = build_model("110000", 4, 3, input_size=32)
    clf.load_state_dict({**clf.state_dict(), **{f"backbone.{k}": v for k, v in b.state_dict().items()}})
    assert clf.backbone.feature == "avg"                  # through the classifier's load too
    with pytest.raises(UserError, match="not one of cls, avg"):
        b.set_feature("mean")


def test_other_sides_that_are_multiples_of_the_patch_run() -> None:
    """DINO's local crops: a 64 px model takes 32 px inputs (position embedding resampled on the fly)."""
    b, _ = build_backbone("120000", 13, input_size=64)
    with torch.no_grad():
        assert b(torch.randn(1, 13, 32, 32)).shape == (1, 192)
        assert b(torch.randn(1, 13, 24, 24)).shape == (1, 192)


def test_token_parameters_take_no_weight_decay() -> None:
    b, _ = build_backbone("110000", 13, input_size=32)
    assert b.no_weight_decay() == {"cls_token", "pos_embed"}
    params = dict(b.named_parameters())
    assert all(params[n].ndim == 3 for n in b.no_weight_decay())    # the ndim < 2 rule would decay them
    g, _ = build_backbone("110000", 13, input_size=32, band_groups=[["B02", "B03"], ["B11", "B12"]], bands=EUROSAT)
    assert g.no_weight_decay() == {"cls_token", "pos_embed", "group_embed"}


def test_a_224px_checkpoint_keeps_its_output_at_224_and_is_resampled_elsewhere(tmp_path) -> None:
    torch.manual_seed(0)
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=13, num_classes=0).eval()
    state = theirs.state_dict()
    at224, _ = build_backbone("110000", 13, input_size=224)
    at224.load_state_dict(at224.resize_state(state), strict=False)
    x = torch.randn(2, 13, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(at224.eval()(x), theirs.forward_features(x)[:, 0], rtol=0, atol=0)
    # our own 224 px pretraining checkpoint, fine-tuned at 64 px: load_backbone resamples it
    ckpt.save_backbone(tmp_path / "b.pth", at224.state_dict(), {
        "netnum": "110000", "in_channels": 13, "bands": list(EUROSAT), "mode": 930, "epoch": 1, "expnum": "E",
        "dataset": "x", "args": {}})
    at64, _ = build_backbone("110000", 13, input_size=64)
    ckpt.load_backbone(tmp_path / "b.pth", at64)
    want = resample_abs_pos_embed(state["pos_embed"], new_size=[4, 4], old_size=[14, 14], num_prefix_tokens=1)
    torch.testing.assert_close(at64.pos_embed.data, want)
    assert torch.equal(at64.pos_embed.data[:, 0], state["pos_embed"][:, 0])         # the cls slot is kept
    assert torch.equal(at64.blocks[3].mlp.fc1.weight, state["blocks.3.mlp.fc1.weight"])
    # and back at 224 the same checkpoint gives the same output as before
    again, _ = build_backbone("110000", 13, input_size=224)
    ckpt.load_backbone(tmp_path / "b.pth", again)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), theirs.forward_features(x)[:, 0], rtol=0, atol=0)


def _mae_lrd_groups(model: torch.nn.Module, weight_decay: float, no_weight_decay_list, layer_decay: float) -> dict:
    """MAE util/lr_decay.py param_groups_lrd + get_layer_id_for_vit, transcribed: name -> (lr_scale, wd)."""
    num_layers = len(model.blocks) + 1
    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))
    out = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        this_decay = 0.0 if (p.ndim == 1 or n in no_weight_decay_list) else weight_decay
        if n in ["cls_token", "pos_embed"] or n.startswith("patch_embed"):
            layer_id = 0
        elif n.startswith("blocks"):
            layer_id = int(n.split(".")[1]) + 1
        else:
            layer_id = num_layers
        out[n] = (layer_scales[layer_id], this_decay)
    return out


def test_layer_decay_groups_match_maes_formula() -> None:
    model = build_model("110000", 13, 10, input_size=32)
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups_lrd(model.backbone, 0.75, 1.0, model.head)
    got = {name_of[id(p)]: (g["lr_scale"], g.get("weight_decay", 0.05)) for g in groups for p in g["params"]}
    # MAE builds its ViT with the head inside it: the same parameters under MAE's names
    want = {f"backbone.{n}": v for n, v in
            _mae_lrd_groups(model.backbone, 0.05, model.backbone.no_weight_decay(), 0.75).items()}
    want.update({"head.weight": (1.0, 0.05), "head.bias": (1.0, 0.0)})
    assert set(got) == set(want) and len(got) == len(list(model.parameters()))
    for name, (scale, wd) in want.items():
        assert got[name][0] == pytest.approx(scale) and got[name][1] == wd, name
    assert got["backbone.patch_embed.proj.weight"][0] == pytest.approx(0.02376, abs=1e-5)     # 0.75 ** 13
    assert got["backbone.blocks.11.attn.qkv.weight"][0] == pytest.approx(0.75)
    assert got["backbone.norm.weight"] == (1.0, 0.0) and got["backbone.cls_token"][1] == 0.0
    assert all(g.get("lars_exclude") for g in groups if g.get("weight_decay") == 0.0)
    # --hos 1: the backbone at a fifth of those scales, the head unchanged
    scaled = {name_of[id(p)]: g["lr_scale"] for g in param_groups_lrd(model.backbone, 0.75, 0.2, model.head)
              for p in g["params"]}
    assert scaled["backbone.blocks.0.norm1.weight"] == pytest.approx(0.2 * 0.75 ** 12)
    assert scaled["head.weight"] == 1.0


def test_vit_codes_are_decoded_and_listed() -> None:
    code = decode_netnum("140000")
    assert (code.family, code.backbone, code.patch, code.vit.size) == ("vit", "vit_small_patch8", 8, "small")
    assert decode_netnum("020000").patch == 1 and decode_netnum("020000").vit is None
    text = codes.format_netnums()
    for line in ("vit tiny patch 16", "vit tiny patch 8", "vit small patch 16", "vit small patch 8"):
        assert line in text
    with pytest.raises(UserError, match="digit 2 of family 1"):
        decode_netnum("150000")
    assert codes.vit_netnum("vit_small_patch16") == "130000"


def test_input_size_must_divide_by_the_patch() -> None:
    limits.check_input_size("110000", 64)
    limits.check_input_size("120000", 40)
    with pytest.raises(UserError, match="multiple of 16, and 70 px is not; use --input_size 64 or 80"):
        limits.check_input_size("110000", 70)
    with pytest.raises(UserError, match="use --input_size 16$"):
        limits.check_input_size("130000", 10)


def test_dino_local_crops_become_patch_multiples() -> None:
    assert local_crop_size(64) == 28                      # CNNs: 3/7 of the side, as before
    assert (local_crop_size(64, 8), local_crop_size(64, 16), local_crop_size(224, 16)) == (24, 32, 96)
    from argparse import Namespace

    from models.pretext import dino
    from tests.models.pretext_data import make_opt
    scales = {"global_crops_scale": [0.4, 1.0], "local_crops_scale": [0.05, 0.4]}       # DINO's ViT recipe
    crops = dino.make_transform(Namespace(netnum="110000", local_crops=2, **scales), make_opt(13, 64))
    assert isinstance(crops, MultiCrop) and crops.local_size == 32
    views = crops(torch.rand(13, 70, 70) * 1000 + 300)
    assert [v.shape[-1] for v in views] == [64, 64, 32, 32]
    with pytest.raises(UserError, match="use --input_size 32 or more, or --local-crops 0"):
        dino.make_transform(Namespace(netnum="110000", local_crops=2, **scales), make_opt(13, 16))


@pytest.mark.parametrize("mode", [96, 920, 98, 972, 973, 990, 991])
def test_conv_stage_pretexts_refuse_vits(mode: int) -> None:
    m = decode_mode(mode, "pretrain")
    with pytest.raises(UserError, match="feature maps of a CNN's conv stages") as e:
        guards.check_pretext_backbone("110000", m, pretexts.load(m))
    assert len(str(e.value).splitlines()) == 1
    guards.check_pretext_backbone("090000", m, pretexts.load(m))


def test_mae_refuses_cnns() -> None:
    for mode in (930, 931):
        m = decode_mode(mode, "pretrain")
        with pytest.raises(UserError, match="masks the patch tokens of a Vision Transformer"):
            guards.check_pretext_backbone("090000", m, pretexts.load(m))
        guards.check_pretext_backbone("120000", m, pretexts.load(m))


def test_sentinel2_groups_follow_band_names() -> None:
    idx, names, dropped = resolve_groups(None, EUROSAT, strict=False)
    assert idx == [[1, 2, 3, 7], [4, 5, 6, 12], [10, 11]]          # EuroSAT's files: B8A last
    assert names[1] == ["B05", "B06", "B07", "B8A"] and dropped == ["B01", "B09", "B10"]
    ssl4eo = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8a", "B9", "B10", "B11", "B12")
    assert resolve_groups(None, ssl4eo, strict=False)[0] == [[1, 2, 3, 7], [4, 5, 6, 8], [11, 12]]
    ten = opt_euroms.DTYPES["TEN"]                                  # SatMAE's own order
    assert resolve_groups(None, ten, strict=False)[0] == [[0, 1, 2, 6], [3, 4, 5, 7], [8, 9]]
    assert resolve_groups(None, ("B04", "B03", "B02"), strict=False)[0] == [[2, 1, 0]]
    with pytest.raises(UserError, match="names B8A, which this data's bands"):
        resolve_groups([["B02", "B8A"]], ("B02", "B03"), strict=True)
    with pytest.raises(UserError, match="band b3 is in two band groups"):
        resolve_groups([["B02", "B03"], ["b3"]], EUROSAT, strict=True)


def test_grouped_encoder_encodes_position_and_group() -> None:
    torch.manual_seed(0)
    g = GroupedViTBackbone(VIT_BACKBONES["2"], 13, 32, [[1, 2], [10, 11]], [["B02", "B03"], ["B11", "B12"]])
    assert g.pos_embed.shape == (1, 17, 144) and g.group_embed.shape == (1, 2, 48)
    torch.testing.assert_close(g.pos_embed.data, sincos_2d(144, 4))
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        tokens = g.group_tokens(x)
        assert tokens.shape == (2, 2, 16, 192)
        raw = g.patch_embed[1](x[:, [10, 11]])
        enc = torch.cat([g.pos_embed[:, 1:], g.group_embed[:, 1:2].expand(1, 16, 48)], dim=-1)
        torch.testing.assert_close(tokens[:, 1], raw + enc)
        changed = x.clone()
        changed[:, 0] += 5.0                                           # B01 is in no group: no effect
        torch.testing.assert_close(g(changed), g(x))
        assert g(x).shape == (2, 192) and g.feature == "avg"
