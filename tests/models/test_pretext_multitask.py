"""Mode 920, the multi-task triplet Siamese pretext: the view, the heads, the loss, the flags."""
from __future__ import annotations

import argparse
import math
import pickle
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import default_collate

from config.errors import UserError
from models import build_backbone, build_model
from models.pretext import multitask as mt
from models.pretext.mt_views import MultiTaskView

SIZE = 32


def stats_for(bands: int) -> tuple[list[float], list[float]]:
    return [1000.0 + 10 * b for b in range(bands)], [200.0 + b for b in range(bands)]


def raw_image(bands: int, side: int = 40) -> torch.Tensor:
    mean, std = stats_for(bands)
    return torch.tensor(mean)[:, None, None] + torch.tensor(std)[:, None, None] * torch.randn(bands, side, side)


def view_for(bands: int, **kw) -> MultiTaskView:
    mean, std = stats_for(bands)
    return MultiTaskView(SIZE, mean, std, (2, 1, 0) if bands >= 3 else None, **kw)


def batch(bands: int, n: int, seed: int = 0):
    torch.manual_seed(seed)
    view = view_for(bands)
    return default_collate([view(raw_image(bands)) for _ in range(n)])


def model_for(bands: int, tasks=mt.TASKS, weights=mt.DEFAULT_WEIGHTS, netnum: str = "090000", seed: int = 0):
    torch.manual_seed(seed)
    backbone, _ = build_backbone(netnum, bands)
    return mt.MultiTask(backbone, bands, SIZE, tasks, weights)


