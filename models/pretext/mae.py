"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022), mode 930.

The encoder is the ViT backbone itself (:class:`models.vit.ViTBackbone`, timm): patch tokens
plus a FIXED 2-D sin-cos position embedding, a random ``--mask-ratio`` (75 %) of them removed per
image (MAE's ``random_masking``: argsort of uniform noise drawn from torch's global RNG, which the
epoch loop reseeds per (seed, epoch, rank), so the masks are reproducible per seed and per
rank), the cls token prepended, the blocks and the final norm run on the visible tokens only.
The light decoder (``--decoder-depth`` timm Blocks of ``--decoder-dim``, 32-d heads as MAE's
512-d / 16 heads) embeds them, inserts a shared mask token at every removed position, adds its
own fixed sin-cos position embedding and predicts the ``p x p x C`` pixels of every patch. The
loss (:mod:`losses.mae`) is the MSE on the MASKED patches only, against per-patch targets
normalised PER BAND (``--norm-pix-loss``, on by default as in the paper's recipe).

The kept backbone is that same ViT object (with its sin-cos ``pos_embed``): ``main_cls.py
--mode 41`` fine-tunes or probes it, reading the cls token (MAE's linear-probe feature,
main_linprobe.py; recorded in the checkpoint). Views: random resized crop (scale 0.2-1, always)
and a horizontal flip with probability 0.5 (main_pretrain.py), resized bilinearly with
antialiasing where MAE uses bicubic.

Deviations from models_mae.py, each deliberate: the encoder keeps timm's initialisation (``build``
may receive a backbone loaded with ``--cepoch``; MAE's xavier initialisation is applied to the
decoder); the decoder's position embedding is a buffer rather than a frozen parameter.
"""
from __future__ import annotations

import argparse
import logging
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from config.errors import UserError
from datasets.plans import Plan
from datasets.transforms import Normalize, RandomResizedCrop, check_size
from losses.mae import MAELoss, patchify, unpatchify
from models.pretext.simclr import embedding_std
from models.vit import ViTBackbone, sincos_2d

log = logging.getLogger(__name__)

LOSSES = ("MAELoss", "mae")
VIT_ONLY = True              # engine.guards.check_pretext_backbone: a ViT --netnum is required
MASK_RATIO = 0.75            # models_mae.py / PRETRAIN.md: --mask_ratio 0.75
DECODER_DEPTH = 8            # mae_vit_*_dec512d8b
DECODER_DIM = 512
HEAD_DIM = 32                # 512-d decoder with 16 heads
CROP_SCALE = (0.2, 1.0)      # main_pretrain.py: RandomResizedCrop(scale=(0.2, 1.0))
FLIP_P = 0.5                 # main_pretrain.py: RandomHorizontalFlip()
VIS_COLUMNS = ("input", "visible patches", "reconstruction", "target")

# --recipe paper / small: flag dest -> value; SOURCES names where each value comes from. The lr follows
# MAE's rule lr = blr x total batch / 256 ("lr_rule": "linear"), with cosine decay after a linear
# warm-up (util/lr_sched.py), which is --lr_policy cosine with --warmup.
_MAE = "facebookresearch/mae"
RECIPES: dict[str, dict[str, object]] = {
    "paper": {"optimizer": "adamw", "lr_base": 1.5e-4, "lr_rule": "linear", "warmup": 40, "wd": 0.05,
              "momentum": 0.9, "beta2": 0.95, "mask_ratio": 0.75, "norm_pix_loss": True,
              "decoder_depth": 8, "decoder_dim": 512},
    "small": {"optimizer": "adamw", "lr_base": 2.0e-4, "lr_rule": "linear", "warmup": 10, "wd": 0.05,
              "momentum": 0.9, "beta2": 0.95, "mask_ratio": 0.75, "norm_pix_loss": True,
              "decoder_depth": 2, "decoder_dim": 128},
}
SOURCES: dict[str, dict[str, str]] = {
    "paper": {"optimizer": f"{_MAE} main_pretrain.py: torch.optim.AdamW(param_groups, lr, betas=(0.9, 0.95))",
              "lr_base": f"{_MAE} PRETRAIN.md: --blr 1.5e-4",
              "lr_rule": f"{_MAE} main_pretrain.py: args.lr = args.blr * eff_batch_size / 256",
              "warmup": f"{_MAE} PRETRAIN.md: --warmup_epochs 40 (of 800; capped at 10 % of --mepoch here)",
              "wd": f"{_MAE} main_pretrain.py: --weight_decay 0.05",
              "momentum": f"{_MAE} main_pretrain.py: betas=(0.9, 0.95): beta1 (--momentum is Adam's beta1 here)",
              "beta2": f"{_MAE} main_pretrain.py: betas=(0.9, 0.95): beta2",
              "mask_ratio": "He et al. 2022, sec. 4.1; PRETRAIN.md --mask_ratio 0.75",
              "norm_pix_loss": f"{_MAE} PRETRAIN.md: --norm_pix_loss",
              "decoder_depth": f"{_MAE} models_mae.py: mae_vit_base_patch16_dec512d8b (8 blocks)",
              "decoder_dim": f"{_MAE} models_mae.py: mae_vit_base_patch16_dec512d8b (512 wide)"},
    "small": {"optimizer": "solo-learn scripts/pretrain/cifar/mae.yaml: adamw, betas [0.9, 0.95]",
              "lr_base": "solo-learn scripts/pretrain/cifar/mae.yaml (ViT-S, 32 px, patch 4): lr 2.0e-4 per 256",
              "lr_rule": "solo-learn solo/args/pretrain.py: lr scaled by batch_size / 256",
              "warmup": "solo-learn warmup_cosine default: 10 warm-up epochs (capped at 10 % of --mepoch here)",
              "wd": "He et al. 2022 and solo-learn cifar/mae.yaml: 0.05",
              "momentum": "solo-learn cifar/mae.yaml: betas [0.9, 0.95]",
              "beta2": "solo-learn cifar/mae.yaml: betas [0.9, 0.95]",
              "mask_ratio": "He et al. 2022 and solo-learn cifar/mae.yaml: 0.75",
              "norm_pix_loss": "He et al. 2022 and solo-learn cifar/mae.yaml: norm_pix_loss true",
              "decoder_depth": "our choice for a CPU: the 8 x 512 decoder costs several times a ViT-Tiny encoder on 25 % "
                               "of the tokens; MAE Table 1(a, b): fine-tuning barely depends on decoder depth",
              "decoder_dim": "our choice for a CPU (see decoder_depth); MAE Table 1(b): width 128-1024 within ~1 point"},
}


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--mask-ratio", dest="mask_ratio", type=float, default=None,
                       help=f"modes 930/931: fraction of patch tokens removed (default: the --recipe's, {MASK_RATIO})")
    group.add_argument("--decoder-depth", dest="decoder_depth", type=int, default=None,
                       help=f"modes 930/931: transformer blocks of the MAE decoder (default: the --recipe's, paper "
                            f"{DECODER_DEPTH}, small 2)")
    group.add_argument("--decoder-dim", dest="decoder_dim", type=int, default=None,
                       help=f"modes 930/931: width of the MAE decoder, a multiple of {HEAD_DIM} (default: the "
                            f"--recipe's, paper {DECODER_DIM}, small 128)")
    group.add_argument("--norm-pix-loss", dest="norm_pix_loss", action=argparse.BooleanOptionalAction, default=None,
                       help="modes 930/931: targets are patches normalised per band by their own mean/variance "
                            "(default on, from the --recipe; --no-norm-pix-loss: raw normalised pixels)")


def check_args(args: argparse.Namespace) -> None:
    if not 0 < args.mask_ratio < 1:
        raise UserError(f"--mask-ratio {args.mask_ratio} must be strictly between 0 and 1; the paper uses 0.75")
    if args.decoder_depth < 1:
        raise UserError(f"--decoder-depth {args.decoder_depth} must be >= 1 block; the paper uses 8")
    if args.decoder_dim < HEAD_DIM or args.decoder_dim % HEAD_DIM:
        raise UserError(f"--decoder-dim {args.decoder_dim} must be a positive multiple of {HEAD_DIM} (heads of "
                        f"{HEAD_DIM} channels, as MAE's 512-d decoder with 16 heads); e.g. --decoder-dim 128")


def random_masking(x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking (models_mae.py): keep the ``int(L * (1 - ratio))`` tokens of lowest noise.

    Returns the kept tokens (N x keep x D, in shuffled order), the mask (N x L, 1 = removed) and
    the permutation that restores the original order.
    """
    n, length, d = x.shape
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def check_keep(n_tokens: int, mask_ratio: float, where: str) -> None:
    """At least one token visible and one removed, or the task is empty."""
    keep = int(n_tokens * (1 - mask_ratio))
    if not 1 <= keep < n_tokens:
        raise UserError(f"--mask-ratio {mask_ratio} keeps {keep} of the {n_tokens} tokens of {where}; "
                        "choose a ratio that keeps at least one and removes at least one")


