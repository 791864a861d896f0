"""GAN pretraining, mode 990 (MARTA-GAN style, Lin et al., GRSL 2017): the discriminator is the backbone kept.

A DCGAN-like generator ``G`` maps ``z ~ N(0, I)`` (``--gan-z``, 100 by default) to
images of all bands at the input size, in NORMALISED band units (a linear output, no
tanh: normalised bands are not bounded). The discriminator ``D`` is the shared backbone
followed by a linear real/fake head on its pooled features; the backbone is what the
checkpoint keeps. With ``x`` the real batch (plan D: crop, rotation + flip) and BCE on
the head's logits,

    L_D = BCE(D(x), 1) + BCE(D(G(z)), 0)
    L_G = BCE(D(G(z)), 1)                       (non-saturating; mode 991 uses feature matching)

One backward step trains both networks. The engine backpropagates ``L_D + L_G`` once,
so each term has to reach only its own network: ``L_D`` sees ``G(z)`` detached, and
``L_G`` runs the discriminator with DETACHED parameters (``torch.func.functional_call``).
Then ``D`` gets exactly ``dL_D/dD`` and ``G`` exactly ``dL_G/dG``, which is the same as
updating the two networks simultaneously with their own optimisers.
:func:`build_optimizer` puts them in two Adam groups (betas 0.5, 0.999, as in DCGAN)
with the generator at ``--gan-g-lr-scale`` times the discriminator's lr.

BatchNorm: the real and the fake batch go through ``D`` separately, as in DCGAN, so
each is normalised with its own statistics. Only the real pass updates the running
statistics: the fake passes use copies of the buffers. The kept backbone's eval-mode
statistics therefore describe real images only, which is what fine-tuning, the linear
probe and the kNN monitor see.
"""
from __future__ import annotations

import argparse
import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from config.errors import UserError
from datasets.plans import build_plan

LOSSES = ("GANLoss", "gan")
NEEDS_CONV_STAGES = True     # engine.guards.check_pretext_backbone refuses ViTs: the discriminator is the CNN's conv stages (multi-level features)
PLAN = "D"                      # light augmentation: crop, rotation + flip
DEFAULT_Z = 100
DEFAULT_G_LR_SCALE = 1.0
G_WIDTH = 64                    # DCGAN's ngf: channels just before the output layer
G_MAX_CHANNELS = 8 * G_WIDTH    # DCGAN's widest generator layer
FM_LEVELS = 3                   # stage outputs whose pooled features are matched (MARTA-GAN: the last three)
BETAS = (0.5, 0.999)            # DCGAN's Adam
ENGINE_MOMENTUM = 0.9           # engine.cli's --momentum default (Adam beta1 for the other pretexts)
VIS_COLUMNS = ("real image", "generated sample")          # --vis: the columns of vis_rows
VIS_SEED = 0                    # --vis: seed of the fixed noise, the same z at every figure
_SMALL = ("scripts/experiments/eurosat_ms_pretexts.sh, this repository's README runs of the classic pretexts: "
          "--optimizer adam --lr 1e-3 --wd 1e-6 --warmup 2, batch 64, cosine")
_DCGAN = "Radford et al., ICLR 2016 (DCGAN), section 4, which MARTA-GAN (Lin et al. 2017) follows"
# The GAN builds its own Adam (betas 0.5, 0.999; see build_optimizer): no momentum or param-group settings.
RECIPES = {
    "paper": {"optimizer": "adam", "lr_base": 2e-4, "lr_rule": "none", "wd": 0.0, "warmup": 0},
    "small": {"optimizer": "adam", "lr_base": 1e-3, "lr_rule": "none", "wd": 1e-6, "warmup": 2},
}
SOURCES = {
    "paper": {"optimizer": f"{_DCGAN}: Adam, beta1 0.5", "lr_base": f"{_DCGAN}: lr 0.0002",
              "lr_rule": f"{_DCGAN}: mini-batch 128, no scaling rule", "wd": f"{_DCGAN}: none",
              "warmup": f"{_DCGAN}: constant lr"},
    "small": {k: _SMALL for k in RECIPES["small"]},
}


def add_args(group: argparse._ArgumentGroup) -> None:
    """``--gan-z`` and ``--gan-g-lr-scale`` (modes 990 and 991)."""
    group.add_argument("--gan-z", dest="gan_z", type=int, default=DEFAULT_Z,
                       help="modes 990/991: size of the generator's noise vector z")
    group.add_argument("--gan-g-lr-scale", dest="gan_g_lr_scale", type=float, default=DEFAULT_G_LR_SCALE,
                       help="modes 990/991: generator lr = this x the discriminator's lr (--lr)")


