"""Frozen-feature probes of main_cls.py (``--probe logreg|knn``): features once, a classifier per draw.

A sweep (``--ts 5,20 --nseeds 5``) takes the backbone's pooled features of the training split
(few-shot pool and validation slice) and of the test split from engine/features.py (extracted
once, cached), then fits one probe per (ts, seed) draw and appends one result row each. The
logistic-regression solver is engine/logreg.py.

kNN: cosine similarity to the shots; ``--knn-vote weighted`` (default; votes exp(sim / 0.07),
Wu et al. 2018) or ``majority`` (one vote per neighbour, ties broken by the class's summed
similarity). When ``--knn-k`` exceeds the number of shots, k is clamped to it with a warning
and the row's ``probe_param`` records the k used: a sweep over ``--ts`` keeps its smallest
draw instead of failing, and the row never claims a k it did not use.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from datasets.index import few_shot
from engine import labels
from engine.evaljob import EvalJob
from engine.features import probe_features
from engine.knn import knn_predict
from engine.logreg import logreg_probe
from engine.report import report
from engine.runtime import init_runtime

log = logging.getLogger(__name__)


def knn_probe(x_shots: np.ndarray, y_shots: np.ndarray, x_test: np.ndarray, num_classes: int, k: int,
              vote: str) -> tuple[np.ndarray, int]:
    """kNN predictions and the k used (clamped to the number of shots, with a warning)."""
    used = min(k, len(y_shots))
    if used < k:
        log.warning("--knn-k %d exceeds the %d shots: using k = %d (every shot votes%s)", k, len(y_shots), used,
                    "; majority vote then picks the class with most shots, ties by summed similarity"
                    if vote == "majority" else ", weighted by similarity")
    pred = knn_predict(torch.from_numpy(x_shots), torch.from_numpy(y_shots), torch.from_numpy(x_test),
                       num_classes, k=used, vote=vote)
    return pred.numpy(), used


def run_probe(job: EvalJob) -> None:
    """``--probe``: features once, then one classifier and one result row per (ts, seed)."""
    rt = init_runtime(None, None, job.procs)
    try:
        table = probe_features(job, rt)
    finally:
        rt.close()
    index, opt = job.index, job.opt
    pool = labels.fewshot_pool(index)              # the label rule (engine/labels.py)
    test = labels.final_eval_set(index)
    x_test, y_test = table.take(test)
    x_val = y_val = None
    if job.probe == "logreg" and job.select_on == "val":
        x_val, y_val = table.take(labels.selection_set(index))
    for ts in job.ts_list:
        for seed in job.seeds:
            t0 = time.time()
            shots = few_shot(pool, ts, seed, opt.classes)
            x, y = table.take(shots)
            if job.probe == "logreg":
                res = logreg_probe(x, y, x_test, seed, job.select_on, x_val, y_val)
                pred = res.pred
                extra = {"probe_param": f"C={res.C:g}", "select_on": res.select_on,
                         "selection_labels": f"{res.select_on}:{res.selection_labels}"}
                log.info("logistic regression: C = %g chosen on %s (%s)", res.C, extra["selection_labels"],
                         ", ".join(f"C={c:g} {100 * s:.1f}" for c, s in res.scores.items()))
            else:
                pred, k = knn_probe(x, y, x_test, opt.num_classes, job.knn_k, job.knn_vote)
                extra = {"probe_param": f"k={k},{job.knn_vote}", "select_on": "", "selection_labels": ""}
            report(y_test, pred, job, ts, seed, len(shots), len(y_test), 0, time.time() - t0,
                   hos="", probe=job.probe, eval_set=test, **extra)
