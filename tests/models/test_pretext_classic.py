"""Classic pretexts: inpainting (96), jigsaw 2x2 / 3x3 (972 / 973) and colorization (98).

Small and fast: 32x32 inputs, batches of 4-8, ResNet-18 ('090000'), one CPU thread.
"""
from __future__ import annotations

import argparse
import itertools
import math
import pickle
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from config.errors import UserError
from datasets.plans import plain
from models import build_backbone, build_model
from models.pretext import colorize, inpaint, jigsaw4, jigsaw9
from models.pretext import jigsaw_common as jc
from models.pretext.decoder import ReconstructionDecoder, last_stage_shape
from tests.models.pretext_data import SIZE, make_opt, raw_images

MODULES = {"inpaint": inpaint, "jigsaw4": jigsaw4, "jigsaw9": jigsaw9, "colorize": colorize}
NAMES = list(MODULES)
NETNUM = "090000"


def batch_of(name: str, bands: int, n: int, seed: int = 0):
    torch.manual_seed(seed)
    tf = MODULES[name].make_transform(argparse.Namespace(), make_opt(bands))
    return default_collate([tf(x) for x in raw_images(n, bands, seed=seed)])


def pretext(name: str, bands: int, netnum: str = NETNUM, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    backbone, _ = build_backbone(netnum, bands)
    return MODULES[name].build(argparse.Namespace(), make_opt(bands), backbone)


# (view shapes for C bands) per pretext, as the engine receives them (batch dim first)
VIEW_SHAPES = {
    "inpaint": lambda c: [(c, SIZE, SIZE), (c, SIZE, SIZE)],
    "colorize": lambda c: [(1, SIZE, SIZE), (c, SIZE, SIZE)],
    "jigsaw4": lambda c: [(4, c, 16, 16), ()],
    "jigsaw9": lambda c: [(9, c, 16, 16), ()],
}


@pytest.mark.parametrize("bands", [3, 13])
@pytest.mark.parametrize("name", NAMES)
def test_views_and_forward_shapes(name: str, bands: int) -> None:
    views = batch_of(name, bands, 4)
    assert [tuple(v.shape) for v in views] == [(4, *s) for s in VIEW_SHAPES[name](bands)]
    assert all(v.dtype == torch.float32 for v in views if v.dim() > 1)
    net = pretext(name, bands)
    loss, stats = net(views)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    assert "emb_std" in stats and all(isinstance(v, float) or (torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad)
                                      for v in stats.values())
    assert 0 < stats["emb_std"] < 1
    assert net.backbone is not None and len(views[0]) == 4      # what the engine counts as images
    if name.startswith("jigsaw"):
        assert views[1].dtype == torch.long and ((0 <= views[1]) & (views[1] < net.n_perms)).all()
        assert 0 <= stats["acc"] <= 1 and net.n_perms == {"jigsaw4": 24, "jigsaw9": 1000}[name]
        # untrained: cross-entropy near log(number of permutations)
        assert abs(loss.item() - math.log(net.n_perms)) < 1.0


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_a_fixed_batch(name: str) -> None:
    views = batch_of(name, 13, 8, seed=1)
    net = pretext(name, 13, seed=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss, _ = net(views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_masked_mse_weights_hole_and_context() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 13, SIZE, SIZE, generator=g)
    mask = inpaint.centre_mask(SIZE, 0.5)
    err = torch.randn(2, 13, SIZE, SIZE, generator=g)
    wrong_context = target + err * (~mask)            # perfect in the hole
    wrong_hole = target + err * mask                  # perfect in the context
    e2 = (err ** 2).numpy()
    m = mask.numpy()
    context_mse = e2[:, :, ~m].mean()                 # independent: numpy over the 768 context pixels x bands
    hole_mse = e2[:, :, m].mean()

    loss, hole, context = inpaint.masked_mse(wrong_context, target, mask)
    assert hole.item() == 0.0
    assert loss.item() == pytest.approx(0.01 * context_mse, rel=1e-5)
    loss, hole, context = inpaint.masked_mse(wrong_hole, target, mask)
    assert context.item() == 0.0
    assert loss.item() == pytest.approx(0.99 * hole_mse, rel=1e-5)
    loss, _, _ = inpaint.masked_mse(target + err, target, mask, context_weight=0.25)
    assert loss.item() == pytest.approx(0.75 * hole_mse + 0.25 * context_mse, rel=1e-5)


def test_inpaint_view_masks_the_centre_square() -> None:
    assert inpaint.centre_box(32, 0.5) == (8, 24)
    assert inpaint.centre_box(64, 0.25) == (24, 40)
    assert int(inpaint.centre_mask(32, 0.5).sum()) == 16 * 16
    torch.manual_seed(0)
    masked, target = inpaint.make_transform(argparse.Namespace(), make_opt(13))(raw_images(1, 13)[0])
    hole = inpaint.centre_mask(SIZE, 0.5)
    assert torch.equal(masked[:, hole], torch.zeros(13, 256))
    assert torch.equal(masked[:, ~hole], target[:, ~hole])
    assert target[:, hole].abs().sum() > 0


@pytest.mark.parametrize("side,out,n_up", [(1, 32, 5), (2, 64, 5), (7, 224, 5), (4, 100, 5), (8, 64, 3), (64, 64, 0)])
def test_decoder_reaches_the_input_size(side: int, out: int, n_up: int) -> None:
    dec = ReconstructionDecoder(512, 13, side, out)
    assert dec.n_up == n_up
    with torch.no_grad():
        y = dec.eval()(torch.randn(1, 512, side, side))
    assert y.shape == (1, 13, out, out)


def test_decoder_probe_and_too_small_inputs() -> None:
    backbone, _ = build_backbone(NETNUM, 13)
    assert last_stage_shape(backbone, 13, 32) == (512, 1)
    assert last_stage_shape(backbone, 13, 64) == (512, 2)
    assert backbone.training                                  # the probe restores train mode
    small, _ = build_backbone("000000", 13)                    # small stem: stride 8
    assert last_stage_shape(small, 13, 32) == (512, 4)
    vgg, _ = build_backbone("050000", 3)
    with pytest.raises(UserError, match="16x16"):
        jigsaw4.build(argparse.Namespace(jigsaw_tile=16), make_opt(3), vgg)


@pytest.mark.parametrize("module,grid", [(jigsaw4, 2), (jigsaw9, 3)])
def test_jigsaw_label_is_the_permutation_applied(module, grid: int) -> None:
    opt = make_opt(13)
    cell = SIZE // grid
    perms = jc.permutation_set(grid * grid, module.N_PERMS)
    view = jc.JigsawView(plain(SIZE, opt.mean, opt.std), jc.TileGeometry(grid, cell, 0, cell), perms)
    x = raw_images(1, 13)[0]
    img = plain(SIZE, opt.mean, opt.std)(x)
    cells = [img[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] for r in range(grid) for c in range(grid)]
    torch.manual_seed(0)
    labels = set()
    for _ in range(20):
        tiles, label = view(x)
        labels.add(int(label))
        for pos, k in enumerate(perms[int(label)]):
            assert torch.equal(tiles[pos], cells[k]), (int(label), pos, k)
    assert len(labels) >= 10                                  # labels are drawn, not fixed

    # with jitter, each shuffled tile is a crop of the cell its permutation names, offset 0..jitter
    jitter = 2
    geo = jc.TileGeometry(grid, cell, jitter, cell - jitter)
    view = jc.JigsawView(plain(SIZE, opt.mean, opt.std), geo, perms)
    torch.manual_seed(1)
    offsets = set()
    for _ in range(5):
        tiles, label = view(x)
        for pos, k in enumerate(perms[int(label)]):
            r, c = divmod(int(k), grid)
            found = [(dy, dx) for dy in range(jitter + 1) for dx in range(jitter + 1)
                     if torch.equal(tiles[pos], img[:, r * cell + dy:r * cell + dy + geo.crop,
                                                    c * cell + dx:c * cell + dx + geo.crop])]
            assert found, (pos, k)
            offsets.update(found)
    assert len(offsets) > 1


def test_permutation_set_2x2_is_all_24() -> None:
    perms = jc.permutation_set(4, 24)
    assert perms.shape == (24, 4) and perms.dtype == np.int64
    assert [tuple(p) for p in perms] == sorted(itertools.permutations(range(4)))
    assert jc.min_hamming(perms) == 2
    assert not perms.flags.writeable


def test_min_hamming_by_hand() -> None:
    assert jc.min_hamming(np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])) == 2     # distances 2, 3, 2
    assert jc.min_hamming(np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])) == 3     # the cyclic shifts
    assert jc.hamming_matrix(np.array([[0, 1, 2, 3], [3, 2, 1, 0]])).tolist() == [[0, 4], [4, 0]]