def check_args(args: argparse.Namespace) -> None:
    """Reject bad GAN flags, and optimiser flags a GAN does not use, before any worker starts."""
    z = getattr(args, "gan_z", DEFAULT_Z)
    if z < 1:
        raise UserError(f"--gan-z {z} must be a positive size of the noise vector; DCGAN uses 100")
    scale = getattr(args, "gan_g_lr_scale", DEFAULT_G_LR_SCALE)
    if not scale > 0:
        raise UserError(f"--gan-g-lr-scale {scale} must be positive; 1 trains G and D at the same lr")
    name = str(getattr(args, "optimizer", "adam")).lower()
    if name != "adam":
        raise UserError(f"--optimizer {name} does not apply to the GAN modes: they train with Adam, betas "
                        f"{BETAS}; drop --optimizer")
    momentum = getattr(args, "momentum", ENGINE_MOMENTUM)
    if momentum != ENGINE_MOMENTUM:
        raise UserError(f"--momentum {momentum} does not apply to the GAN modes: Adam's betas are fixed at "
                        f"{BETAS}; drop --momentum")


def feature_matching_loss(real: Tensor, fake: Tensor) -> Tensor:
    """``mean_k (mean_i real[i, k] - mean_i fake[i, k])^2`` for N x K features.

    The squared distance between the batch means (Salimans et al., 2016), divided by
    the feature size ``K`` so its scale does not depend on the backbone's width. It is
    zero whenever the two batches have the same mean features, e.g. when ``fake`` is
    ``real`` shuffled: it matches statistics, not pairs.
    """
    return (real.float().mean(dim=0) - fake.float().mean(dim=0)).pow(2).mean()


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: conv and linear weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def generator_plan(size: int, width: int = G_WIDTH, max_channels: int = G_MAX_CHANNELS
                   ) -> tuple[int, list[int], int]:
    """Start side, channels per resolution, and the side reached by doubling, for a ``size`` output.

    ``n = floor(log2(size / 4))`` doublings start from ``ceil(size / 2^n)`` (4 to 8 pixels):
    4x4 for 32, 64, 256; 7x7 for 224; 5x5 for 40. Channels halve at each doubling and end
    at ``width`` (DCGAN: 512, 256, 128, 64 for 64x64), capped at ``max_channels``. When
    ``size`` is not ``start * 2^n`` (e.g. 72: 5 -> 80), the output is resized to ``size``.
    """
    if size < 8:
        raise UserError(f"input size {size} is too small for the GAN generator; use --input_size 32 or more")
    n = math.floor(math.log2(size / 4))
    start = math.ceil(size / 2 ** n)
    channels = [min(width * 2 ** (n - 1 - k), max_channels) for k in range(n)]
    return start, channels, start * 2 ** n


class Generator(nn.Module):
    """DCGAN generator: z -> linear to ``start x start`` -> (transposed conv 4/2, BN, ReLU) x n -> bands.

    The last layer is a plain transposed conv with bias: the output is in normalised
    band units, unbounded, like the real views.
    """

    def __init__(self, z_dim: int, n_bands: int, size: int, width: int = G_WIDTH) -> None:
        super().__init__()
        start, channels, reached = generator_plan(size, width)
        self.z_dim, self.size, self.start = z_dim, size, start
        self.project = nn.Linear(z_dim, channels[0] * start * start, bias=False)
        self.stem = nn.Sequential(nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(channels):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(channels[-1], n_bands, 4, 2, 1))
        self.body = nn.Sequential(*layers)
        self.resize = reached != size
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        """N x z_dim noise -> N x bands x size x size images (normalised units)."""
        x = self.project(z).view(len(z), -1, self.start, self.start)
        x = self.body(self.stem(x))
        if self.resize:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x


