"""GAN pretexts 990 (non-saturating) and 991 (feature matching).

Small and fast: 32x32 inputs, batches of 8, ResNet-18 ('090000') and once AlexNet-small
('080000'), one CPU thread.
"""
from __future__ import annotations

import argparse
import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from config.errors import UserError
from engine.schedules import LRSchedule
from models import build_backbone, build_model
from models.pretext import gan, gan_fm
from tests.models.pretext_data import SIZE, make_opt, raw_images

MODULES = {"gan": gan, "gan_fm": gan_fm}
NETNUM = "090000"


def real_batch(bands: int, n: int = 8, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    view = gan.make_transform(argparse.Namespace(), make_opt(bands))
    return default_collate([view(x) for x in raw_images(n, bands, seed=seed)])


def pretext(name: str, bands: int, netnum: str = NETNUM, seed: int = 0, **flags) -> gan.GAN:
    torch.manual_seed(seed)
    backbone, _ = build_backbone(netnum, bands)
    return MODULES[name].build(argparse.Namespace(**flags), make_opt(bands), backbone)


@pytest.mark.parametrize("size,start,reached", [(32, 4, 32), (64, 4, 64), (40, 5, 40), (72, 5, 80), (224, 7, 224)])
def test_generator_plan(size: int, start: int, reached: int) -> None:
    got_start, channels, got_reached = gan.generator_plan(size)
    assert (got_start, got_reached) == (start, reached)
    assert channels[-1] == gan.G_WIDTH and max(channels) <= gan.G_MAX_CHANNELS
    assert got_start * 2 ** len(channels) == reached          # one doubling per layer, the last to the bands
    if size == 64:
        assert channels == [512, 256, 128, 64]                # DCGAN's 64x64 generator


@pytest.mark.parametrize("bands", [3, 13])
@pytest.mark.parametrize("size", [32, 64, 72])
def test_generator_output_shape(bands: int, size: int) -> None:
    torch.manual_seed(0)
    g = gan.Generator(gan.DEFAULT_Z, bands, size)
    out = g(torch.randn(2, gan.DEFAULT_Z))
    assert out.shape == (2, bands, size, size) and out.dtype == torch.float32
    assert out.min() < 0 < out.max()                           # linear output, not a sigmoid or ReLU


@pytest.mark.parametrize("bands", [3, 13])
@pytest.mark.parametrize("name", list(MODULES))
def test_forward_views_and_stats(name: str, bands: int) -> None:
    real = real_batch(bands, 8)
    assert real.shape == (8, bands, SIZE, SIZE) and real.dtype == torch.float32
    net = pretext(name, bands)
    assert net.sample(3).shape == (3, bands, SIZE, SIZE)
    loss, stats = net(real)
    assert loss.dim() == 0 and torch.isfinite(loss)
    keys = {"loss_d", "loss_g", "d_real", "d_fake"} | ({"loss_fm"} if name == "gan_fm" else set())
    assert set(stats) == keys and all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad
                                      for v in stats.values())     # detached 0-dim: no host sync in the loop
    stats = {k: v.item() for k, v in stats.items()}
    assert loss.item() == pytest.approx(stats["loss_d"] + stats["loss_g"], rel=1e-5)
    assert 0 < stats["d_real"] < 1 and 0 < stats["d_fake"] < 1
    # an untrained head is near chance: L_D near 2 log 2, the non-saturating L_G near log 2
    assert abs(stats["loss_d"] - 2 * np.log(2)) < 0.5
    if name == "gan":
        assert abs(stats["loss_g"] - np.log(2)) < 0.5
    else:
        assert stats["loss_g"] == stats["loss_fm"] > 0          # --gan-fm-bce 0: feature matching alone


def reference_losses(net: gan.GAN, real: torch.Tensor, seed: int, fm: bool, adv_weight: float):
    """L_D and L_G written the textbook way: plain module calls, no parameter detaching."""
    torch.manual_seed(seed)
    fake = net.sample(len(real))
    logit_real, feat_real = net.discriminator(real)
    logit_fake, _ = net.discriminator(fake.detach())
    logit_g, feat_g = net.discriminator(fake)
    ones, zeros = torch.ones_like(logit_real), torch.zeros_like(logit_real)
    loss_d = (F.binary_cross_entropy_with_logits(logit_real, ones)
              + F.binary_cross_entropy_with_logits(logit_fake, zeros))
    loss_g = adv_weight * F.binary_cross_entropy_with_logits(logit_g, ones)
    if fm:
        loss_g = loss_g + ((feat_real.detach().mean(0) - feat_g.mean(0)) ** 2).mean()
    return loss_d, loss_g


