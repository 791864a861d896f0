"""What pretraining watches besides the loss: the kNN monitor on the validation slice, and --vis figures.

The monitor reads only the labels :func:`engine.labels.monitor_set` allows: the validation slice,
each image scored leave-one-out against the others; ``best`` checkpoints are chosen by it.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from datasets.folder import make_dataset
from datasets.index import Index
from datasets.plans import plain
from engine.knn import knn_loo_accuracy
from engine.labels import monitor_set
from engine.loaders import DeviceAugment
from engine.runtime import Runtime, move_to
from engine.vis import save_grid

log = logging.getLogger(__name__)

MONITOR_BUDGET = 0.05      # --knn-freq auto: the monitor's share of the training time


class WeightDrift:
    """How far the kept backbone has moved from where the run started: ``||W - W0|| / ||W0||`` over
    its weight tensors (convolutions and linear layers, ndim >= 2; BatchNorm excluded).

    A checkpoint whose convolutions moved by 0.1 % is random conv weights with data statistics,
    whatever its loss did; the epoch log's ``backbone_moved`` says so. ``W0`` travels in the
    training state, so a resumed run measures from the same start.
    """

    def __init__(self, backbone: nn.Module, start: dict[str, torch.Tensor] | None = None) -> None:
        self.start = start if start is not None else {
            k: p.detach().clone() for k, p in backbone.named_parameters() if p.ndim >= 2}

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> float:
        now = dict(backbone.named_parameters())
        diff = sum(float((now[k].float() - w.float()).square().sum()) for k, w in self.start.items())
        base = sum(float(w.float().square().sum()) for w in self.start.values())
        return math.sqrt(diff / max(base, 1e-30))

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.start.items()}


class KnnMonitor:
    """Weighted kNN accuracy (k=20, cosine) of backbone features on the VALIDATION slice, leave-one-out.

    The slice (:func:`engine.labels.monitor_set`, the only labels a monitor may read) is memory
    and queries at once: each image is classified by the others. It is decoded once and kept as
    the plain view at INPUT resolution (resized and normalised, float16: 2 bytes a value, e.g.
    0.3 MB a 224 px RGB image), so a monitor pass is forward passes only, with no decoding and
    no workers. With a few images per class (EuroSAT's 39-image slice: about 4) one image is a few
    points: read it as a trend, not a measurement.

    Cadence (``--knn-freq auto``, the default): after the first epoch, then every
    ``ceil(t_monitor / (0.05 * t_epoch))`` epochs (measured; the interval is re-derived
    after every pass), and always after the last epoch, so the monitor costs about 5 % of
    the training time or less. ``best`` is the best of the MONITORED epochs.
    """

    def __init__(self, opt: DatasetOpt, index: Index, rt: Runtime, workers: int = 0, freq: int | str = "auto"):
        images = monitor_set(index)
        if len(images) < 2:
            raise UserError(f"the kNN monitor scores the validation slice leave-one-out and split "
                            f"{index.split_version} has {len(images)} image in it; pretrain with --knn-freq 0")
        t = time.perf_counter()
        tf = lambda o: plain(o.input_size, o.mean, o.std)  # noqa: E731
        self.images, self.labels = _plain_views(make_dataset(opt, images, tf), workers)
        self.num_classes, self.rt = opt.num_classes, rt
        self.freq = freq
        self.next_due = None                  # auto: the next epoch to monitor (None: the first one)
        self.runs, self.seconds = 0, 0.0
        log.info("kNN monitor: the %d validation images, leave-one-out, cached at %d px (%.0f MiB, %.1f s)",
                 len(images), opt.input_size, self.images.nbytes / 2**20, time.perf_counter() - t)

    def due(self, done: int, last: int) -> bool:
        """Whether to run after epoch ``done`` (1-based) of ``last``."""
        if done == last:
            return True
        if self.freq == "auto":
            return self.next_due is None or done >= self.next_due
        return done % self.freq == 0

    def __call__(self, backbone: nn.Module, done: int, epoch_seconds: float) -> float:
        """kNN top-1 (%) of ``backbone``; with ``auto`` cadence, schedules the next pass."""
        t = time.perf_counter()
        acc = knn_loo_accuracy(_features(backbone, self.images, self.rt), self.labels, self.num_classes, k=20)
        spent = time.perf_counter() - t
        self.runs, self.seconds = self.runs + 1, self.seconds + spent
        if self.freq == "auto":
            self.next_due = done + auto_interval(spent, epoch_seconds)
        return acc


def auto_interval(monitor_seconds: float, epoch_seconds: float, budget: float = MONITOR_BUDGET) -> int:
    """Epochs between monitor passes so that a pass costs at most ``budget`` of the training time."""
    return max(1, math.ceil(monitor_seconds / (budget * max(epoch_seconds, 1e-9)) - 1e-9))


def _plain_views(dataset: Dataset, workers: int, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """All plain views of ``dataset`` in ONE preallocated float16 tensor (no list + stack: peak = the result)."""
    n = len(dataset)  # type: ignore[arg-type]
    out: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.long)
    for x, y, idx in DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False):
        if out is None:
            out = torch.empty((n, *x.shape[1:]), dtype=torch.float16)
        out[idx] = x.to(torch.float16)
        labels[idx] = torch.as_tensor(y)
    assert out is not None
    return out, labels


@torch.no_grad()
def _features(backbone: nn.Module, images: torch.Tensor, rt: Runtime, batch: int = 256) -> torch.Tensor:
    """Pooled float32 features of cached plain views (BatchNorm in eval mode), on the CPU."""
    was = backbone.training
    backbone.eval()
    feats = []
    for i in range(0, len(images), batch):
        x = move_to(images[i:i + batch], rt.device, rt.channels_last).float()
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            feats.append(backbone(x).float())
    backbone.train(was)
    return torch.cat(feats).cpu()


def save_vis(module, model: nn.Module, dataset, opt: DatasetOpt, path: Path, seed: int, rt: Runtime,
             n: int = 8, augment: DeviceAugment | None = None, bands: tuple[int, int, int] | None = None) -> None:
    """``--vis``: a PNG grid, one row per image, true colour for multispectral data (or the ``bands``
    positions shown as R, G, B: ``--vis-bands``).

    A pretext with ``vis_rows(model, views)`` shows what it learns (input, corrupted,
    reconstruction; GAN samples); otherwise the views themselves are shown.
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n].tolist()
    batch = default_collate([dataset[i][0] for i in idx])
    if augment is not None:                    # --gpu-aug: the dataset holds raw images
        batch = augment(batch.to(rt.device), 0)
    if hasattr(module, "vis_rows"):
        was = model.training
        model.eval()
        with torch.no_grad():
            rows = module.vis_rows(model, move_to(batch, rt.device))
        model.train(was)
    else:
        items = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        rows = []
        for j in range(len(idx)):
            row = []
            for v in items:                   # images; jigsaw tile stacks; labels are skipped
                if torch.is_tensor(v) and v.dim() == 4:
                    row.append(v[j])
                elif torch.is_tensor(v) and v.dim() == 5:
                    row.extend(v[j])
            rows.append(row)
    save_grid(rows, path, opt, getattr(module, "VIS_COLUMNS", None), bands)
    log.info("figure written to %s", path)
