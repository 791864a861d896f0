"""The flags of main_cls_ss_train.py and the parsers of their values; engine/plan.py resolves them.

Every pretext module may add its own flags (``add_args``); a flag shared by several pretexts is
registered once, and the plan refuses a pretext's flag given to another mode.
"""
from __future__ import annotations

import argparse
import math
import re

import models.pretext as pretexts
from config.errors import UserError
from datasets.views import parse_scale
from engine import recipes


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of main_cls_ss_train.py on top of engine.cli.base_parser."""
    g = p.add_argument_group("pretraining")
    g.add_argument("--recipe", type=recipes.recipe_arg, default=None,
                   help="paper: the method's own settings; small: batches <= 256 and a few thousand steps "
                        "(docs/recipes.md). It fills every optimiser, schedule, head and view setting you do not "
                        f"give (default {recipes.DEFAULT_RECIPE})")
    g.add_argument("--crop-scale", "--crop_scale", dest="crop_scale", type=_crop_scale, default=None,
                   help="LO,HI: the --aug_p plan's crop becomes a random resized crop of that area range applied to "
                        "EVERY augmented view (e.g. 0.08,1); 'plan': the plan's own crop (default: the --recipe's, "
                        "or 'plan' when --aug/--aug_p are given)")
    g.add_argument("--exclude-bias-norm", dest="exclude_bias_norm", action=argparse.BooleanOptionalAction,
                   default=None, help="biases, norm parameters and no_weight_decay() names get no weight decay and no "
                                      "LARS adaptation, whatever the optimiser (default: on, off where the --recipe's "
                                      "paper decays everything)")
    g.add_argument("--bias-lr-scale", dest="bias_lr_scale", type=float, default=None,
                   help="lr factor of the bias/norm group (default 1, or the --recipe's: Barlow Twins 0.0048/0.2 = 0.024)")
    g.add_argument("--freeze-patch-embed", dest="freeze_patch_embed", action=argparse.BooleanOptionalAction,
                   default=None, help="ViT codes: keep the patch embedding at its initial (random) weights, MoCo v3's "
                                      "random patch projection (default: the --recipe's, on for 910-915 on ViTs)")
    g.add_argument("--wd-end", dest="wd_end", type=float, default=None,
                   help="weight decay at the end of a cosine from --wd over the whole run, on every group that is "
                        "decayed (DINO's --weight_decay_end; default: --wd throughout, or the --recipe's: 0.4 for "
                        "DINO on a ViT)")
    g.add_argument("--clip-grad", dest="clip_grad", type=float, default=None,
                   help="cap each parameter tensor's gradient norm at this value after backward, as DINO's "
                        "utils.clip_gradients (0: off; default: the --recipe's, 3 for DINO's paper recipe, else off)")
    g.add_argument("--aug", type=int, help="SimCLR: how the two views are made (1-5, see README; default 5)")
    g.add_argument("--aug_p", "--aug-p", dest="aug_p", help="SimCLR: augmentation plan of an augmented view (A-E, S1-S6; default S5)")
    g.add_argument("--loss", help="loss of the pretext (default: the pretext's own, e.g. NTXentLoss for 910)")
    g.add_argument("--feature_dim", "--feature-dim", dest="feature_dim", type=int, default=None,
                   help="projection (or DINO prototype) output size of every method with a projector "
                        "(default: the method's own, e.g. 128 for 910/911, 8192 for 914/915)")
    g.add_argument("--tau", type=float, default=None,
                   help="temperature of every method that has one (default: the method's own: 0.5 for 910, "
                        "0.2 for 911, the student's 0.1 for 916)")
    g.add_argument("--ckpt_freq", "--ckpt-freq", dest="ckpt_freq", type=int, default=0,
                   help="every N epochs save the backbone <netnum>_<expnum>_<epoch>.pth and the full state for --resume (0: only the final backbone)")
    g.add_argument("--no-sync-bn", dest="no_sync_bn", action="store_true",
                   help="keep BatchNorm per process on GPUs (default there with several processes for pretexts whose "
                        "loss couples a batch's images, e.g. 910/920: SyncBatchNorm)")
    g.add_argument("--gpu-aug", dest="gpu_aug", action=argparse.BooleanOptionalAction, default=None,
                   help="make the --aug/--aug_p views of each batch on the device (datasets/gpu_aug.py), the workers "
                        "only decode; default: on with a GPU for the pretexts that use --aug (needs images of one size)")
    g.add_argument("--cache-size", dest="cache_size", type=int, default=None,
                   help="with --pin-memory: cache every image resized to this side (e.g. the training resolution, "
                        "or more to keep random crops sharp) instead of at native resolution")
    g.add_argument("--knn-freq", dest="knn_freq", default="auto",
                   help="kNN monitor on the validation slice (leave-one-out: each slice image against the others): "
                        "auto (about 5%% of the training time: after epoch 1, "
                        "then as often as that budget allows, and after the last epoch), or every N epochs (0: off)")
    g.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="resolve and check everything (recipe, lr, data, iterations per epoch), print the plan as "
                        "JSON and exit without writing anything")
    g.add_argument("--lr-selection", dest="lr_selection", default=None,
                   help="how --lr was chosen, recorded in the checkpoint and every row built from it: "
                        "val-knn:LR1,LR2,LR3@STEPS (the validation-slice kNN accuracy after a STEPS-step run at each "
                        "grid value; --lr must be one of them), as scripts/experiments/methods.sh writes it; or recipe "
                        "(the recipe's own lr at this batch, not tuned: methods.sh GRID=none)")
    g.add_argument("--vis-every", dest="vis_every", type=int, default=None,
                   help="with --vis: a figure every N epochs, and after the first and the last (default: mepoch // 10)")
    g.add_argument("--vis-bands", dest="vis_bands", default=None,
                   help="with --vis: three band names shown as red, green, blue, e.g. B08,B04,B03 (false colour); "
                        "default: the dataset's true colour")
    owners: dict[str, set[str]] = {}     # flag dest -> pretexts that use it
    defaults: dict[str, object] = {}
    for module in pretexts.modules():
        if hasattr(module, "add_args"):       # a pretext's own flags live in its module
            name = module.__name__.rsplit(".", 1)[-1]
            probe = argparse.ArgumentParser(add_help=False)
            module.add_args(probe.add_argument_group())
            for a in probe._actions:
                owners.setdefault(a.dest, set()).add(name)
                defaults.setdefault(a.dest, a.default)
            module.add_args(_NewFlagsOnly(p.add_argument_group(f"pretext {name}"), p))
    p.set_defaults(_pretext_flags={k: (sorted(v), defaults[k]) for k, v in owners.items()})
    return p


def _crop_scale(text: str) -> list[float] | str:
    """``--crop-scale``: ``plan`` or an area range ``LO,HI``."""
    return "plan" if text == "plan" else parse_scale(text, "--crop-scale")


class _NewFlagsOnly:
    """An argument group that skips flags already registered by an earlier pretext (shared flags)."""

    def __init__(self, group: argparse._ArgumentGroup, parser: argparse.ArgumentParser) -> None:
        self.group, self.parser = group, parser

    def add_argument(self, *flags: str, **kwargs) -> argparse.Action | None:
        if any(f in self.parser._option_string_actions for f in flags):
            return None
        return self.group.add_argument(*flags, **kwargs)


def parse_knn_freq(text: str) -> int | str:
    """``--knn-freq``: ``auto``, or every N epochs (0: off)."""
    if str(text).lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise UserError(f"--knn-freq {text} must be >= 0 epochs (0: off) or auto; pass e.g. --knn-freq auto")
    return n


LR_SELECTION = re.compile(r"val-knn:(?P<grid>[0-9.eE+-]+(?:,[0-9.eE+-]+)+)@(?P<steps>[1-9][0-9]*)")


def check_lr_selection(text: str | None, lr: float, recipe_lr=None) -> None:
    """``--lr-selection val-knn:GRID@STEPS``: well formed, and ``--lr`` is one of the grid's values;
    ``--lr-selection recipe``: ``--lr`` is the recipe's own lr at this batch (``recipe_lr()``), not tuned."""
    if text is None:
        return
    if text == "recipe":
        own = recipe_lr() if recipe_lr is not None else lr
        if not math.isclose(lr, own, rel_tol=1e-6):
            raise UserError(f"--lr-selection recipe says --lr is the recipe's own, {own:g} at this batch, "
                            f"but --lr is {lr:g}; drop --lr or the selection")
        return
    m = LR_SELECTION.fullmatch(text)
    try:
        grid = [float(v) for v in m.group("grid").split(",")] if m else []
    except ValueError:
        grid = []
    if not grid:
        raise UserError(f"--lr-selection {text!r} is not val-knn:LR1,LR2,...@STEPS (e.g. val-knn:0.15,0.3,0.6@250) or recipe")
    if not any(math.isclose(lr, g, rel_tol=1e-6) for g in grid):
        raise UserError(f"--lr-selection {text} says the lr was chosen from {grid}, but --lr is {lr:g}; pass one of them")
