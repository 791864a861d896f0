"""Frozen-feature tools: feature extraction and kNN classification.

Used every epoch as the pretraining monitor (k=20, cosine similarity, weights
exp(sim / 0.07) as in Wu et al. 2018 / DINO) and by main_cls.py ``--probe knn``
(engine/probe.py), which also offers plain majority vote.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_indexed(backbone: nn.Module, loader: DataLoader, device: torch.device,
                    amp: bool = False, channels_last: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Pooled backbone features (float32, on CPU), labels, and each row's dataset index.

    The index is what the dataset returned with the image, so callers can pair a row with
    its file whatever order the loader used. BatchNorm runs in eval mode.
    """
    was_training = backbone.training
    backbone.eval()
    feats, labels, index = [], [], []
    for x, y, i in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f = backbone(x)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
        index.append(torch.as_tensor(i))
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels), torch.cat(index)


def extract_features(backbone: nn.Module, loader: DataLoader, device: torch.device,
                     amp: bool = False, channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """Pooled backbone features (float32, on CPU) and labels, in loader order."""
    feats, labels, _ = extract_indexed(backbone, loader, device, amp, channels_last)
    return feats, labels


def knn_predict(train_f: Tensor, train_y: Tensor, test_f: Tensor, num_classes: int,
                k: int = 20, t: float = 0.07, chunk: int = 1024, vote: str = "weighted") -> Tensor:
    """kNN on cosine similarity; returns predicted labels of ``test_f``.

    ``vote="weighted"``: each of the k nearest training features votes exp(sim / t) for its
    class. ``vote="majority"``: one vote each; a tie between classes goes to the one whose
    tied neighbours have the larger summed similarity. k above the number of training
    features uses all of them (engine/probe.py warns and records it).
    """
    if vote not in ("weighted", "majority"):
        raise ValueError(f"vote must be 'weighted' or 'majority', not {vote!r}")
    train_f = nn.functional.normalize(train_f.float(), dim=1)
    test_f = nn.functional.normalize(test_f.float(), dim=1)
    train_y = train_y.long()
    k = min(k, train_f.shape[0])
    preds = []
    for i in range(0, test_f.shape[0], chunk):
        sim = test_f[i:i + chunk] @ train_f.T
        w, idx = sim.topk(k, dim=1)
        if vote == "weighted":
            votes = torch.zeros(sim.shape[0], num_classes).scatter_add_(1, train_y[idx], (w / t).exp())
        else:
            # counts dominate: a summed similarity lies in [-k, k], one more vote is worth 2k + 1
            count = torch.zeros(sim.shape[0], num_classes, dtype=torch.float64)
            count.scatter_add_(1, train_y[idx], torch.ones_like(w, dtype=torch.float64))
            simsum = torch.zeros_like(count).scatter_add_(1, train_y[idx], w.double())
            votes = count * (2 * k + 1) + simsum
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_loo_accuracy(feats: Tensor, labels: Tensor, num_classes: int, k: int = 20, t: float = 0.07) -> float:
    """Leave-one-out weighted kNN top-1 (%) within one labelled set: each image votes among the others
    (cosine similarity, votes exp(sim / t)); k is clamped to the set's size minus one."""
    f = nn.functional.normalize(feats.float(), dim=1)
    labels = labels.long()
    n = f.shape[0]
    if n < 2:
        raise ValueError("a leave-one-out kNN needs at least 2 images")
    sim = f @ f.T
    sim.fill_diagonal_(-float("inf"))                    # an image is never its own neighbour
    w, idx = sim.topk(min(k, n - 1), dim=1)
    votes = torch.zeros(n, num_classes).scatter_add_(1, labels[idx], (w / t).exp())
    return float((votes.argmax(1) == labels).float().mean().item() * 100.0)


def knn_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor,
                 num_classes: int, k: int = 20) -> float:
    """Top-1 accuracy (%) of :func:`knn_predict`."""
    pred = knn_predict(train_f, train_y, test_f, num_classes, k)
    return float((pred == test_y).float().mean().item() * 100.0)


def balanced_subsample(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``per_class`` items of every class (keeps the monitor cheap)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(idx if len(idx) <= per_class else np.sort(rng.choice(idx, per_class, replace=False)))
    return np.concatenate(out)