def mae_init(m: nn.Module) -> None:
    """models_mae.py ``_init_weights``: xavier-uniform Linear weights, zero biases, LayerNorm 1 / 0."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class MAEDecoder(nn.Module):
    """MAE's decoder: embed the visible tokens, fill the removed positions with the mask token,
    restore the order, add the fixed position embedding ``pos`` (1 x (1 + T) x dim), blocks, norm.
    ``forward`` returns N x T x dim (the cls slot dropped)."""

    def __init__(self, enc_dim: int, dim: int, depth: int, pos: Tensor) -> None:
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", pos)
        self.blocks = nn.ModuleList([Block(dim, dim // HEAD_DIM, 4.0, qkv_bias=True,
                                           norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(mae_init)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.embed(latent)
        n, length = ids_restore.shape
        filled = torch.cat([x[:, 1:], self.mask_token.expand(n, length + 1 - x.shape[1], -1)], dim=1)
        filled = torch.gather(filled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], filled], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1:]


def freeze_sincos(backbone: ViTBackbone, pos: Tensor) -> None:
    """MAE's encoder position embedding: fixed 2-D sin-cos (``requires_grad=False``)."""
    with torch.no_grad():
        backbone.pos_embed.copy_(pos)
    backbone.pos_embed.requires_grad_(False)