@pytest.mark.parametrize("name,netnum,flags", [
    ("gan", NETNUM, {}),
    ("gan_fm", NETNUM, {}),
    ("gan_fm", NETNUM, {"gan_fm_bce": 0.5}),
    ("gan", "080000", {}),
])
def test_one_backward_gives_each_network_only_its_own_gradient(name: str, netnum: str, flags: dict) -> None:
    real = real_batch(3, 8)
    net = pretext(name, 3, netnum, **flags)
    g_params = list(net.generator.parameters())
    d_params = list(net.discriminator.parameters())

    torch.manual_seed(5)
    loss, stats = net(real)
    loss.backward()
    assert all(p.grad is not None for p in g_params + d_params)   # DDP needs a gradient for every parameter

    loss_d, loss_g = reference_losses(net, real, 5, name == "gan_fm", flags.get("gan_fm_bce", 1.0 if name == "gan" else 0.0))
    stats = {k: v.item() for k, v in stats.items()}
    assert stats["loss_d"] == pytest.approx(loss_d.item(), rel=1e-6)
    assert stats["loss_g"] == pytest.approx(loss_g.item(), rel=1e-6)
    ref_g = torch.autograd.grad(loss_g, g_params, retain_graph=True)
    ref_d = torch.autograd.grad(loss_d, d_params, retain_graph=True)
    for p, r in zip(g_params, ref_g):
        torch.testing.assert_close(p.grad, r, rtol=0, atol=1e-6)
    for p, r in zip(d_params, ref_d):
        torch.testing.assert_close(p.grad, r, rtol=0, atol=1e-6)
    # without the detaching, the generator's term would push D as well: the check above has teeth
    naive_d = torch.autograd.grad(loss_d + loss_g, d_params)
    assert max((a - b).abs().max().item() for a, b in zip(naive_d, ref_d)) > 1e-4


def test_running_statistics_come_from_real_images_only() -> None:
    real = real_batch(3, 8)
    net = pretext("gan", 3)
    twin = copy.deepcopy(net.backbone)
    net(real)
    twin(real)                                   # one train-mode pass of the real batch, nothing else
    got, want = dict(net.backbone.named_buffers()), dict(twin.named_buffers())
    assert got.keys() == want.keys() and any(k.endswith("running_mean") for k in got)
    for k, value in got.items():
        torch.testing.assert_close(value, want[k], rtol=0, atol=0)


def test_build_optimizer_two_groups_and_the_schedule_keeps_the_ratio() -> None:
    net = pretext("gan", 3)
    args = argparse.Namespace(gan_g_lr_scale=2.0, wd=1e-6)
    opt = gan.build_optimizer(args, net, 2e-4)
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 2
    d_group, g_group = opt.param_groups
    assert (d_group["name"], g_group["name"]) == ("discriminator", "generator")
    assert g_group["betas"] == d_group["betas"] == (0.5, 0.999)
    assert g_group["weight_decay"] == d_group["weight_decay"] == 1e-6
    assert g_group["lr"] == pytest.approx(4e-4) and d_group["lr"] == pytest.approx(2e-4)
    assert {id(p) for p in g_group["params"]} == {id(p) for p in net.generator.parameters()}
    d_ids = {id(p) for p in d_group["params"]}
    assert d_ids == {id(p) for p in net.discriminator.parameters()}
    assert {id(p) for p in net.backbone.parameters()} <= d_ids and id(net.discriminator.head.weight) in d_ids
    assert len(g_group["params"]) + len(d_group["params"]) == len(list(net.parameters()))
    schedule = LRSchedule("cosine", 2e-4, 10, 5)
    lr = schedule.step(opt, 17)
    assert g_group["lr"] == pytest.approx(2 * lr) and d_group["lr"] == pytest.approx(lr) and lr < 2e-4


def test_discriminator_separates_a_fixed_batch() -> None:
    real = real_batch(3, 8, seed=1)
    net = pretext("gan", 3, seed=1)
    opt = gan.build_optimizer(argparse.Namespace(), net, 2e-4)
    gaps = []
    for _ in range(20):
        loss, stats = net(real)
        opt.zero_grad()
        loss.backward()
        opt.step()
        gaps.append((stats["d_real"] - stats["d_fake"]).item())
    # chance at the start (0.0 on this seed), about 0.68 after 20 steps while G trains too
    assert abs(gaps[0]) < 0.1 and gaps[-1] > 0.4 and np.mean(gaps[-5:]) > np.mean(gaps[:5]) + 0.3, gaps


