"""Released ViT encoders, offline: state dicts built locally with timm in the exact layouts of TorchGeo's
ViT-S/16 files, SSL4EO-S12's MoCo v3 / DINO / MAE checkpoints and timm's ImageNet files (random values,
nothing downloaded), loaded with the band mapping, the release's preprocessing and the method's feature;
a wrong layout gets one sentence."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import main_cls
from config import baselines as B
from config.dataset_cfg import opt_euroms
from config.errors import UserError
from datasets.transforms import Normalize
from models import build_backbone
from models import pretrained as P
from models.foreign import Foreign

EUROSAT = opt_euroms.BAND_NAMES                          # B01..B12, B8A LAST
MEAN = tuple(float(v) for v in torch.linspace(500, 2500, 13))
STD = tuple(float(v) for v in torch.linspace(100, 900, 13))


@pytest.fixture(scope="module")
def ssl4eo_vit() -> torch.nn.Module:
    """A ViT-S/16 for SSL4EO-S12's 13 L1C bands (B8A 9th), timm layout, as TorchGeo hosts them."""
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, in_chans=13, num_classes=0).eval()


def to_their_order(x: torch.Tensor) -> torch.Tensor:
    """Our EuroSAT-order bands -> SSL4EO's order."""
    return x[:, [EUROSAT.index(b) if b in EUROSAT else None for b in B.SSL4EO_S2_L1C_BANDS]]


