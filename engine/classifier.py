"""The classifier of main_cls.py: a backbone with its weights (random, ImageNet, pretrained,
published, or a saved classifier's) and a linear head, and what each protocol trains of it."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from config.codes import decode_netnum
from config.errors import UserError
from datasets.folder import make_dataset
from datasets.index import Sample
from datasets.plans import plain
from datasets.transforms import Normalize
from engine import checkpoint as ckpt
from engine.evaljob import EvalJob
from engine.lr_decay import param_groups_lrd
from engine.runtime import move_to
from engine.labels import checkpoint_choice
from models import build_model, pretrained
from models.backbones import SMALL_STEMS

log = logging.getLogger(__name__)
TRAIN_PLAN = "D"   # fine-tuning augmentation: random resized crop + 90-degree rotations/flips


def build_classifier(job: EvalJob) -> nn.Module:
    """The job's classifier: backbone (random, ImageNet, pretrained or a saved classifier's) + linear head."""
    opt = job.opt
    imagenet = job.imagenet
    model = build_model(job.netnum, opt.n_bands, opt.num_classes, imagenet, opt.rgb_index,
                        weights=job.weights if imagenet else None, input_size=opt.input_size,
                        drop_path=job.drop_path, band_groups=job.init_meta.get("band_groups"), bands=opt.bands)
    norm = Normalize(opt.mean, opt.std)           # the pipeline's statistics, std floor included
    if imagenet and opt.rgb_index is not None and model.backbone.arch not in SMALL_STEMS:
        targets = pretrained.imagenet_targets(opt.bands, opt.rgb_index, opt.mean,
                                              getattr(model.backbone, "imagenet_stats", None))
        model.backbone.set_input_adapter(pretrained.adapter_for(targets, norm.mean, norm.std))
    if job.mode.job == "finetune":
        foreign = pretrained.recognise(ckpt.read_checkpoint(job.init, weights_only=True), job.init)
        if foreign is not None:
            pretrained.load_foreign(foreign, model.backbone, opt.bands)
            model.backbone.set_input_adapter(
                pretrained.adapter_for(pretrained.ssl4eo_targets(opt.bands), norm.mean, norm.std))
        else:
            meta = ckpt.load_backbone(job.init, model.backbone)
            log.info("backbone from %s (pretext %s, epoch %s, dataset %s)", job.init, meta.get("pretext"),
                     meta.get("epoch"), meta.get("dataset"))
    if imagenet and job.weights is not None:
        check_finite_weights(model, f"--weights {job.weights}")
    elif job.mode.job == "finetune":
        check_finite_weights(model, f"checkpoint {job.init}")
    classifier = job.init if job.mode.job in ("val", "test") else job.resume
    if classifier is not None:
        state = ckpt.read_checkpoint(classifier, weights_only=False)
        if "model" not in state:
            raise UserError(f"{classifier} holds a backbone, not a trained classifier; --mode 2x/3x and --resume "
                            "take checkpoints written by --mode 1x/4x")
        checkpoint_choice(state.get("meta") or {}, classifier)     # its backbone not chosen on TEST labels
        saved_net = str((state.get("meta") or {}).get("netnum", job.netnum))
        if saved_net != job.netnum:          # e.g. 000000 (resnet18_small) vs 090000 (resnet18): same layer names
            raise UserError(f"{classifier} is a classifier of --netnum {saved_net} ({decode_netnum(saved_net).backbone}), "
                            f"not {job.netnum} ({decode_netnum(job.netnum).backbone}); pass --netnum {saved_net}")
        if "backbone.input_adapter.scale" in state["model"] and model.backbone.input_adapter is None:
            model.backbone.set_input_adapter(pretrained.InputAdapter.identity(opt.n_bands))  # filled by the load
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise UserError(f"{classifier} does not fit --netnum {job.netnum} with {opt.n_bands} bands and "
                            f"{opt.num_classes} classes ({str(err).splitlines()[0]})") from None
        check_finite_weights(model, f"classifier {classifier}")
        if job.resume is not None:
            log.info("classifier weights from %s; training continues at epoch %d", classifier, job.sepoch + 1)
    return model


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Weights with NaN or infinite values give NaN predictions (scored as class 0): refused, naming the file."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point()        # an input adapter's clip
           and (torch.isnan(v).any() if ".input_adapter." in f".{k}" else not torch.isfinite(v).all())]  # bounds: +-inf
    if bad:
        raise UserError(f"{source} holds NaN or infinite values ({len(bad)} tensor(s), e.g. {bad[0]}): the file is "
                        "damaged or the run that wrote it diverged; use another file")


def classifier_origin(meta: dict) -> dict:
    """What a saved classifier keeps of its backbone checkpoint's meta, so rows of --mode 2x/3x name the
    pretraining (its code version and settings) as the 1x/4x row did."""
    keep = ("code_version", "args", "epoch", "steps", "expnum", "pretext", "dataset")
    return {k: meta[k] for k in keep if k in meta}


def param_groups(model: nn.Module, hos: int, layer_decay: float | None = None) -> list[dict]:
    """Trainable parameter groups of a protocol; ``lr_scale`` is applied by the schedule.

    ``layer_decay`` (ViTs): MAE's layer-wise lr decay groups (engine/lr_decay.py) for the backbone,
    times 0.2 with ``--hos 1``, and the head at scale 1.
    """
    head = list(model.head.parameters())
    if hos == 9:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return [{"params": head, "lr_scale": 1.0}]
    if layer_decay is not None:
        return param_groups_lrd(model.backbone, layer_decay, 0.2 if hos == 1 else 1.0, model.head)
    back = [p for p in model.backbone.parameters()]
    return [{"params": back, "lr_scale": 0.2 if hos == 1 else 1.0}, {"params": head, "lr_scale": 1.0}]


def check_frozen(backbone: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Linear probe guard: every backbone parameter AND buffer must be unchanged."""
    changed = [k for k, v in backbone.state_dict().items() if not torch.equal(v.detach().cpu(), before[k].cpu())]
    if changed:
        raise RuntimeError(f"linear probe (--hos 9) changed {len(changed)} backbone tensor(s), e.g. "
                           f"{', '.join(changed[:3])}: the backbone is not frozen")
    log.info("linear probe check passed: no backbone tensor changed in epoch 1")


