"""Backbones and models: every netnum builds for 3 and 13 bands, ImageNet weights placed on the RGB bands.

ImageNet weights are never downloaded here: a fake weights file (a random state dict)
is written into a temporary $TORCH_HOME under the file name torchvision expects.
"""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from config.codes import BACKBONES
from config.errors import UserError
from models import ProjectionHead, SceneNet, build_backbone, build_model

# Feature size D per backbone: scene network (global average pool) and plain torchvision (family 9).
SCENE_DIM = {"resnet18": 512, "resnet18_small": 512, "resnet34": 512, "resnet34_small": 512,
             "resnet50": 2048, "resnet101": 2048, "vgg16_bn": 512, "googlenet": 1024,
             "alexnet": 256, "alexnet_small": 256}
TORCHVISION_DIM = {**SCENE_DIM, "vgg16_bn": 4096, "alexnet": 4096, "alexnet_small": 4096}
CODES = sorted(BACKBONES.items())


def _features(backbone: nn.Module, bands: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = torch.randn(2, bands, size, size, generator=torch.Generator().manual_seed(seed))
    backbone.eval()
    with torch.no_grad():
        return backbone(x), backbone.feature_maps(x)


@pytest.mark.parametrize("bands", [3, 13])
@pytest.mark.parametrize("digit,name", CODES, ids=[n for _, n in CODES])
def test_scene_backbone_builds_for_any_band_count(digit: str, name: str, bands: int) -> None:
    backbone, dim = build_backbone(f"0{digit}0000", bands)
    feats, maps = _features(backbone, bands)

    assert dim == backbone.out_dim == SCENE_DIM[name]
    assert feats.shape == (2, dim)
    assert torch.isfinite(feats).all()
    assert [m.shape[1] for m in maps] == backbone.channels
    assert maps[-1].shape[1] == dim
    # global average pool of the last stage
    torch.testing.assert_close(feats, maps[-1].mean(dim=(2, 3)))
    # the rebuilt first conv takes every band
    first_conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == bands


@pytest.mark.parametrize("digit,name", CODES, ids=[n for _, n in CODES])
def test_torchvision_family_keeps_the_torchvision_classifier(digit: str, name: str) -> None:
    model = build_model(f"9{digit}0000", 3, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(model, SceneNet)
    assert logits.shape == (2, 7)
    assert model.backbone.out_dim == model.head.in_features == TORCHVISION_DIM[name]
    assert model.head.out_features == 7
    torch.testing.assert_close(logits, model.head(model.backbone(x)))


@pytest.mark.parametrize("small,standard", [("0", "9"), ("3", "1"), ("8", "7")],
                         ids=["resnet18", "resnet34", "alexnet"])
def test_small_stem_keeps_more_resolution(small: str, standard: str) -> None:
    _, maps_small = _features(build_backbone(f"0{small}0000", 3)[0], 3)
    _, maps_std = _features(build_backbone(f"0{standard}0000", 3)[0], 3)
    assert maps_small[-1].shape[-1] > maps_std[-1].shape[-1]
    if small != "8":  # ResNet: 3x3 stride-1 stem and no max-pool = 4x the resolution (64 -> 8 vs 2)
        assert (maps_small[-1].shape[-1], maps_std[-1].shape[-1]) == (8, 2)


@pytest.mark.parametrize("netnum", ["990000", "920000", "950000"])
def test_torchvision_family_with_13_bands_is_a_user_error(netnum: str) -> None:
    with pytest.raises(UserError, match=rf"--netnum {netnum}.*13 bands.*--netnum 0{netnum[1]}0000"):
        build_backbone(netnum, 13)


def test_scene_model_has_separate_backbone_and_head() -> None:
    model = build_model("000000", 13, num_classes=10)
    logits = model(torch.randn(2, 13, 64, 64))
    assert logits.shape == (2, 10)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == 512
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_head = sum(p.numel() for p in model.head.parameters())
    assert n_backbone + n_head == sum(p.numel() for p in model.parameters())
    assert n_head == 512 * 10 + 10


def test_projection_head_is_simclr_mlp() -> None:
    head = ProjectionHead(512, out_dim=128)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head.net[0].in_features, head.net[0].out_features, head.net[3].out_features) == (512, 512, 128)
    assert head(torch.randn(4, 512)).shape == (4, 128)


# --- ImageNet weights, without network ------------------------------------------------


def _fake_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, state: dict) -> None:
    """Put ``state`` where torchvision looks for ``arch``'s IMAGENET1K_V1 weights, under a temp $TORCH_HOME."""
    url = tvm.get_model_weights(arch)["IMAGENET1K_V1"].url
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / Path(url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))


