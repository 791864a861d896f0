"""Pretrained baselines: foreign Sentinel-2 state dicts mapped by band name, and each baseline's preprocessing.

The state dicts are SHAPED like SSL4EO-S12's and TorchGeo's files (random values; nothing
is downloaded). The strongest check compares our loaded backbone, fed by our pipeline,
with a plain torchvision ResNet that loads their file as THEY do (``load_state_dict`` with
their keys) and is fed their preprocessing (their band order, ``clip(DN / 10000, 0, 1)``).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from config import baselines as B
from config.dataset_cfg import opt_euroms
from config.errors import UserError
from datasets.transforms import Normalize
from models import build_backbone, pretrained as P
from models.foreign import map_first_conv

EUROSAT_BANDS = opt_euroms.BAND_NAMES                      # B01..B12, B8A LAST
# per-band statistics of the 469-file EuroSAT subset (../shared/data/README.md), file order
MEAN = (1351.4, 1117.8, 1047.8, 950.3, 1206.9, 2014.3, 2387.1, 2314.9, 742.0, 12.1, 1838.8, 1136.8, 2610.0)
STD = (239.7, 332.1, 395.5, 590.7, 559.5, 859.7, 1087.6, 1121.1, 414.6, 4.4, 1008.7, 768.4, 1229.7)


def their_resnet(arch: str = "resnet18", bands: int = 13, seed: int = 0) -> nn.Module:
    """A torchvision/timm ResNet with a ``bands``-input first conv and non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = getattr(tvm, arch)()
    net.conv1 = nn.Conv2d(bands, 64, 7, 2, 3, bias=False)
    for name, buf in net.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buf.uniform_(0.5, 1.5)
    return net.eval()


def timm_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """TorchGeo's files: timm keys, no ``num_batches_tracked``, no fc."""
    return {k: v.clone() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}