def test_permutation_set_3x3_greedy_max_min(tmp_path) -> None:
    t0 = time.perf_counter()
    perms = jc._greedy_max_min(9, 1000, seed=0)
    seconds = time.perf_counter() - t0
    assert seconds < 20, f"greedy selection took {seconds:.1f}s"
    assert perms.shape == (1000, 9)
    assert (np.sort(perms, axis=1) == np.arange(9)).all()              # every row a permutation
    assert len(np.unique(perms, axis=0)) == 1000                        # all distinct
    d = jc.hamming_matrix(perms)[np.triu_indices(1000, 1)]
    # greedy max-min reaches distance >= 6 for its first ~350 picks only; the full 1000 have 5
    assert jc.min_hamming(perms) == 5 == d.min()
    assert 7.95 < d.mean() < 8.05
    assert np.array_equal(jc._greedy_max_min(9, 1000, seed=0), perms)   # deterministic
    assert not np.array_equal(jc._greedy_max_min(9, 1000, seed=1), perms)

    cached = jc.permutation_set(9, 1000, 0, cache_dir=tmp_path)
    path = tmp_path / "jigsaw" / "perms_9tiles_1000_seed0.npy"
    assert np.array_equal(cached, perms) and np.array_equal(np.load(path), perms)
    path.write_bytes(b"not an array")                                    # a damaged cache is rebuilt
    jc._permutation_set.cache_clear()
    assert np.array_equal(jc.permutation_set(9, 1000, 0, cache_dir=tmp_path), perms)
    assert np.array_equal(np.load(path), perms)