def test_feature_matching_loss_by_hand() -> None:
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    fake = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # batch means (2, 3) and (0.5, 0.5): ((1.5)^2 + (2.5)^2) / 2 = 4.25
    assert gan.feature_matching_loss(real, fake).item() == pytest.approx(4.25)
    assert gan.feature_matching_loss(real, real).item() == 0.0
    assert gan.feature_matching_loss(real, real.flip(0)).item() == 0.0     # statistics, not pairs


def test_discriminator_features_are_the_last_three_stages_pooled() -> None:
    net = pretext("gan_fm", 3)
    x = real_batch(3, 4)
    logits, feats = net.discriminator(x)
    maps = net.backbone.feature_maps(x)
    assert logits.shape == (4,) and feats.shape == (4, 128 + 256 + 512)
    torch.testing.assert_close(feats, torch.cat([m.mean(dim=(2, 3)) for m in maps[-3:]], dim=1))


@pytest.mark.parametrize("name", list(MODULES))
def test_backbone_loads_into_the_classifier(name: str) -> None:
    net = pretext(name, 13)
    classifier = build_model(NETNUM, 13, 10)
    classifier.backbone.load_state_dict(net.backbone.state_dict(), strict=True)
    x = real_batch(13, 2)
    net.eval()
    classifier.eval()
    torch.testing.assert_close(classifier.backbone(x), net.backbone(x), rtol=0, atol=0)
    assert not any(k.startswith(("head", "generator")) for k in net.backbone.state_dict())


def test_view_is_picklable_and_reproducible() -> None:
    view = gan_fm.make_transform(argparse.Namespace(), make_opt(13))
    clone = pickle.loads(pickle.dumps(view))
    x = raw_images(1, 13)[0]
    torch.manual_seed(3)
    a = view(x)
    torch.manual_seed(3)
    b = clone(x)
    assert a.shape == (13, SIZE, SIZE)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "GANView" in repr(clone)


def test_user_errors_and_flags() -> None:
    parser = argparse.ArgumentParser()
    gan_fm.add_args(parser.add_argument_group())
    args = parser.parse_args([])
    assert (args.gan_z, args.gan_g_lr_scale, args.gan_fm_bce) == (100, 1.0, 0.0)
    net = gan_fm.build(parser.parse_args(["--gan-z", "16", "--gan-fm-bce", "0.5"]), make_opt(3),
                       build_backbone(NETNUM, 3)[0])
    assert net.generator.z_dim == 16 and (net.fm_weight, net.adv_weight) == (1.0, 0.5)
    bad = [
        ({"gan_z": 0}, "--gan-z 0"),
        ({"gan_g_lr_scale": 0.0}, "--gan-g-lr-scale 0.0"),
        ({"optimizer": "sgd"}, "--optimizer sgd does not apply"),
        ({"momentum": 0.5}, "--momentum 0.5 does not apply"),
        ({"gan_fm_bce": -1.0}, "--gan-fm-bce -1.0"),
    ]
    for flags, message in bad:
        with pytest.raises(UserError, match=message.replace(".", r"\.")):
            gan_fm.check_args(argparse.Namespace(**flags))
    gan.check_args(argparse.Namespace(optimizer="Adam", momentum=0.9))
    with pytest.raises(UserError, match="--input_size 32 or more"):
        gan.make_transform(argparse.Namespace(), make_opt(3, size=6))
    assert gan.LOSSES[0] == "GANLoss" and gan_fm.LOSSES[0] == "FeatureMatchingLoss"


@pytest.mark.parametrize("name,bands", [("gan", 3), ("gan_fm", 13)])
def test_vis_rows_real_and_samples_from_fixed_noise(name: str, bands: int) -> None:
    module, net = MODULES[name], pretext(name, bands)
    real = real_batch(bands, 8)
    net.eval()
    with torch.no_grad():
        state = torch.get_rng_state()
        rows = module.vis_rows(net, real)
        assert torch.equal(torch.get_rng_state(), state)          # the training run's random stream is untouched
        torch.manual_seed(123)
        again = module.vis_rows(net, real)
    assert module.VIS_COLUMNS == ("real image", "generated sample")
    assert len(rows) == 8 and all(len(r) == 2 for r in rows)
    assert all(tuple(t.shape) == (bands, SIZE, SIZE) and torch.isfinite(t).all() for r in rows for t in r)
    assert torch.equal(torch.stack([r[0] for r in rows]), real)
    fake = torch.stack([r[1] for r in rows])
    assert torch.equal(fake, torch.stack([r[1] for r in again]))   # the same z at every figure
    assert not torch.equal(fake[0], fake[1])                          # n different samples
