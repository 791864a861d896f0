"""GAN pretraining with feature matching, mode 991 (MARTA-GAN, Lin et al., GRSL 2017).

Everything as mode 990 (:mod:`models.pretext.gan`: generator, discriminator = backbone +
real/fake head, one backward with the discriminator's parameters detached in the
generator's term) except the generator's loss. Instead of fooling the head, the
generator matches the discriminator's multi-level features of real images, as
MARTA-GAN does with its multi-feature layer:

    f(x) = [GAP(stage_{L-2}(x)), GAP(stage_{L-1}(x)), GAP(stage_L(x))]      (the last three stages)
    L_G  = mean_k (mean_i f(x_i)_k - mean_i f(G(z_i))_k)^2  +  w * BCE(D(G(z)), 1)

with the real features detached and ``w = --gan-fm-bce`` (0 by default: pure feature
matching). The discriminator's loss is unchanged.
"""
from __future__ import annotations

import argparse

from torch import nn

from config.errors import UserError
from models.pretext import gan
from models.pretext.gan import GAN

LOSSES = ("FeatureMatchingLoss", "feature_matching")
RECIPES, SOURCES = gan.RECIPES, gan.SOURCES       # the same generator, discriminator and Adam
NEEDS_CONV_STAGES = True     # engine.guards.check_pretext_backbone refuses ViTs: as mode 990
DEFAULT_BCE_WEIGHT = 0.0

make_transform = gan.make_transform          # the same real views as mode 990
build_optimizer = gan.build_optimizer        # the same two Adam groups
vis_rows = gan.vis_rows                      # --vis: real images and samples from fixed noise
VIS_COLUMNS = gan.VIS_COLUMNS


def add_args(group: argparse._ArgumentGroup) -> None:
    """``--gan-fm-bce``, then the flags shared with mode 990.

    Its own flag comes first: the engine registers the shared flags with mode 990 and
    stops adding a module's flags at the first one already registered.
    """
    group.add_argument("--gan-fm-bce", dest="gan_fm_bce", type=float, default=DEFAULT_BCE_WEIGHT,
                       help="mode 991: weight of the non-saturating BCE term added to the generator's "
                            "feature-matching loss (0: feature matching only)")
    gan.add_args(group)


def check_args(args: argparse.Namespace) -> None:
    gan.check_args(args)
    w = getattr(args, "gan_fm_bce", DEFAULT_BCE_WEIGHT)
    if not w >= 0:
        raise UserError(f"--gan-fm-bce {w} must be >= 0; 0 is pure feature matching, 1 adds the usual GAN term")


def build(args: argparse.Namespace, opt, backbone: nn.Module) -> GAN:
    return GAN(backbone, opt.n_bands, opt.input_size, getattr(args, "gan_z", gan.DEFAULT_Z),
               fm_weight=1.0, adv_weight=getattr(args, "gan_fm_bce", DEFAULT_BCE_WEIGHT))