class Discriminator(nn.Module):
    """The backbone plus a linear real/fake head; also returns the features that 991 matches."""

    def __init__(self, backbone: nn.Module, levels: int = FM_LEVELS) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, 1)
        self.levels = levels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images -> (N real/fake logits, N x K features: the pooled last ``levels`` stage outputs, concatenated)."""
        maps = self.backbone.feature_maps(x)
        logits = self.head(self.backbone.pool(maps[-1])).squeeze(1)
        features = torch.cat([m.float().mean(dim=(2, 3)) for m in maps[-self.levels:]], dim=1)
        return logits.float(), features


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class GAN(nn.Module):
    """Generator + discriminator trained by one backward of ``L_D + L_G`` (module docstring).

    ``fm_weight`` and ``adv_weight`` weigh the generator's feature-matching and
    non-saturating terms: (0, 1) is mode 990, (1, ``--gan-fm-bce``) mode 991.
    """

    def __init__(self, backbone: nn.Module, n_bands: int, input_size: int, z_dim: int = DEFAULT_Z,
                 fm_weight: float = 0.0, adv_weight: float = 1.0) -> None:
        super().__init__()
        self.discriminator = Discriminator(backbone)
        self.generator = Generator(z_dim, n_bands, input_size)
        self.fm_weight, self.adv_weight = fm_weight, adv_weight

    @property
    def backbone(self) -> nn.Module:
        """The shared backbone (inside the discriminator): what the checkpoint keeps."""
        return self.discriminator.backbone

    def sample(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        """``n`` generated images (normalised band units); with a CPU ``generator`` the noise is drawn
        from it on the CPU and moved to ``device`` (the same z on any device)."""
        if generator is None:
            return self.generator(torch.randn(n, self.generator.z_dim, device=device))
        return self.generator(torch.randn(n, self.generator.z_dim, generator=generator).to(device))

    def discriminate_frozen(self, x: Tensor, detach_params: bool) -> tuple[Tensor, Tensor]:
        """``D(x)`` that writes no BatchNorm running statistics; with ``detach_params`` no gradient reaches D."""
        d = self.discriminator
        state = {k: (p.detach() if detach_params else p) for k, p in d.named_parameters()}
        state.update({k: b.clone() for k, b in d.named_buffers()})
        return functional_call(d, state, (x,))

    def forward(self, views: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real = views
        fake = self.sample(len(real), real.device)
        logit_real, feat_real = self.discriminator(real)
        logit_fake, _ = self.discriminate_frozen(fake.detach(), detach_params=False)
        loss_d = _bce(logit_real, 1.0) + _bce(logit_fake, 0.0)

        logit_g, feat_g = self.discriminate_frozen(fake, detach_params=True)
        loss_g = logit_g.new_zeros(())
        stats: dict[str, Tensor] = {}
        if self.adv_weight:
            loss_g = loss_g + self.adv_weight * _bce(logit_g, 1.0)
        if self.fm_weight:
            fm = feature_matching_loss(feat_real.detach(), feat_g)
            loss_g = loss_g + self.fm_weight * fm
            stats["loss_fm"] = fm.detach()
        stats.update({"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                      "d_real": torch.sigmoid(logit_real.detach()).mean(),
                      "d_fake": torch.sigmoid(logit_fake.detach()).mean()})
        return loss_d + loss_g, stats


def vis_rows(model: GAN, views: Tensor) -> list[list[Tensor]]:
    """``--vis``: per row a real image and a sample from fixed noise (seed :data:`VIS_SEED`), so the
    figures of one run show how the same ``z`` evolves (:data:`VIS_COLUMNS`)."""
    fake = model.sample(len(views), views.device, torch.Generator().manual_seed(VIS_SEED))
    return [[real, gen] for real, gen in zip(views, fake.float())]


class GANView:
    """Raw ``C x H x W`` -> the augmented, normalised real image (plan D)."""

    def __init__(self, plan) -> None:
        self.plan = plan

    def __call__(self, x: Tensor) -> Tensor:
        return self.plan(x)

    def __repr__(self) -> str:
        return f"GANView({self.plan!r})"


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> GAN:
    return GAN(backbone, opt.n_bands, opt.input_size, getattr(args, "gan_z", DEFAULT_Z), fm_weight=0.0, adv_weight=1.0)


def make_transform(args: argparse.Namespace, opt) -> GANView:
    """Plan D (crop, rotation + flip) at ``opt.input_size``; also checks the size suits the generator."""
    generator_plan(opt.input_size)
    return GANView(build_plan(PLAN, opt.input_size, opt.mean, opt.std, opt.rgb_index))


def build_optimizer(args: argparse.Namespace, model: GAN, lr: float) -> torch.optim.Adam:
    """Adam, betas (0.5, 0.999), weight decay ``--wd``, two groups: discriminator and generator.

    The discriminator group (head and backbone) runs at ``lr``, the generator at
    ``lr * --gan-g-lr-scale``; each group's ``lr_scale`` key holds its factor, so the
    engine's schedule (group lr = schedule lr x lr_scale) keeps the ratio.
    """
    scale = float(getattr(args, "gan_g_lr_scale", DEFAULT_G_LR_SCALE))
    groups = [   # the discriminator first: the engine logs the first group's lr
        {"params": [p for p in model.discriminator.parameters() if p.requires_grad],
         "lr": lr, "lr_scale": 1.0, "name": "discriminator"},
        {"params": [p for p in model.generator.parameters() if p.requires_grad],
         "lr": lr * scale, "lr_scale": scale, "name": "generator"},
    ]
    return torch.optim.Adam(groups, lr=lr, betas=BETAS, weight_decay=float(getattr(args, "wd", 0.0)))