@pytest.mark.parametrize("name", NAMES)
def test_transforms_pickle(name: str) -> None:
    tf = MODULES[name].make_transform(argparse.Namespace(), make_opt(13))
    clone = pickle.loads(pickle.dumps(tf))
    x = raw_images(1, 13)[0]
    torch.manual_seed(3)
    a = tf(x)
    torch.manual_seed(3)
    b = clone(x)
    assert len(a) == len(b) == 2 and all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_backbone_loads_into_the_classifier(name: str) -> None:
    net = pretext(name, 13)
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss, _ = net(batch_of(name, 13, 4))
    loss.backward()
    optimizer.step()
    state = net.backbone.state_dict()
    assert not torch.equal(state["stages.0.0.conv1.weight"], before["stages.0.0.conv1.weight"])
    classifier = build_model(NETNUM, 13, 10)
    classifier.backbone.load_state_dict(state, strict=True)
    for key, value in classifier.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_colorize_input_band() -> None:
    opt = make_opt(13)
    x = raw_images(1, 13)[0]
    torch.manual_seed(0)
    gray, target = colorize.make_transform(argparse.Namespace(), opt)(x)
    torch.testing.assert_close(gray[0], target[[3, 2, 1]].mean(0))             # mean of R, G, B
    torch.manual_seed(0)
    gray, target = colorize.make_transform(argparse.Namespace(color_band="B08"), opt)(x)
    assert torch.equal(gray[0], target[7])
    assert colorize.source_bands(opt, "5") == (5,)
    no_rgb = SimpleNamespace(**{**vars(opt), "rgb_index": None})
    assert colorize.source_bands(no_rgb, None) == (0,)
    with pytest.raises(UserError, match="B99"):
        colorize.source_bands(opt, "B99")
    with pytest.raises(UserError, match="13"):
        colorize.source_bands(opt, "13")
    with pytest.raises(UserError, match="1 band"):
        colorize.make_transform(argparse.Namespace(), make_opt(1))

    # the backbone sees the one band on every input channel
    net = pretext("colorize", 13)
    seen = []
    hook = net.backbone.stem[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    gray, target = batch_of("colorize", 13, 4)
    net((gray, target))
    hook.remove()
    assert seen[0].shape == (4, 13, SIZE, SIZE)
    assert torch.equal(seen[0], gray.expand(-1, 13, -1, -1))


def test_user_errors_and_flags() -> None:
    with pytest.raises(UserError, match="--inpaint-mask 1.2"):
        inpaint.check_args(argparse.Namespace(inpaint_mask=1.2, inpaint_context_weight=0.01))
    with pytest.raises(UserError, match="--inpaint-context-weight"):
        inpaint.check_args(argparse.Namespace(inpaint_mask=0.5, inpaint_context_weight=1.0))
    with pytest.raises(UserError, match="has 24 permutations"):
        jigsaw4.check_args(argparse.Namespace(jigsaw_perms=30))
    jigsaw9.check_args(argparse.Namespace(jigsaw_perms=30))
    with pytest.raises(UserError, match="--jigsaw-jitter 10"):
        jigsaw9.make_transform(argparse.Namespace(jigsaw_jitter=10), make_opt(3))

    # 972 and 973 share their flags: both modules register them on one parser without a clash
    parser = argparse.ArgumentParser()
    for module in (inpaint, jigsaw4, jigsaw9, colorize):
        module.add_args(parser.add_argument_group(module.__name__))
    args = parser.parse_args(["--jigsaw-perms", "100", "--jigsaw-tile", "24", "--color-band", "B04"])
    assert (args.jigsaw_perms, args.jigsaw_tile, args.jigsaw_jitter, args.color_band) == (100, 24, None, "B04")
    assert (args.inpaint_mask, args.inpaint_context_weight) == (0.5, 0.01)
    geo = jc.geometry(args, 64, 3)
    assert (geo.cell, geo.jitter, geo.crop, geo.tile) == (21, 2, 19, 24)
    assert jigsaw9.make_transform(args, make_opt(3, 64)).perms.shape == (100, 9)


@pytest.mark.parametrize("name,bands", [("inpaint", 3), ("colorize", 13), ("jigsaw4", 13), ("jigsaw9", 3)])
def test_vis_rows(name: str, bands: int, monkeypatch) -> None:
    """--vis: one row per sample, one tensor per VIS_COLUMNS title, of the right shapes and finite."""
    module, net = MODULES[name], pretext(name, bands)
    if name.startswith("jigsaw"):                 # no jitter, tile = cell: the true order is the image itself
        grid, opt = module.GRID, make_opt(bands)
        cell = SIZE // grid
        view = jc.JigsawView(plain(SIZE, opt.mean, opt.std), jc.TileGeometry(grid, cell, 0, cell), net.perms.numpy())
        images = raw_images(5, bands)
        torch.manual_seed(0)
        views = default_collate([view(x) for x in images])
    else:
        views = batch_of(name, bands, 5)
    net.eval()
    with torch.no_grad():
        rows = module.vis_rows(net, views)
    assert len(rows) == 5 and all(len(r) == len(module.VIS_COLUMNS) for r in rows)
    assert all(torch.isfinite(t).all() for r in rows for t in r)
    if name == "inpaint":
        assert [tuple(t.shape) for t in rows[0]] == [(bands, SIZE, SIZE)] * 3
        masked, target = views
        assert torch.equal(torch.stack([r[0] for r in rows]), target)
        assert torch.equal(torch.stack([r[1] for r in rows]), masked)
        with torch.no_grad():   # the decoder's output on the masked input: what forward's loss scores
            recon = net.decoder(net.backbone.feature_maps(masked)[-1], (SIZE, SIZE))
            _, stats = net(views)
        shown = torch.stack([r[2] for r in rows])
        torch.testing.assert_close(shown, recon, rtol=0, atol=0)
        hole = inpaint.masked_mse(shown, target, inpaint.centre_mask(SIZE, inpaint.DEFAULT_MASK))[1]
        assert hole.item() == pytest.approx(stats["mse_hole"].item(), rel=1e-5)
    elif name == "colorize":
        assert [tuple(t.shape) for t in rows[0]] == [(1, SIZE, SIZE), (bands, SIZE, SIZE), (bands, SIZE, SIZE)]
        assert torch.equal(torch.stack([r[0] for r in rows]), views[0])
        with torch.no_grad():   # the prediction shown is the one forward's MSE scores
            loss, _ = net(views)
        assert F.mse_loss(torch.stack([r[2] for r in rows]), views[1]).item() == pytest.approx(loss.item(), rel=1e-5)
    else:
        side = grid * cell
        image = torch.stack([plain(SIZE, opt.mean, opt.std)(x)[:, :side, :side] for x in images])
        assert [tuple(t.shape) for t in rows[0]] == [(bands, side, side)] * 3
        assert torch.equal(torch.stack([r[1] for r in rows]), image)          # put back by the true label
        assert not torch.equal(torch.stack([r[0] for r in rows]), image)      # shuffled
        # a model that predicts the true permutation shows the reassembled image in the last column
        labels = views[1]
        monkeypatch.setattr(net, "classify", lambda tiles: (F.one_hot(labels, net.n_perms).float(), None))
        with torch.no_grad():
            rows = module.vis_rows(net, views)
        assert torch.equal(torch.stack([r[2] for r in rows]), image)
        assert module.VIS_COLUMNS == jc.VIS_COLUMNS and module.vis_rows is jc.vis_rows
        assert "perms" not in net.state_dict()                                 # checkpoints are unchanged


def test_colorize_hands_over_its_1band_stem_placed_on_the_source_bands() -> None:
    """Pretraining trains a 1-band stem; the saved 13-band backbone computes exactly that network."""
    net = pretext("colorize", 13, netnum="000000")
    stem = net.backbone.stem[0]
    assert net.stem_weight.shape[1] == 1 and not stem.weight.requires_grad
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "stem_weight" in trainable and "backbone.stem.0.weight" not in trainable
    gray, target = batch_of("colorize", 13, 4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net((gray, target))[0].backward()
    assert net.stem_weight.grad.abs().sum() > 0
    before = net.stem_weight.detach().clone()
    optimizer.step()
    net.on_step_end(0.5)
    assert not torch.equal(net.stem_weight, before)

    # the hand-over: a fresh 13-band classifier loads the saved backbone
    classifier = build_model("000000", 13, 6)
    classifier.backbone.load_state_dict(net.backbone.state_dict(), strict=True)
    w = classifier.backbone.stem[0].weight
    rgb = [3, 2, 1]                                            # make_opt(13): the source bands
    for band in range(13):
        expected = net.stem_weight.detach() / 3 if band in rgb else torch.zeros_like(net.stem_weight)
        torch.testing.assert_close(w[:, band:band + 1], expected, rtol=0, atol=0)

    # the 1-band network, built independently: a 1-band backbone with the stem weight
    one_band, _ = build_backbone("000000", 1)
    state = {k: v for k, v in net.backbone.state_dict().items()}
    state["stem.0.weight"] = net.stem_weight.detach()
    one_band.load_state_dict(state, strict=True)
    classifier.eval(), one_band.eval()
    with torch.no_grad():
        g = gray[:2]
        torch.testing.assert_close(classifier.backbone(g.expand(-1, 13, -1, -1)), one_band(g), rtol=1e-4, atol=1e-5)
        # on real 13-band images: the 1-band network on the mean of the source bands, what it was trained on
        x = target[:2]
        torch.testing.assert_close(classifier.backbone(x), one_band(x[:, rgb].mean(1, keepdim=True)),
                                   rtol=1e-4, atol=1e-5)
        # and not the network fed the mean of all bands (the 1/bands replication would compute that)
        assert not torch.allclose(classifier.backbone(x), one_band(x.mean(1, keepdim=True)), atol=1e-3)