@pytest.mark.parametrize("bands", [3, 13])
def test_shapes_for_3_and_13_bands(bands):
    views = batch(bands, 4)
    perturbed, image, copy, label = views
    for x in (perturbed, image, copy):
        assert x.shape == (4, bands, SIZE, SIZE) and x.dtype == torch.float32
    assert label.shape == (4,) and label.dtype == torch.int64 and 0 <= label.min() and label.max() <= 5
    model = model_for(bands)
    maps = model.backbone.feature_maps(image)
    assert model.decoder(maps, (SIZE, SIZE)).shape == (4, bands, SIZE, SIZE)
    assert model.recognizer(maps[-1], maps[-1]).shape == (4, 6)
    loss, stats = model(views)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    assert set(stats) == {"loss_inpaint", "loss_recog", "loss_exemplar", "recog_acc", "emb_std"}
    assert stats["recog_acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert 0 < stats["loss_recog"] < 5 and 0 < stats["loss_exemplar"] < 5 and 0 < stats["loss_inpaint"] < 10


def test_perturbed_differs_only_inside_one_square_block():
    torch.manual_seed(1)
    view = view_for(13)
    lo, hi = math.ceil(0.20 * SIZE), math.floor(0.33 * SIZE)
    assert (lo, hi) == (7, 10)
    sides = set()
    for _ in range(40):
        perturbed, image, _, _ = view(raw_image(13))
        changed = (perturbed != image).any(dim=0)
        rows, cols = changed.any(dim=1).nonzero()[:, 0], changed.any(dim=0).nonzero()[:, 0]
        top, bottom, left, right = rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()
        side = bottom - top + 1
        assert side == right - left + 1, "the changed region is not a square"
        assert lo <= side <= hi
        # inside the block almost every value changed (colour jitter + flip/rotation), outside none
        inside = perturbed[:, top:bottom + 1, left:right + 1] != image[:, top:bottom + 1, left:right + 1]
        assert inside.float().mean() > 0.9
        outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
        outside[top:bottom + 1, left:right + 1] = False
        assert torch.equal(perturbed[:, outside], image[:, outside])
        sides.add(side)
    assert sides == set(range(lo, hi + 1))


def test_perturb_reports_the_block_it_changed():
    torch.manual_seed(2)
    img = torch.randn(4, 64, 64)
    out, (top, left, side) = view_for(4).perturb(img)
    assert 13 <= side <= 21 and 0 <= top <= 64 - side and 0 <= left <= 64 - side
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    assert torch.equal(out[:, ~mask], img[:, ~mask]) and (out[:, mask] != img[:, mask]).float().mean() > 0.9
    # the block's content moved: its values are the original block's, jittered, at other places
    assert not torch.allclose(out[:, mask], img[:, mask])


# independent of the module: what undoes each label's transform
UNDO = {
    0: lambda x: torch.flip(x, dims=(-1,)),
    1: lambda x: torch.flip(x, dims=(-2,)),
    2: lambda x: x,
    3: lambda x: torch.rot90(x, -1, dims=(-2, -1)),
    4: lambda x: torch.rot90(x, 2, dims=(-2, -1)),
    5: lambda x: torch.rot90(x, 1, dims=(-2, -1)),
}


def test_label_names_the_applied_flip_or_rotation():
    torch.manual_seed(3)
    view = view_for(13, copy_crop_p=0.0, color_p=0.0, gray_p=0.0)
    labels = []
    for _ in range(60):
        _, image, copy, label = view(raw_image(13))
        assert torch.equal(UNDO[label](copy), image)
        # and no other label's inverse recovers it (the six are distinguishable)
        assert sum(torch.equal(undo(copy), image) for undo in UNDO.values()) == 1
        labels.append(label)
    counts = torch.bincount(torch.tensor(labels), minlength=6)
    assert (counts > 0).all() and counts.sum() == 60


def test_default_copy_is_cropped_and_recoloured():
    torch.manual_seed(4)
    view = view_for(13)
    for _ in range(10):
        _, image, copy, label = view(raw_image(13))
        assert (UNDO[label](copy) - image).abs().mean() > 0.05


def test_loss_falls_on_a_fixed_batch():
    views = batch(13, 8)
    model = model_for(13)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(15):
        loss, stats = model(views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((loss.item(), stats))
    first, last = history[0], history[-1]
    assert last[0] < 0.6 * first[0]
    assert last[1]["loss_inpaint"] < 0.8 * first[1]["loss_inpaint"]
    assert last[1]["loss_recog"] < 0.2 * first[1]["loss_recog"] and last[1]["recog_acc"] == 1.0
    assert last[1]["loss_exemplar"] < 0.5 * first[1]["loss_exemplar"]


@pytest.mark.parametrize("tasks", [("inpaint",), ("recog",), ("exemplar",), ("recog", "exemplar"), mt.TASKS])
def test_switched_off_tasks_have_no_head_no_loss_and_no_input(tasks):
    views = list(batch(13, 4))
    model = model_for(13, tasks)
    assert (model.decoder is not None) == ("inpaint" in tasks)
    assert (model.recognizer is not None) == ("recog" in tasks)
    assert (model.projector is not None) == ("exemplar" in tasks)
    # the inputs that only switched-off tasks need are never read (the image is the inpainting target)
    if "inpaint" not in tasks:
        views[0] = torch.full_like(views[0], float("nan"))
    if "recog" not in tasks and "exemplar" not in tasks:
        views[2] = torch.full_like(views[2], float("nan"))
    if "recog" not in tasks:
        views[3] = torch.full_like(views[3], 99)         # no such class: cross-entropy would fail
    loss, stats = model(tuple(views))
    assert math.isfinite(loss.item())
    assert {k for k in stats if k.startswith("loss_")} == {f"loss_{t}" for t in tasks}
    assert ("recog_acc" in stats) == ("recog" in tasks)
    loss.backward()
    # DistributedDataParallel needs every parameter to take part
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_loss_is_the_weighted_sum_of_the_logged_task_losses():
    views = batch(13, 4)
    loss, stats = model_for(13, weights=(3.0, 0.5, 2.0))(views)
    stats = {k: v.item() for k, v in stats.items()}          # 0-dim tensors (the loop reads them once per epoch)
    expect = 3.0 * stats["loss_inpaint"] + 0.5 * stats["loss_recog"] + 2.0 * stats["loss_exemplar"]
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    # same weights (same initialisation): same task losses; the total follows the weights
    loss1, stats1 = model_for(13, weights=(1.0, 1.0, 1.0))(views)
    stats1 = {k: v.item() for k, v in stats1.items()}
    for t in mt.TASKS:
        assert stats1[f"loss_{t}"] == pytest.approx(stats[f"loss_{t}"], rel=1e-5)
    assert loss1.item() == pytest.approx(sum(stats[f"loss_{t}"] for t in mt.TASKS), rel=1e-5)
    loss2, stats2 = model_for(13, ("inpaint", "exemplar"), (20.0, 1.0, 1.0))(views)
    stats2 = {k: v.item() for k, v in stats2.items()}
    assert loss2.item() == pytest.approx(20 * stats2["loss_inpaint"] + stats2["loss_exemplar"], rel=1e-5)


def test_inpainting_loss_is_the_perturbation_weighted_mean_absolute_error():
    image = torch.zeros(1, 1, 2, 2)
    perturbed = torch.tensor([[[[2.0, 1.0], [0.0, 0.0]]]])
    recon = torch.tensor([[[[1.0, 0.0], [5.0, 5.0]]]])       # errors outside the block do not count
    assert mt.inpainting_loss(recon, image, perturbed).item() == pytest.approx((2 * 1 + 1 * 0) / 3)
    assert mt.inpainting_loss(image, image, perturbed).item() == 0.0


def args_for(**kw) -> SimpleNamespace:
    base = {"mt_tasks": "inpaint,recog,exemplar", "mt_weights": "20,1,1", "feature_dim": 32, "tau": 0.5}
    return SimpleNamespace(**{**base, **kw})


def test_backbone_checkpoint_loads_into_the_classifier():
    mean, std = stats_for(13)
    opt = SimpleNamespace(n_bands=13, input_size=SIZE, mean=mean, std=std, rgb_index=(3, 2, 1))
    torch.manual_seed(5)
    backbone, _ = build_backbone("090000", 13)
    model = mt.build(args_for(), opt, backbone)
    assert model.backbone is backbone and model.projector.net[-1].out_features == 32
    views = default_collate([mt.make_transform(args_for(), opt)(raw_image(13)) for _ in range(4)])
    loss, _ = model(views)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    classifier = build_model("090000", 13, 10)
    classifier.backbone.load_state_dict(model.backbone.state_dict(), strict=True)
    classifier.eval(), model.eval()
    x = views[1]
    assert torch.equal(classifier.backbone(x), model.backbone(x))
    keys = {k[len("backbone."):] for k in model.state_dict() if k.startswith("backbone.")}
    assert keys == set(backbone.state_dict())


def test_view_pickles_and_replays():
    view = view_for(13)
    clone = pickle.loads(pickle.dumps(view))
    x = raw_image(13)
    torch.manual_seed(6)
    a = view(x)
    torch.manual_seed(6)
    b = clone(x)
    assert a[3] == b[3] and all(torch.equal(u, v) for u, v in zip(a[:3], b[:3]))


def test_flags_parse_and_bad_values_are_user_errors():
    parser = argparse.ArgumentParser()
    mt.add_args(parser.add_argument_group("mt"))
    args = parser.parse_args([])
    assert mt.parse_tasks(args.mt_tasks) == mt.TASKS and mt.parse_weights(args.mt_weights) == (20.0, 1.0, 1.0)
    args = parser.parse_args(["--mt-tasks", "exemplar,recog", "--mt-weights", "0,1,2.5"])
    mt.check_args(args)
    tasks = mt.parse_tasks(args.mt_tasks)
    assert tasks == ("recog", "exemplar") and mt.parse_weights(args.mt_weights, tasks) == (0, 1, 2.5)
    for tasks, weights, word in [("inpaint,jigsaw", "20,1,1", "jigsaw"), ("", "20,1,1", "--mt-tasks"),
                                 ("inpaint", "20,1", "20,1"), ("inpaint", "a,b,c", "a,b,c"),
                                 ("inpaint", "20,-1,1", "20,-1,1"), ("inpaint", "nan,1,1", "nan"),
                                 ("recog", "20,0,1", "recog weight 0")]:
        with pytest.raises(UserError, match=word):
            mt.check_args(args_for(mt_tasks=tasks, mt_weights=weights))
    # DDP needs every parameter used: VGG's torchvision classifier (family 9) only trains through exemplar
    mt.check_args(args_for(mt_tasks="inpaint,recog", netnum="950000", mp_distributed=False))
    mt.check_args(args_for(mt_tasks="inpaint,recog", netnum="050000", mp_distributed=True))
    with pytest.raises(UserError, match="add exemplar to --mt-tasks or use --netnum 050000"):
        mt.check_args(args_for(mt_tasks="inpaint,recog", netnum="950000", mp_distributed=True))


def test_vgg16_bn_backbone():
    views = batch(13, 4)
    model = model_for(13, netnum="050000")
    assert [m.shape[-1] for m in model.backbone.feature_maps(views[1])] == [16, 8, 4, 2, 1]
    loss, stats = model(views)
    loss.backward()
    assert math.isfinite(loss.item()) and set(stats) >= {"loss_inpaint", "loss_recog", "loss_exemplar"}
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_too_small_input_for_the_backbone_is_a_user_error():
    backbone, _ = build_backbone("050000", 3)
    with pytest.raises(UserError, match="16x16"):
        mt.MultiTask(backbone, 3, 16)


@pytest.mark.parametrize("tasks", [mt.TASKS, ("recog", "exemplar")])
def test_vis_rows(tasks):
    """--vis: image, copy, then (with inpaint) perturbed and reconstruction; titles a prefix of VIS_COLUMNS."""
    views = batch(13, 3)
    model = model_for(13, tasks=tasks, weights=(20, 1, 1))
    model.eval()
    with torch.no_grad():
        rows = mt.vis_rows(model, views)
        recon = model.decoder(model.backbone.feature_maps(views[0]), (SIZE, SIZE)) if "inpaint" in tasks else None
    width = 4 if "inpaint" in tasks else 2
    assert len(rows) == 3 and all(len(r) == width for r in rows) and len(mt.VIS_COLUMNS) == 4
    assert all(tuple(t.shape) == (13, SIZE, SIZE) and torch.isfinite(t).all() for r in rows for t in r)
    perturbed, image, copy, _ = views
    assert torch.equal(torch.stack([r[0] for r in rows]), image)
    assert torch.equal(torch.stack([r[1] for r in rows]), copy)
    if recon is not None:
        assert torch.equal(torch.stack([r[2] for r in rows]), perturbed)
        torch.testing.assert_close(torch.stack([r[3] for r in rows]), recon, rtol=0, atol=0)
