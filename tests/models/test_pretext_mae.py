"""Modes 930 (MAE) and 931 (grouped-channel MAE): masking, loss against the paper's code, reproducible
masks, per-group heads, the figure, and checkpoints that main_cls.py --mode 41 fine-tunes and probes."""
from __future__ import annotations

import argparse
import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import main_cls
import main_cls_ss_train
from config.dataset_cfg import opt_euroms
from config.errors import UserError
from engine import monitors, pretrain_flags
from engine.runtime import Runtime, reseed
from losses.mae import MAELoss, normalise_patches, patchify, unpatchify
from models import build_backbone
from models.pretext import mae, mae_grouped

EUROSAT = opt_euroms.BAND_NAMES


def opt_for(bands=EUROSAT, size: int = 32) -> SimpleNamespace:
    n = len(bands)
    return SimpleNamespace(input_size=size, n_bands=n, mean=np.linspace(300.0, 2000.0, n),
                           std=np.linspace(50.0, 400.0, n), rgb_index=(3, 2, 1) if n > 3 else (0, 1, 2),
                           bands=tuple(bands), name="t")


def mae_args(module=None, **over) -> argparse.Namespace:
    """The flags of mode 930/931 resolved by the paper recipe (as the plan does), with a tiny decoder."""
    from engine import recipes
    from engine.cli import base_parser
    module = module or mae
    code = "931" if module is not mae else "930"
    args = pretrain_flags.add_args(base_parser("", "pretrain")).parse_args(["--mode", code, "--netnum", "120000"])
    recipes.resolve(args, module)
    args.decoder_depth, args.decoder_dim = 1, 64
    for k, v in over.items():
        setattr(args, k, v)
    return args


def built(module, netnum: str = "120000", bands=EUROSAT, size: int = 32, **over):
    torch.manual_seed(0)
    backbone, _ = build_backbone(netnum, len(bands), input_size=size)
    return module.build(mae_args(module, **over), opt_for(bands, size), backbone)


# ----------------------------------------------------------------------------- the paper's code, transcribed
def paper_random_masking(x, mask_ratio):
    """models_mae.py random_masking (facebookresearch/mae @ 6a2ba402), verbatim."""
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    noise = torch.rand(N, L, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def paper_patchify(imgs, p, c):
    """models_mae.py patchify, with ``in_chans`` for 3 (as SSL4EO-S12's copy)."""
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], c, h, p, w, p))
    x = torch.einsum('nchpwq->nhwpqc', x)
    return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * c))


def paper_forward_loss(imgs, pred, mask, p, norm_pix_loss, per_band):
    """models_mae.py forward_loss; ``per_band`` normalises each band's p*p pixels instead of the whole patch."""
    target = paper_patchify(imgs, p, imgs.shape[1])
    if norm_pix_loss:
        if per_band:
            t = target.reshape(*target.shape[:2], p * p, imgs.shape[1])
            mean = t.mean(dim=2, keepdim=True)
            var = t.var(dim=2, keepdim=True)
            target = ((t - mean) / (var + 1.e-6) ** .5).reshape(target.shape)
        else:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.e-6) ** .5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def test_masking_is_the_papers() -> None:
    x = torch.randn(3, 16, 5)
    torch.manual_seed(7)
    ours = mae.random_masking(x, 0.75)
    torch.manual_seed(7)
    theirs = paper_random_masking(x, 0.75)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert ours[0].shape == (3, 4, 5) and ours[1].sum(1).tolist() == [12.0, 12.0, 12.0]


def test_patchify_round_trip_and_a_hand_computed_loss() -> None:
    imgs = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    assert torch.equal(patchify(imgs, 8), paper_patchify(imgs, 8, 3))
    assert torch.equal(unpatchify(patchify(imgs, 8), 8, 3), imgs)
    one = torch.rand(1, 1, 16, 16)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0]])                      # only the top-left patch is masked
    pred = torch.zeros(1, 4, 64)
    loss = MAELoss(8, norm_pix=False)(one, pred, mask)
    torch.testing.assert_close(loss, one[0, 0, :8, :8].pow(2).mean())  # visible patches do not count
    pred2 = pred.clone()
    pred2[:, 1:] = 99.0
    assert torch.equal(MAELoss(8, norm_pix=False)(one, pred2, mask), loss)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_equals_the_papers_pseudo_code(norm_pix: bool) -> None:
    """Fixed batch, fixed seed: our forward's loss = MAE's masking + patchify + (per-band) normalised
    target + masked-only mean, transcribed; for one band the per-band target IS the paper's."""
    model = built(mae, norm_pix_loss=norm_pix)
    imgs = torch.randn(4, 13, 32, 32) * 3 + 1
    torch.manual_seed(3)
    loss, _ = model(imgs)
    torch.manual_seed(3)
    pred, mask = model.predict(imgs)
    torch.manual_seed(3)                                             # the mask comes from the paper's masking
    _, paper_mask, _ = paper_random_masking(model.backbone.patch_tokens(imgs), 0.75)
    assert torch.equal(mask, paper_mask) and mask.sum().item() == 4 * 12
    ref = paper_forward_loss(imgs, pred, mask, 8, norm_pix, per_band=True)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    one = imgs[:, :1]
    torch.testing.assert_close(normalise_patches(patchify(one, 8), 1), (lambda t: (t - t.mean(-1, keepdim=True))
                               / (t.var(-1, keepdim=True) + 1e-6) ** .5)(patchify(one, 8)))
    if norm_pix:                                                       # per band differs from all-band for 13 bands
        assert not torch.allclose(ref, paper_forward_loss(imgs, pred, mask, 8, True, per_band=False))