LAYOUTS = {   # file name, what the file holds, the method it reveals
    "torchgeo": ("vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth", lambda s: dict(s), "moco"),
    "mocov3": ("B13_vits16_mocov3_ep99.pth", lambda s: {"state_dict": {
        **{f"module.base_encoder.{k}": v for k, v in s.items()},
        "module.base_encoder.head.0.weight": torch.randn(4096, 384),     # the projection MLP: dropped
        **{f"module.momentum_encoder.{k}": v + 1 for k, v in s.items()},
        "module.predictor.0.weight": torch.randn(4096, 256)}, "epoch": 100}, "moco"),
    "dino": ("checkpoint0099.pth", lambda s: {
        "teacher": {**{f"backbone.{k}": v for k, v in s.items()}, "head.mlp.0.weight": torch.randn(2048, 384),
                    "head.last_layer.weight_g": torch.ones(65536, 1)},
        "student": {f"module.backbone.{k}": v + 1 for k, v in s.items()}, "epoch": 100}, "dino"),
    "mae": ("B13_vits16_mae_ep99.pth", lambda s: {"model": {
        **s, "mask_token": torch.zeros(1, 1, 512), "decoder_embed.weight": torch.randn(512, 384),
        "decoder_pos_embed": torch.zeros(1, 197, 512), "decoder_pred.weight": torch.randn(16 * 16 * 13, 512)}}, "mae"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_ssl4eo_vit_layouts_load_with_the_band_mapping(tmp_path: Path, ssl4eo_vit, layout: str) -> None:
    name, wrap, method = LAYOUTS[layout]
    state = ssl4eo_vit.state_dict()
    path = tmp_path / name
    torch.save(wrap(state), path)
    foreign = P.recognise(torch.load(path, weights_only=True), path)
    assert (foreign.kind, foreign.arch, foreign.method, foreign.pretext) == ("vit", "vit_small_patch16", method,
                                                                              f"ssl4eo-{method}")
    assert foreign.meta["input_size"] == 224 and foreign.meta["vit_feature"] == "cls"
    ours, _ = build_backbone("130000", 13, input_size=224)
    P.load_foreign(foreign, ours, EUROSAT)
    w, theirs_w = ours.patch_embed.proj.weight, state["patch_embed.proj.weight"]
    for i, band in enumerate(EUROSAT):                             # filters moved BY NAME (B8A: 9th -> 13th)
        assert torch.equal(w[:, i], theirs_w[:, B.SSL4EO_S2_L1C_BANDS.index(band)])
    assert torch.equal(ours.blocks[5].attn.qkv.weight, state["blocks.5.attn.qkv.weight"])
    assert ours.feature == "cls"
    x = torch.randn(1, 13, 224, 224)
    with torch.no_grad():                                          # the same network as theirs on their band order
        torch.testing.assert_close(ours.eval()(x), ssl4eo_vit(to_their_order(x)), rtol=1e-5, atol=1e-5)


def test_at_64px_the_position_embedding_is_resampled_and_data2vec_is_avg(tmp_path: Path, ssl4eo_vit) -> None:
    state = ssl4eo_vit.state_dict()
    path = tmp_path / "vit_small_patch16_224_sentinel2_all_data2vec.pth"
    torch.save(state, path)
    foreign = P.recognise(torch.load(path, weights_only=True), path)
    assert foreign.method == "data2vec" and foreign.feature == "avg"
    ours, _ = build_backbone("130000", 13, input_size=64)
    P.load_foreign(foreign, ours, EUROSAT)
    want = resample_abs_pos_embed(state["pos_embed"], new_size=[4, 4], old_size=[14, 14], num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.data, want)
    assert ours.feature == "avg"


def test_wrong_layouts_get_one_sentence(tmp_path: Path, ssl4eo_vit) -> None:
    state = ssl4eo_vit.state_dict()
    path = tmp_path / "vits16.pth"
    torch.save(state, path)
    foreign = P.recognise(torch.load(path, weights_only=True), path)
    tiny, _ = build_backbone("110000", 13, input_size=64)
    with pytest.raises(UserError, match=r"holds a ViT-Small/16 \(384-d tokens, 12 blocks, 16 px patches, 13 input "
                                        r"bands\), which does not fit the vit_tiny_patch16 backbone of this --netnum; "
                                        r"use --netnum 130000") as e:
        P.load_foreign(foreign, tiny, EUROSAT)
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(UserError, match="use --netnum 130000"):
        P.load_foreign(foreign, build_backbone("090000", 13)[0], EUROSAT)
    base = timm.create_model("vit_base_patch16_224", pretrained=False, in_chans=13, num_classes=0, depth=2).state_dict()
    torch.save(base, tmp_path / "vitb.pth")
    fb = P.recognise(torch.load(tmp_path / "vitb.pth", weights_only=True), tmp_path / "vitb.pth")
    with pytest.raises(UserError, match="ViT-Base/16 .* no --netnum of this tool fits it"):
        P.load_foreign(fb, tiny, EUROSAT)
    beit = {**state, "blocks.0.attn.q_bias": torch.zeros(384), "blocks.0.gamma_1": torch.ones(384)}
    with pytest.raises(UserError, match="BEiT-layout ViT \\(data2vec"):
        P.recognise(beit, tmp_path / "d2v.pth")
    rgb = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).state_dict()
    with pytest.raises(UserError, match="ImageNet RGB ViT weights go through --weights FILE"):
        P.recognise(rgb, tmp_path / "rgb.pth")
    resnet = {"conv1.weight": torch.randn(64, 13, 7, 7), "bn1.weight": torch.ones(64)}
    fr = Foreign(tmp_path / "r.pth", resnet, B.SSL4EO_S2_L1C_BANDS, "moco", "resnet50")
    with pytest.raises(UserError, match="holds a resnet50, a CNN; the backbone here is vit_tiny_patch16: use "
                                        "--netnum 020000"):
        P.load_foreign(fr, tiny, EUROSAT)


def _timm_file(tmp_path: Path, arch: str, num_classes: int, name: str, **kw) -> tuple[Path, dict]:
    torch.manual_seed(2)
    state = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kw).state_dict()
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def test_timm_imagenet_file_puts_rgb_filters_on_b04_b03_b02(tmp_path: Path) -> None:
    path, state = _timm_file(tmp_path, "vit_tiny_patch16_224", 1000, "model.safetensors")
    backbone, _ = build_backbone("110000", 13, ptcp=True, rgb_index=(3, 2, 1), weights=path, input_size=64)
    w = backbone.patch_embed.proj.weight
    assert torch.equal(w[:, [3, 2, 1]], state["patch_embed.proj.weight"])
    assert w[:, [b for b in range(13) if b not in (3, 2, 1)]].abs().sum() == 0
    assert backbone.imagenet_stats == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))            # augreg's normalisation
    assert backbone.pos_embed.shape == (1, 17, 192) and torch.equal(backbone.blocks[0].norm1.weight,
                                                                    state["blocks.0.norm1.weight"])
    # the adapter then feeds B04/B03/B02 as the release expects: stretch to 0..255, then (v/255 - 0.5) / 0.5
    norm = Normalize(MEAN, STD)
    adapter = P.adapter_for(P.imagenet_targets(EUROSAT, (3, 2, 1), MEAN, backbone.imagenet_stats), norm.mean, norm.std)
    raw = torch.randint(0, 4000, (2, 13, 8, 8)).float()
    y = adapter(norm(raw))
    for band in (3, 2, 1):
        v = (1 + raw[:, band] * 254 / 2750).clamp(1, 255)
        torch.testing.assert_close(y[:, band], (v / 255 - 0.5) / 0.5, rtol=1e-5, atol=1e-4)


