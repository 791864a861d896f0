"""engine/probe.py: the kNN probe against a brute-force reference, and k clamped to the shots."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from engine import probe
from engine.knn import knn_predict


def brute_force_knn(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, num_classes: int, k: int,
                    vote: str, t: float = 0.07) -> tuple[list[int], int]:
    """One pair at a time: cosine, sort, vote; majority ties to the larger summed similarity."""
    preds, ties = [], 0
    for q in test:
        sims = []
        for j, r in enumerate(train):
            dot = sum(float(a) * float(b) for a, b in zip(q, r))
            sims.append((dot / (math.sqrt(sum(float(a) ** 2 for a in q)) * math.sqrt(sum(float(b) ** 2 for b in r))), j))
        near = sorted(sims, reverse=True)[:k]
        if vote == "weighted":
            score = [0.0] * num_classes
            for s, j in near:
                score[train_y[j]] += math.exp(s / t)
            preds.append(max(range(num_classes), key=lambda c: score[c]))
        else:
            count, simsum = [0] * num_classes, [0.0] * num_classes
            for s, j in near:
                count[train_y[j]] += 1
                simsum[train_y[j]] += s
            top = max(count)
            tied = [c for c in range(num_classes) if count[c] == top]
            ties += len(tied) > 1
            preds.append(max(tied, key=lambda c: simsum[c]))
    return preds, ties


@pytest.mark.parametrize("vote", ["weighted", "majority"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_brute_force(vote, k):
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(3, 6))
    ytr = np.repeat(np.arange(3), 5)
    tr = centres[ytr] + 0.9 * rng.normal(size=(15, 6))
    te = centres[rng.integers(0, 3, 40)] + 0.9 * rng.normal(size=(40, 6))
    got = knn_predict(torch.from_numpy(tr), torch.from_numpy(ytr), torch.from_numpy(te), 3, k=k, vote=vote, chunk=16)
    want, ties = brute_force_knn(tr, ytr, te, 3, k, vote)
    assert got.tolist() == want
    if vote == "majority" and k == 4:
        assert ties > 0                                  # the tie rule was exercised


def test_knn_votes_differ_where_they_should():
    # two far neighbours of class 1 outvote one close neighbour of class 0 only under majority vote
    tr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    ytr = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.3]])
    assert knn_predict(tr, ytr, q, 2, k=3, vote="weighted").item() == 0
    assert knn_predict(tr, ytr, q, 2, k=3, vote="majority").item() == 1


def test_knn_k_above_the_shots_is_clamped_with_a_warning(caplog):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 4)).astype(np.float32), np.repeat(np.arange(5), 2)
    with caplog.at_level(logging.WARNING):
        pred, k = probe.knn_probe(x, y, x, 5, k=20, vote="weighted")
    assert k == 10 and "--knn-k 20 exceeds the 10 shots" in caplog.text
    ref = knn_predict(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x), 5, k=10)
    assert (pred == ref.numpy()).all()