def test_masks_are_reproducible_per_seed_and_per_rank() -> None:
    model = built(mae)
    imgs = torch.randn(2, 13, 32, 32)

    def mask_at(seed: int, epoch: int, rank: int) -> torch.Tensor:
        reseed(seed, epoch, rank)                                    # what the epoch loop does
        return model.predict(imgs)[1]

    a = mask_at(0, 1, 0)
    assert torch.equal(a, mask_at(0, 1, 0))
    assert not torch.equal(a, mask_at(0, 1, 1))                      # another rank masks other patches
    assert not torch.equal(a, mask_at(1, 1, 0))                      # another seed too
    assert not torch.equal(a, mask_at(0, 2, 0))


def test_encoder_position_embedding_is_fixed_sincos_and_the_decoder_is_light() -> None:
    model = built(mae)
    from models.vit import sincos_2d
    assert not model.backbone.pos_embed.requires_grad
    torch.testing.assert_close(model.backbone.pos_embed.data, sincos_2d(192, 4))
    assert len(model.decoder.blocks) == 1 and model.decoder.embed.out_features == 64
    assert model.decoder.blocks[0].attn.num_heads == 2                 # 32-d heads
    assert model.pred.out_features == 8 * 8 * 13
    loss, stats = model(torch.randn(2, 13, 32, 32))
    loss.backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0 and model.decoder.mask_token.grad is not None
    assert set(stats) == {"emb_std"} and not stats["emb_std"].requires_grad


def test_flags_are_checked() -> None:
    for over, msg in (({"mask_ratio": 1.0}, "--mask-ratio 1.0 must be strictly between 0 and 1"),
                      ({"decoder_dim": 48}, "--decoder-dim 48 must be a positive multiple of 32"),
                      ({"decoder_depth": 0}, "--decoder-depth 0 must be >= 1")):
        with pytest.raises(UserError, match=msg):
            mae.check_args(mae_args(**over))
    with pytest.raises(UserError, match="keeps 0 of the 4 tokens"):
        built(mae, netnum="110000", mask_ratio=0.8)                  # 32 px, patch 16: 4 patches


def test_grouped_loss_scores_each_head_on_its_own_bands() -> None:
    """Independent transcription: group g's prediction vs the per-band normalised patches of g's bands
    (picked by NAME from EuroSAT's order), on g's masked tokens, over all masked (group, patch) tokens."""
    model = built(mae_grouped)
    assert model.backbone.group_names == [("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A"), ("B11", "B12")]
    imgs = torch.randn(2, 13, 32, 32)
    torch.manual_seed(5)
    loss, _ = model(imgs)
    torch.manual_seed(5)
    preds, mask, _ = model.predict(imgs)
    total, count = 0.0, 0.0
    for g, names in enumerate(model.backbone.group_names):
        bands = imgs[:, [EUROSAT.index(b) for b in names]]
        assert preds[g].shape == (2, 16, 64 * len(names))
        target = paper_patchify(bands, 8, len(names))
        t = target.reshape(2, 16, 64, len(names))
        target = ((t - t.mean(2, keepdim=True)) / (t.var(2, keepdim=True) + 1e-6) ** .5).reshape(target.shape)
        total = total + (((preds[g] - target) ** 2).mean(-1) * mask[:, g]).sum()
        count = count + mask[:, g].sum()
    torch.testing.assert_close(loss, total / count)
    assert mask.shape == (2, 3, 16) and mask.sum().item() == 2 * 36                # 75 % of 48 tokens
    assert not all(torch.equal(mask[:, 0], mask[:, g]) for g in (1, 2))           # independent across groups