BN_STATS_IMAGES = 2000      # at most this many training images re-estimate the BN statistics (a seeded subset)


@torch.no_grad()
def reestimate_bn(backbone: nn.Module, samples: Sequence[Sample], opt, device: torch.device, workers: int = 0,
                  batch: int = 128, channels_last: bool = False) -> int:
    """``--bn-stats reestimated``: every BatchNorm's running mean/var recomputed on plain training views.

    Running statistics are reset and re-accumulated (momentum None: the plain average over batches)
    from the plain view (resize + normalise, no augmentation) of up to :data:`BN_STATS_IMAGES`
    training images (a subset drawn with a fixed seed, so every evaluation of a dataset uses the
    same images), with only the BN layers in train mode; the weights do not change. The images are
    shuffled with a fixed seed and cut into batches of equal size up to one image (at most ``batch``),
    so every batch mixes the classes and weighs the same: the running mean is the mean over the
    images, the running variance the mean of the batches' variances ("precise BN"; it leaves out
    the small variance between shuffled batch means). A random-init backbone and a pretrained one
    then carry statistics of the same images under the same views, so their features compare like
    for like (the pretrained one otherwise carries statistics of augmented training views, the
    random one none). Labels are not read. Returns the number of images used (0: no BatchNorm).
    """
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        log.info("the backbone has no BatchNorm (a ViT normalises per token): --bn-stats reestimated changes nothing")
        return 0
    samples = list(samples)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(samples))[:BN_STATS_IMAGES]          # the same subset and order every time
    samples = [samples[i] for i in order]
    chunks = [c.tolist() for c in np.array_split(np.arange(len(samples)), -(-len(samples) // batch))]
    was = backbone.training
    saved = [m.momentum for m in bns]
    backbone.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                    # cumulative average over the batches
        m.train()
    ds = make_dataset(opt, samples, lambda o: plain(o.input_size, o.mean, o.std))
    for x, _, _ in DataLoader(ds, batch_sampler=chunks, num_workers=workers):
        backbone(move_to(x, device, channels_last))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    backbone.train(was)
    log.info("BatchNorm statistics re-estimated on the plain views of %d training images (%d batches of %d-%d)",
             len(samples), len(chunks), min(map(len, chunks)), max(map(len, chunks)))
    return len(samples)

