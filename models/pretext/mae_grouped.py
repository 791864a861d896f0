"""Grouped-channel MAE (SatMAE, Cong et al., NeurIPS 2022, models_mae_group_channels.py), mode 931.

Bands are put in groups BY NAME: by default SatMAE's Sentinel-2 groups B02,B03,B04,B08 (10 m
visible + NIR) / B05,B06,B07,B8A (20 m red edge) / B11,B12 (20 m SWIR), looked up in the
dataset's band names, so EuroSAT's file order (B8A last) works; any grouping with
``--band-groups "B02,B03,B04,B08;B05,B06,B07,B8A;B11,B12"``. Bands in no group (B01, B09, B10 by
default, which SatMAE drops too) are not used, and a log line says so. Each group has its own
patch embedding; a token is a (group, patch) pair encoded with ``[position || group]`` sin-cos
codes (:class:`models.vit.GroupedViTBackbone`). Masking removes ``--mask-ratio`` of the G x L
tokens independently across groups (a location may be visible in one group and hidden in
another; SatMAE's default), or the same locations in every group with ``--consistent-mask``
(SatMAE's ``--spatial_mask``). The decoder (shared with mode 930: :class:`MAEDecoder`) uses the
same kind of encoding, and one linear head per group predicts that group's bands.

Loss: for every group, the MSE between its head's prediction and the per-band normalised
patches of ITS OWN bands, on its masked tokens, summed over groups and divided by the number of
masked (group, patch) tokens. (SatMAE's ``forward_loss`` concatenates the heads' outputs in group
order but then indexes them with the groups' input band indices, so with its default
non-contiguous groups each group's loss compares other heads' outputs with its bands, e.g. B08's
target with the red-edge head; vit_mae.md section 3.3. Here each head is scored on its own bands.)

Single group: a dataset whose bands form fewer than two groups (an RGB dataset, or
``--band-groups`` with one group) is refused: one group is plain MAE, which is ``--mode 930``.

The kept backbone is the grouped encoder. Its checkpoint meta records the groups by band name
(``band_groups``) and the probe feature (``avg``: the mean over every (group, patch) token,
SatMAE's ``global_pool`` default for fine-tuning); ``main_cls.py --mode 41`` rebuilds the same
encoder for the dataset's bands from them and fine-tunes or probes it.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
from torch import Tensor, nn

from config.errors import UserError
from datasets.plans import Plan
from losses.mae import MAELoss, patchify, unpatchify
from models.pretext import mae
from models.pretext.mae import (
    MAEDecoder,
    mae_init,
    check_keep,
    freeze_sincos,
    random_masking,
)
from models.pretext.simclr import embedding_std
from models.vit import (
    GROUP_EMBED_FRACTION,
    S2_GROUPS,
    GroupedViTBackbone,
    ViTBackbone,
    parse_band_groups,
    resolve_groups,
    sincos_1d,
    sincos_2d,
)

log = logging.getLogger(__name__)

LOSSES = ("MAELoss", "mae")
VIT_ONLY = True
VIS_COLUMNS = mae.VIS_COLUMNS

# --recipe paper / small: flag dest -> value; SOURCES names where each value comes from.
_SAT = "sustainlab-group/SatMAE"
RECIPES: dict[str, dict[str, object]] = {
    "paper": {"optimizer": "adamw", "lr_base": 1.0e-4, "lr_rule": "linear", "warmup": 20, "wd": 0.05,
              "momentum": 0.9, "beta2": 0.95, "mask_ratio": 0.75, "norm_pix_loss": True, "consistent_mask": False,
              "decoder_depth": 8, "decoder_dim": 512},
    "small": {**mae.RECIPES["small"], "consistent_mask": False},
}
SOURCES: dict[str, dict[str, str]] = {
    "paper": {"optimizer": f"{_SAT} main_pretrain.py: torch.optim.AdamW(param_groups, lr, betas=(0.9, 0.95))",
              "lr_base": f"{_SAT} README pretraining command: --blr 0.0001",
              "lr_rule": f"{_SAT} main_pretrain.py (MAE's): lr = blr * eff_batch_size / 256",
              "warmup": f"{_SAT} README: --warmup_epochs 20 (of 200; capped at 10 % of --mepoch here)",
              "wd": f"{_SAT} main_pretrain.py: --weight_decay 0.05",
              "momentum": f"{_SAT} main_pretrain.py: betas=(0.9, 0.95): beta1",
              "beta2": f"{_SAT} main_pretrain.py: betas=(0.9, 0.95): beta2",
              "mask_ratio": f"{_SAT} main_pretrain.py: --mask_ratio 0.75",
              "norm_pix_loss": f"{_SAT} README, additional arguments: --norm_pix_loss",
              "consistent_mask": f"{_SAT}: --spatial_mask is off by default (independent masks per group)",
              "decoder_depth": f"{_SAT} models_mae_group_channels.py: mae_vit_*_dec512d8b (8 blocks)",
              "decoder_dim": f"{_SAT} models_mae_group_channels.py: mae_vit_*_dec512d8b (512 wide)"},
    "small": {**mae.SOURCES["small"], "consistent_mask": "as the paper: independent masks per group"},
}


def add_args(group: argparse._ArgumentGroup) -> None:
    mae.add_args(group)
    group.add_argument("--band-groups", dest="band_groups", default=None,
                       help="mode 931: band groups by name, ';' between groups, e.g. "
                            "\"B02,B03,B04,B08;B05,B06,B07,B8A;B11,B12\" (default: those Sentinel-2 groups)")
    group.add_argument("--consistent-mask", dest="consistent_mask", action=argparse.BooleanOptionalAction, default=None,
                       help="mode 931: mask the same patch locations in every band group (SatMAE's --spatial_mask); "
                            "default: independently per group")


def check_args(args: argparse.Namespace) -> None:
    mae.check_args(args)
    if args.band_groups is not None:
        parse_band_groups(args.band_groups)
    if getattr(args, "ptcp", 0):
        raise UserError("--mode 931 builds a grouped-channel encoder (one patch embedding per band group), which "
                        "ImageNet's RGB ViT does not have: drop --ptcp")
    if getattr(args, "cepoch", None) is not None and not getattr(args, "resume", None):
        raise UserError("--mode 931 builds its grouped-channel encoder itself, so it cannot start from a --cepoch "
                        "backbone; continue a 931 run with --resume <netnum>_<expnum>_state.pth")


def band_groups(args: argparse.Namespace, bands) -> tuple[list[list[int]], list[list[str]], list[str]]:
    """The groups (input positions, names) and the unused bands; fewer than 2 groups is refused."""
    named = parse_band_groups(args.band_groups) if args.band_groups else None
    idx, names, dropped = resolve_groups(named, bands, strict=named is not None)
    if len(idx) < 2:
        asked = args.band_groups or " / ".join(",".join(g) for g in S2_GROUPS)
        raise UserError(f"--mode 931 puts bands in groups ({asked}); this data's bands ({' '.join(bands)}) form "
                        f"{len(idx)} group(s), and a single group is plain MAE: use --mode 930, or multispectral "
                        "data (e.g. --ds euroms) or a --band-groups with at least 2 groups")
    return idx, names, dropped


class GroupedMAE(nn.Module):
    """SatMAE-style masked autoencoder on a :class:`GroupedViTBackbone` (see the module docstring)."""

    def __init__(self, backbone: GroupedViTBackbone, mask_ratio: float = mae.MASK_RATIO,
                 decoder_depth: int = mae.DECODER_DEPTH, decoder_dim: int = mae.DECODER_DIM, norm_pix: bool = True,
                 consistent: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_ratio, self.consistent, self.norm_pix = mask_ratio, consistent, norm_pix
        self.patch = p = backbone.patch
        grid = backbone.grid[0]
        n_groups = len(backbone.groups)
        self.n_pos = grid * grid
        check_keep(self.n_pos if consistent else n_groups * self.n_pos, mask_ratio,
                   f"{n_groups} groups x {self.n_pos} patches")
        freeze_sincos(backbone, sincos_2d(backbone.out_dim - backbone.group_dim, grid))
        backbone.group_embed.requires_grad_(False)               # SatMAE pretraining: fixed sin-cos codes
        dec_group = decoder_dim // GROUP_EMBED_FRACTION
        pos = sincos_2d(decoder_dim - dec_group, grid)[:, 1:]                           # 1 x L x (dim - g)
        grp = torch.from_numpy(sincos_1d(dec_group, np.arange(n_groups))).float()     # G x g
        tokens = torch.cat([pos.expand(n_groups, -1, -1), grp.unsqueeze(1).expand(-1, self.n_pos, -1)], dim=-1)
        dec_pos = torch.cat([torch.zeros(1, 1, decoder_dim), tokens.reshape(1, -1, decoder_dim)], dim=1)
        self.decoder = MAEDecoder(backbone.out_dim, decoder_dim, decoder_depth, dec_pos)
        self.pred = nn.ModuleList([nn.Linear(decoder_dim, p * p * len(g)) for g in backbone.groups])
        self.pred.apply(mae_init)
        self.criterion = MAELoss(p, norm_pix)

    @property
    def kept_backbone(self) -> nn.Module:
        return self.backbone

    def mask_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """N x G x L x D -> (kept tokens, mask N x G x L, ids_restore over the G*L group-major tokens)."""
        n, g, length, d = tokens.shape
        flat = tokens.reshape(n, g * length, d)
        if not self.consistent:
            kept, mask, ids_restore = random_masking(flat, self.mask_ratio)
            return kept, mask.view(n, g, length), ids_restore
        keep = int(length * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(n, length, device=tokens.device), dim=1)   # one draw per location
        offsets = (torch.arange(g, device=tokens.device) * length).view(1, g, 1)
        keep_ids = (ids_shuffle[:, :keep].unsqueeze(1) + offsets).reshape(n, -1)
        drop_ids = (ids_shuffle[:, keep:].unsqueeze(1) + offsets).reshape(n, -1)
        ids_restore = torch.argsort(torch.cat([keep_ids, drop_ids], dim=1), dim=1)
        kept = torch.gather(flat, 1, keep_ids.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(n, g * length, device=tokens.device)
        mask[:, :keep_ids.shape[1]] = 0
        return kept, torch.gather(mask, 1, ids_restore).view(n, g, length), ids_restore

    def predict(self, imgs: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Images -> (per group N x L x p*p*|g| predictions, mask N x G x L, encoded visible tokens)."""
        kept, mask, ids_restore = self.mask_tokens(self.backbone.group_tokens(imgs))
        latent = self.backbone.encode_tokens(kept)
        out = self.decoder(latent, ids_restore).view(imgs.shape[0], len(self.pred), self.n_pos, -1)
        return [head(out[:, i]) for i, head in enumerate(self.pred)], mask, latent

    def targets(self, imgs: Tensor) -> list[Tensor]:
        """Each group's per-band normalised (``norm_pix``) patches of its own bands, in the group's band order."""
        return [self.criterion.target(imgs.float().index_select(1, getattr(self.backbone, f"group_index_{i}")))
                for i in range(len(self.pred))]

    def forward(self, imgs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        preds, mask, latent = self.predict(imgs)
        total = imgs.new_zeros((), dtype=torch.float32)
        for i, (pred, target) in enumerate(zip(preds, self.targets(imgs))):
            total = total + ((pred.float() - target).pow(2).mean(dim=-1) * mask[:, i]).sum()
        return total / mask.sum(), {"emb_std": embedding_std(latent[:, 0])}

    @torch.no_grad()
    def figure(self, imgs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``--vis``: as :meth:`models.pretext.mae.MAE.figure`, each band masked by its group's mask;
        bands in no group stay blank in the last three columns."""
        with torch.random.fork_rng(devices=[imgs.device] if imgs.is_cuda else []):
            torch.manual_seed(0)
            preds, mask, _ = self.predict(imgs)
        p, c = self.patch, imgs.shape[1]
        shape = (imgs.shape[0], c, *imgs.shape[2:])
        visible, recon, target_img = (imgs.new_zeros(shape, dtype=torch.float32) for _ in range(3))
        for i, (pred, target) in enumerate(zip(preds, self.targets(imgs))):
            idx = getattr(self.backbone, f"group_index_{i}")
            m = mask[:, i].unsqueeze(-1)
            k = len(idx)
            raw = patchify(imgs.float().index_select(1, idx), p)
            visible[:, idx] = unpatchify(raw * (1 - m), p, k)
            recon[:, idx] = unpatchify(pred.float() * m + target * (1 - m), p, k)
            target_img[:, idx] = unpatchify(target, p, k)
        return imgs.float(), visible, recon, target_img


vis_rows = mae.vis_rows


def make_transform(args: argparse.Namespace, opt) -> Plan:
    """MAE's view (:func:`models.pretext.mae.make_transform`); the band groups are checked against ``opt.bands``."""
    band_groups(args, opt.bands)
    return mae.make_transform(args, opt)


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> GroupedMAE:
    """The grouped encoder replaces the plain ViT ``backbone`` (same size, patch and input side)."""
    if not isinstance(backbone, ViTBackbone):
        raise UserError("--mode 931 (grouped MAE) needs a ViT backbone; pass a family-1 --netnum such as 110000")
    idx, names, dropped = band_groups(args, opt.bands)
    if dropped:
        log.info("--mode 931: band(s) %s are in no band group and are not used", " ".join(dropped))
    log.info("--mode 931: band groups %s, masking %s", " / ".join(",".join(g) for g in names),
             "the same locations in every group" if args.consistent_mask else "independently per group")
    encoder = GroupedViTBackbone(backbone.spec, opt.n_bands, backbone.input_size, idx, names, feature="avg")
    return GroupedMAE(encoder, args.mask_ratio, args.decoder_depth, args.decoder_dim, args.norm_pix_loss,
                      args.consistent_mask)