def test_consistent_masking_hides_the_same_locations_in_every_group() -> None:
    model = built(mae_grouped, consistent_mask=True)
    torch.manual_seed(1)
    preds, mask, latent = model.predict(torch.randn(3, 13, 32, 32))
    assert torch.equal(mask[:, 0], mask[:, 1]) and torch.equal(mask[:, 0], mask[:, 2])
    assert mask[:, 0].sum(1).tolist() == [12.0] * 3 and latent.shape == (3, 1 + 3 * 4, 192)
    model(torch.randn(3, 13, 32, 32))[0].backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in model.pred)


def test_grouped_mae_refuses_what_makes_no_groups() -> None:
    with pytest.raises(UserError, match=r"form 1 group\(s\), and a single group is plain MAE: use --mode 930"):
        mae_grouped.make_transform(mae_args(), opt_for(("B04", "B03", "B02")))
    with pytest.raises(UserError, match="form 1 group"):
        mae_grouped.make_transform(mae_args(band_groups="B02,B03,B04"), opt_for())
    custom = built(mae_grouped, band_groups="B04,B03,B02;B08;B11,B12,B8A")
    assert custom.backbone.groups == [(3, 2, 1), (7,), (10, 11, 12)]
    with pytest.raises(UserError, match="drop --ptcp"):
        mae_grouped.check_args(mae_args(ptcp=1))


def test_vis_rows_and_the_png_grid(tmp_path) -> None:
    from engine.vis import band_triplet
    model = built(mae)
    imgs = torch.randn(3, 13, 32, 32)
    rows = mae.vis_rows(model, imgs)
    assert len(rows) == 3 and all(len(r) == 4 and r[0].shape == (13, 32, 32) for r in rows)
    assert torch.equal(rows[0][0], imgs[0])
    again = mae.vis_rows(model, imgs)                                  # a fixed mask: figures compare across epochs
    assert torch.equal(rows[1][1], again[1][1])
    visible = rows[0][1]
    assert (visible == 0).float().mean().item() == pytest.approx(0.75)  # 12 of 16 patches blanked
    opt = opt_for()
    assert band_triplet("B08,B04,B03", opt) == (7, 3, 2) and band_triplet("b8a,B11,B12", opt) == (12, 10, 11)
    with pytest.raises(UserError, match="must name three of this dataset's bands"):
        band_triplet("B08,B04", opt)
    dataset = [(torch.randn(13, 32, 32), 0, i) for i in range(8)]
    path = tmp_path / "vis.png"
    monitors.save_vis(mae, model, dataset, opt, path, 0, Runtime(torch.device("cpu")), bands=(7, 3, 2))
    import matplotlib.image
    png = matplotlib.image.imread(path)
    assert png.shape[:2] == (8 * 160, 4 * 160)                        # 8 rows x 4 columns of 1.6 in at 100 dpi


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mode", [930, 931])
def test_checkpoint_fine_tunes_and_probes_with_main_cls(demo_root, tmp_path, mode: int) -> None:
    """Pretraining saves the encoder; main_cls.py --mode 41 probes it (and fine-tunes it with layer decay)."""
    ck, res = tmp_path / "ck", tmp_path / "r.csv"
    main_cls_ss_train.main(["--mode", str(mode), "--ds", "demo", "--data-root", str(demo_root), "--netnum", "110000",
                            "--input_size", "32", "--bs", "16", "--mepoch", "1", "--workers", "0", "--ckpt", str(ck),
                            "--expnum", "E", "--knn-freq", "0", "--no-progress", "--decoder-depth", "1",
                            "--decoder-dim", "32", "--mask-ratio", "0.5", "--optimizer", "adamw"])
    saved = torch.load(ck / "110000_E_1.pth", weights_only=True)
    meta = saved["meta"]
    assert meta["vit_feature"] == ("cls" if mode == 930 else "avg") and meta["pretext"] in ("mae", "mae_grouped")
    if mode == 931:
        assert meta["band_groups"] == [["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A"], ["B11", "B12"]]
        assert "patch_embed.2.proj.weight" in saved["backbone"]
    common = ["--ds", "demo", "--data-root", str(demo_root), "--netnum", "110000", "--input_size", "32", "--workers",
              "0", "--ckpt", str(ck), "--results", str(res), "--no-progress", "--mode", "41", "--expnum", "E",
              "--cepoch", "1", "--ts", "5"]
    main_cls.main(common + ["--probe", "logreg"])
    main_cls.main(common + ["--hos", "0", "--mepoch", "1", "--bs", "16", "--optimizer", "adamw", "--lr", "1e-3"])
    probe_row, ft_row = rows(res)
    for r in (probe_row, ft_row):
        assert r["pretext"] == ("mae" if mode == 930 else "mae_grouped") and 0 <= float(r["OA"]) <= 100
        assert int(r["n_train"]) == 30 and r["netnum"] == "110000"
    assert probe_row["probe"] == "logreg" and ft_row["hos"] == "0"
