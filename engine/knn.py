"""Frozen-feature tools: feature extraction and weighted kNN classification.

Used every epoch as the pretraining monitor (k=20, cosine similarity, weights
exp(sim / 0.07) as in Wu et al. 2018 / DINO) and by main_cls.py ``--probe knn``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader, device: torch.device,
                     amp: bool = False, channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """Pooled backbone features (float32, on CPU) and labels; BatchNorm in eval mode."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for x, y, _ in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f = backbone(x)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_predict(train_f: Tensor, train_y: Tensor, test_f: Tensor, num_classes: int,
                k: int = 20, t: float = 0.07, chunk: int = 1024) -> Tensor:
    """Weighted kNN on cosine similarity; returns predicted labels of ``test_f``."""
    train_f = nn.functional.normalize(train_f.float(), dim=1)
    test_f = nn.functional.normalize(test_f.float(), dim=1)
    k = min(k, train_f.shape[0])
    preds = []
    for i in range(0, test_f.shape[0], chunk):
        sim = test_f[i:i + chunk] @ train_f.T
        w, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_y[idx], (w / t).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


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