def test_timm_release_is_told_by_its_head(tmp_path: Path) -> None:
    path, _ = _timm_file(tmp_path, "vit_small_patch16_224", 0, "dino.safetensors")        # DINO: no head
    backbone, _ = build_backbone("130000", 3, ptcp=True, weights=path, input_size=32)
    assert backbone.imagenet_stats == (B.IMAGENET_MEAN, B.IMAGENET_STD)
    path21k, _ = _timm_file(tmp_path, "vit_small_patch16_224", 21843, "in21k.safetensors")
    assert build_backbone("130000", 3, ptcp=True, weights=path21k, input_size=32)[0].imagenet_stats[0] == (0.5,) * 3


def test_timm_files_that_do_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _timm_file(tmp_path, "vit_small_patch16_224", 1000, "s16.safetensors")
    with pytest.raises(UserError, match="holds a ViT-Small/16 .*; this --netnum is vit_tiny_patch16: use --netnum 130000"):
        build_backbone("110000", 13, ptcp=True, rgb_index=(3, 2, 1), weights=path, input_size=64)
    s2, _ = _timm_file(tmp_path, "vit_tiny_patch16_224", 0, "s2.safetensors", in_chans=13)
    with pytest.raises(UserError, match="Sentinel-2 weights are evaluated with --mode 4x --encoder_cp FILE"):
        build_backbone("110000", 13, ptcp=True, rgb_index=(3, 2, 1), weights=s2, input_size=64)
    with pytest.raises(UserError, match="timm has no ImageNet weights for vit_tiny_patch8"):
        build_backbone("120000", 13, ptcp=True, rgb_index=(3, 2, 1), input_size=64)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    with pytest.raises(UserError, match="are not in the Hugging Face cache .* nothing is downloaded at run time"):
        build_backbone("110000", 13, ptcp=True, rgb_index=(3, 2, 1), input_size=64)
    cached, state = _timm_file(tmp_path, "vit_tiny_patch16_224", 1000, "cached.safetensors")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name: str(cached) if repo == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
                        and name == "model.safetensors" else None)
    backbone, _ = build_backbone("110000", 3, ptcp=True, input_size=64)              # --ptcp 1 from the cache
    assert torch.equal(backbone.patch_embed.proj.weight, state["patch_embed.proj.weight"])


@pytest.mark.usefixtures("one_thread")
def test_encoder_cp_probe_end_to_end(demo_root, tmp_path: Path, ssl4eo_vit) -> None:
    """main_cls.py --mode 41 --encoder_cp <TorchGeo ViT-S/16 file> --probe logreg: a row for ssl4eo-dino."""
    path = tmp_path / "vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth"
    torch.save(ssl4eo_vit.state_dict(), path)
    res = tmp_path / "r.csv"
    main_cls.main(["--ds", "demo", "--data-root", str(demo_root), "--netnum", "130000", "--input_size", "32",
                   "--workers", "0", "--ckpt", str(tmp_path / "ck"), "--results", str(res), "--no-progress",
                   "--mode", "41", "--encoder_cp", str(path), "--ts", "5", "--probe", "logreg"])
    import csv
    with open(res, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["pretext"] == "ssl4eo-dino" and row["input_size"] == "32" and 0 <= float(row["OA"]) <= 100