def raw_dn(n: int = 2, bands: int = 13, size: int = 32, seed: int = 1) -> torch.Tensor:
    """Sentinel-2-like digital numbers, some above 10000 (saturated pixels exist in L1C)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 12000, (n, bands, size, size), generator=g).float()


def test_s2_band_names_are_canonical() -> None:
    assert [P.s2_name(b) for b in ("B1", "b01", "B8a", "B8A", "B12", "B10")] == ["B01", "B01", "B8A", "B8A", "B12", "B10"]
    assert P.s2_name("R") is None and P.s2_name("B13") is None and P.s2_name("B9A") is None


def test_b8a_filters_move_from_their_position_to_ours() -> None:
    # their order puts B8A 9th (index 8); EuroSAT's files put it last (index 12)
    w = torch.zeros(64, 13, 7, 7)
    for j in range(13):
        w[:, j] = j + 1                                 # filter j is the constant j + 1
    out, missing, dropped = map_first_conv(w, B.SSL4EO_S2_L1C_BANDS, EUROSAT_BANDS)
    got = [int(out[0, i, 0, 0]) - 1 for i in range(13)]  # which of their filters sits at each of our bands
    assert got == [B.SSL4EO_S2_L1C_BANDS.index(b) for b in EUROSAT_BANDS]
    assert got[12] == 8 and got[8] == 9 and got[9] == 10   # B8A, B09, B10
    assert missing == [] and dropped == []


def test_twelve_and_thirteen_bands() -> None:
    w = torch.randn(64, 12, 7, 7)                        # L2A weights: no B10
    out, missing, dropped = map_first_conv(w, B.SSL4EO_S2_L2A_BANDS, EUROSAT_BANDS)
    assert missing == ["B10"] and dropped == []
    assert out[:, EUROSAT_BANDS.index("B10")].abs().sum() == 0
    assert torch.equal(out[:, 12], w[:, B.SSL4EO_S2_L2A_BANDS.index("B8A")])
    assert torch.equal(out[:, 10], w[:, B.SSL4EO_S2_L2A_BANDS.index("B11")])

    ours12 = tuple(b for b in EUROSAT_BANDS if b != "B10")  # --dtype ALL reads 12 bands
    w13 = torch.randn(64, 13, 7, 7)
    out, missing, dropped = map_first_conv(w13, B.SSL4EO_S2_L1C_BANDS, ours12)
    assert out.shape[1] == 12 and missing == [] and dropped == ["B10"]
    assert torch.equal(out[:, ours12.index("B8A")], w13[:, 8])


@pytest.mark.parametrize("arch,netnum", [("resnet18", "090000"), ("resnet50", "020000")])
def test_loaded_backbone_equals_their_network_on_their_preprocessing(tmp_path: Path, arch: str, netnum: str) -> None:
    net = their_resnet(arch)
    path = tmp_path / f"{arch}_sentinel2_all_moco-0000.pth"
    torch.save(timm_state(net), path)

    foreign = P.recognise(torch.load(path, weights_only=True), path)
    assert foreign.pretext == "ssl4eo-moco" and foreign.arch == arch and foreign.bands == B.SSL4EO_S2_L1C_BANDS
    ours, _ = build_backbone(netnum, 13)
    P.load_foreign(foreign, ours, EUROSAT_BANDS)
    norm = Normalize(MEAN, STD)
    ours.set_input_adapter(P.adapter_for(P.ssl4eo_targets(EUROSAT_BANDS), norm.mean, norm.std))
    ours.eval()

    raw = raw_dn()                                        # EuroSAT file order
    perm = [EUROSAT_BANDS.index(b) for b in B.SSL4EO_S2_L1C_BANDS]
    theirs_in = (raw[:, perm] / 10000).clamp(0, 1)        # their order, their scaling
    net.fc = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(ours(norm(raw)), net(theirs_in), rtol=1e-4, atol=1e-4)


def test_moco_checkpoint_uses_the_query_encoder(tmp_path: Path) -> None:
    q, k = their_resnet(seed=0), their_resnet(seed=1)
    state = {f"module.encoder_q.{n}": v for n, v in q.state_dict().items() if not n.startswith("fc.")}
    state |= {"module.encoder_q.fc.0.weight": torch.randn(2048, 512), "module.encoder_q.fc.2.weight": torch.randn(128, 2048)}
    state |= {f"module.encoder_k.{n}": v for n, v in k.state_dict().items()}
    state |= {"module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = tmp_path / "B13_rn18_moco_0099_ckpt.pth"
    torch.save({"epoch": 99, "arch": "resnet18", "state_dict": state, "optimizer": {}}, path)

    foreign = P.recognise(torch.load(path, weights_only=True), path)
    assert foreign.method == "moco" and "fc.0.weight" not in foreign.state
    ours, _ = build_backbone("090000", 13)
    P.load_foreign(foreign, ours, EUROSAT_BANDS)
    assert torch.equal(ours.stages[3][1].conv2.weight, q.layer4[1].conv2.weight)
    assert torch.equal(ours.stem[1].running_var, q.bn1.running_var)
    assert torch.equal(ours.stem[0].weight[:, 12], q.conv1.weight[:, 8])      # B8A


def test_dino_checkpoint_uses_the_teacher(tmp_path: Path) -> None:
    student, teacher = their_resnet(seed=0), their_resnet(seed=2)
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": {f"module.backbone.{n}": v for n, v in student.state_dict().items()},
                "teacher": {**{f"backbone.{n}": v for n, v in teacher.state_dict().items()},
                            "head.mlp.0.weight": torch.randn(8, 512)}}, path)
    foreign = P.recognise(torch.load(path, weights_only=True), path)
    assert foreign.pretext == "ssl4eo-dino"
    ours, _ = build_backbone("090000", 13)
    P.load_foreign(foreign, ours, EUROSAT_BANDS)
    assert torch.equal(ours.stages[0][0].conv1.weight, teacher.layer1[0].conv1.weight)


def test_foreign_weights_refuse_what_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "resnet50_sentinel2_all_dino.pth"
    torch.save(timm_state(their_resnet("resnet50")), path)
    foreign = P.recognise(torch.load(path, weights_only=True), path)
    assert foreign.pretext == "ssl4eo-dino"
    with pytest.raises(UserError, match="holds a resnet50.*--netnum 020000"):
        P.load_foreign(foreign, build_backbone("090000", 13)[0], EUROSAT_BANDS)
    with pytest.raises(UserError, match="7x7 stride-2 stem.*--netnum 020000"):
        P.load_foreign(foreign, build_backbone("000000", 13)[0], EUROSAT_BANDS)
    with pytest.raises(UserError, match="not Sentinel-2 bands"):
        P.load_foreign(foreign, build_backbone("020000", 3)[0], ("R", "G", "B"))

    rgb = tmp_path / "rgb.pth"
    torch.save(tvm.resnet18().state_dict(), rgb)
    with pytest.raises(UserError, match="takes 3 bands.*--weights"):
        P.recognise(torch.load(rgb, weights_only=True), rgb)
    with pytest.raises(UserError, match="neither a backbone checkpoint"):
        P.recognise({"epoch": 3, "lr": 0.1}, tmp_path / "x.pth")
    assert P.recognise({"backbone": {}, "meta": {}}, tmp_path / "ours.pth") is None


def test_imagenet_preprocessing_on_sentinel2_digital_numbers() -> None:
    rgb_index = (3, 2, 1)                                  # B04 B03 B02 in EuroSAT's file order
    norm = Normalize(MEAN, STD)
    adapter = P.adapter_for(P.imagenet_targets(EUROSAT_BANDS, rgb_index, MEAN), norm.mean, norm.std)
    raw = raw_dn(size=8)
    y = adapter(norm(raw))
    for k, band in enumerate(rgb_index):                  # the EuroSAT RGB release's stretch, then ImageNet
        v = (1 + raw[:, band] * 254 / 2750).clamp(1, 255)
        ref = (v - 255 * B.IMAGENET_MEAN[k]) / (255 * B.IMAGENET_STD[k])
        torch.testing.assert_close(y[:, band], ref, rtol=1e-5, atol=1e-4)
    others = [b for b in range(13) if b not in rgb_index]   # zero filters at the start: standardised as before
    torch.testing.assert_close(y[:, others], norm(raw)[:, others], rtol=1e-5, atol=1e-5)


def test_imagenet_preprocessing_on_8bit_rgb() -> None:
    mean, std = (100.0, 90.0, 80.0), (40.0, 35.0, 30.0)    # a dataset's own statistics
    norm = Normalize(mean, std)
    adapter = P.adapter_for(P.imagenet_targets(("R", "G", "B"), (0, 1, 2), mean), norm.mean, norm.std)
    raw = torch.randint(0, 256, (2, 3, 8, 8)).float()
    ref = (raw - torch.tensor(B.IMAGENET_MEAN_255).view(1, 3, 1, 1)) / torch.tensor(B.IMAGENET_STD_255).view(1, 3, 1, 1)
    torch.testing.assert_close(adapter(norm(raw)), ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(UserError, match="0..255 RGB"):
        P.imagenet_targets(("R", "G", "B"), (0, 1, 2), (900.0, 800.0, 700.0))


def test_weights_file_replaces_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))    # the hub cache has nothing
    torch.manual_seed(5)
    state = tvm.resnet18().state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)   # wrapped and DDP-prefixed
    backbone, _ = build_backbone("090000", 13, ptcp=True, rgb_index=(3, 2, 1), weights=path)
    assert torch.equal(backbone.stem[0].weight[:, 3], state["conv1.weight"][:, 0])
    assert torch.equal(backbone.stages[2][0].conv1.weight, state["layer3.0.conv1.weight"])
    with pytest.raises(UserError, match="holds torchvision's resnet18 weights, not resnet50's; use --netnum 090000"):
        build_backbone("020000", 3, ptcp=True, weights=path)


def test_adapter_is_saved_and_restored_with_the_backbone() -> None:
    backbone, _ = build_backbone("090000", 4)
    plain_keys = set(backbone.state_dict())
    adapter = P.adapter_for([P.RawAffine(0.5, 1.0, 0.0, 2.0)] * 4, [10.0] * 4, [2.0] * 4)
    backbone.set_input_adapter(adapter)
    assert set(backbone.state_dict()) - plain_keys == {f"input_adapter.{n}" for n in ("scale", "shift", "low", "high")}
    clone, _ = build_backbone("090000", 4)
    clone.set_input_adapter(P.InputAdapter.identity(4))
    clone.load_state_dict(backbone.state_dict())
    x = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(clone.input_adapter(x), (0.5 * (x * 2 + 10) + 1).clamp(0, 2))