@pytest.fixture
def fake_resnet18(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    state = tvm.resnet18().state_dict()
    for key, value in state.items():  # non-trivial BN statistics, so "loaded" is visible everywhere
        if key.endswith(("running_mean", "running_var")):
            value.uniform_(0.5, 1.5)
    _fake_weights(tmp_path, monkeypatch, "resnet18", state)
    return state


def test_imagenet_filters_placed_on_rgb_bands(fake_resnet18: dict[str, torch.Tensor]) -> None:
    backbone, _ = build_backbone("090000", 13, ptcp=True, rgb_index=(3, 2, 1))
    conv = backbone.stem[0]
    rgb = fake_resnet18["conv1.weight"]                       # 64 x 3 x 7 x 7, R G B order
    assert conv.weight.shape == (64, 13, 7, 7)
    torch.testing.assert_close(conv.weight[:, 3], rgb[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(conv.weight[:, 2], rgb[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(conv.weight[:, 1], rgb[:, 2], rtol=0, atol=0)
    others = [b for b in range(13) if b not in (3, 2, 1)]
    assert conv.weight[:, others].abs().sum().item() == 0.0
    # everything after the stem conv is the ImageNet state dict
    torch.testing.assert_close(backbone.stages[3][1].conv2.weight, fake_resnet18["layer4.1.conv2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(backbone.stem[1].running_var, fake_resnet18["bn1.running_var"], rtol=0, atol=0)

    # the network initially sees exactly the RGB image
    rgb_net, _ = build_backbone("090000", 3, ptcp=True)
    x = torch.randn(2, 13, 64, 64)
    backbone.eval(), rgb_net.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), rgb_net(x[:, [3, 2, 1]]), rtol=1e-5, atol=1e-5)


def test_small_stem_keeps_imagenet_weights_except_stem(fake_resnet18: dict[str, torch.Tensor]) -> None:
    backbone, _ = build_backbone("000000", 13, ptcp=True)     # resnet18_small: no rgb_index needed
    conv, bn = backbone.stem[0], backbone.stem[1]
    assert conv.weight.shape == (64, 13, 3, 3) and conv.stride == (1, 1)
    assert bn.running_mean.abs().sum().item() == 0.0 and torch.all(bn.running_var == 1)
    torch.testing.assert_close(backbone.stages[0][0].conv1.weight, fake_resnet18["layer1.0.conv1.weight"], rtol=0, atol=0)


def test_torchvision_family_loads_imagenet_and_replaces_last_layer(fake_resnet18: dict[str, torch.Tensor]) -> None:
    model = build_model("990000", 3, num_classes=5, ptcp=True)
    torch.testing.assert_close(model.backbone.stem[0].weight, fake_resnet18["conv1.weight"], rtol=0, atol=0)
    assert model.head.weight.shape == (5, 512)


def test_googlenet_rgb_placement_and_input_transform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(7)
    _fake_weights(tmp_path, monkeypatch, "googlenet",
                  tvm.googlenet(aux_logits=True, init_weights=False).state_dict())
    multi, _ = build_backbone("060000", 5, ptcp=True, rgb_index=(4, 0, 2))
    rgb, _ = build_backbone("060000", 3, ptcp=True)
    x = torch.randn(2, 5, 64, 64)
    multi.eval(), rgb.eval()
    with torch.no_grad():
        torch.testing.assert_close(multi(x), rgb(x[:, [4, 0, 2]]), rtol=1e-5, atol=1e-5)
        # torchvision's transform_input: channel 0 becomes x * 0.229 / 0.5 + (0.485 - 0.5) / 0.5
        ones = torch.ones(1, 3, 1, 1)
        assert rgb.stem(ones)[0, 0, 0, 0].item() == pytest.approx(0.229 / 0.5 + (0.485 - 0.5) / 0.5)
    # without ImageNet weights the scaling is the identity, and checkpoints keep the same keys
    plain, _ = build_backbone("060000", 5)
    assert plain.state_dict().keys() == multi.state_dict().keys()
    assert torch.equal(plain.stem(x), x)


def test_missing_imagenet_weights_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url: str, dst: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(UserError, match=rf"could not be loaded.*{expected}"):
        build_backbone("090000", 3, ptcp=True)


def test_imagenet_weights_need_rgb_positions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="R, G, B"):
        build_backbone("020000", 2, ptcp=True)
    with pytest.raises(UserError, match=r"\(3, 3, 1\)"):
        build_backbone("020000", 13, ptcp=True, rgb_index=(3, 3, 1))