class MAE(nn.Module):
    """Masked autoencoder on the ViT ``backbone`` (see the module docstring); ``forward(images) -> (loss, stats)``."""

    def __init__(self, backbone: ViTBackbone, n_bands: int, mask_ratio: float = MASK_RATIO,
                 decoder_depth: int = DECODER_DEPTH, decoder_dim: int = DECODER_DIM, norm_pix: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_ratio, self.n_bands, self.patch = mask_ratio, n_bands, backbone.patch
        grid = backbone.grid
        if grid[0] != grid[1]:
            raise ValueError("MAE's sin-cos position embedding needs a square patch grid")
        check_keep(backbone.num_patches, mask_ratio, f"a {backbone.input_size} px input with {self.patch} px patches")
        freeze_sincos(backbone, sincos_2d(backbone.out_dim, grid[0]))
        self.decoder = MAEDecoder(backbone.out_dim, decoder_dim, decoder_depth, sincos_2d(decoder_dim, grid[0]))
        self.pred = nn.Linear(decoder_dim, self.patch * self.patch * n_bands)
        mae_init(self.pred)
        self.criterion = MAELoss(self.patch, norm_pix)

    def forward_encoder(self, imgs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Images -> (N x (1 + kept) x D encoded visible tokens, mask N x L, ids_restore N x L)."""
        kept, mask, ids_restore = random_masking(self.backbone.patch_tokens(imgs), self.mask_ratio)
        return self.backbone.encode_tokens(kept), mask, ids_restore

    def predict(self, imgs: Tensor) -> tuple[Tensor, Tensor]:
        """Images -> (predicted patches N x L x p*p*C, mask N x L)."""
        latent, mask, ids_restore = self.forward_encoder(imgs)
        return self.pred(self.decoder(latent, ids_restore)), mask

    def forward(self, imgs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        latent, mask, ids_restore = self.forward_encoder(imgs)
        pred = self.pred(self.decoder(latent, ids_restore))
        loss = self.criterion(imgs, pred, mask)
        return loss, {"emb_std": embedding_std(latent[:, 0])}

    @torch.no_grad()
    def figure(self, imgs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``--vis``: input, visible patches, reconstruction (prediction on the masked patches, target on the
        visible ones) and target, all N x C x H x W; reconstruction and target in the loss's space
        (per-band normalised patches with ``--norm-pix-loss``). The mask is drawn with a fixed seed,
        outside the training RNG, so every figure of a run masks the same patches."""
        with torch.random.fork_rng(devices=[imgs.device] if imgs.is_cuda else []):
            torch.manual_seed(0)
            pred, mask = self.predict(imgs)
        p, c = self.patch, imgs.shape[1]
        m = mask.unsqueeze(-1)
        target = self.criterion.target(imgs)
        visible = unpatchify(patchify(imgs.float(), p) * (1 - m), p, c)
        recon = unpatchify(pred.float() * m + target * (1 - m), p, c)
        return imgs.float(), visible, recon, unpatchify(target, p, c)


def vis_rows(model: nn.Module, views: Tensor) -> list[list[Tensor]]:
    """``--vis``: per image the :data:`VIS_COLUMNS` (see :meth:`MAE.figure`)."""
    return [list(row) for row in zip(*model.figure(views))]


class HFlip:
    """Horizontal flip with probability ``p`` (torch's global RNG, seeded per sample by the loader)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        return torch.flip(x, dims=(-1,)) if float(torch.rand(())) < self.p else x


def make_transform(args: argparse.Namespace, opt) -> Plan:
    """MAE's view: random resized crop (scale 0.2-1) at the input size, horizontal flip, per-band normalisation."""
    size = check_size(opt.input_size)
    return Plan("mae", [RandomResizedCrop(size, CROP_SCALE, 1.0), HFlip(FLIP_P)], Normalize(opt.mean, opt.std))


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> MAE:
    if not isinstance(backbone, ViTBackbone):
        raise UserError("--mode 930 (MAE) needs a ViT backbone; pass a family-1 --netnum such as 110000")
    return MAE(backbone, opt.n_bands, args.mask_ratio, args.decoder_depth, args.decoder_dim, args.norm_pix_loss)
