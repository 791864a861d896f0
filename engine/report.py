"""The result of one evaluation: printed metrics, per-image predictions, and one row of the results table."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from datasets.index import Sample
from engine import provenance
from engine.classifier import TRAIN_PLAN
from engine.evaljob import EvalJob
from engine.identity import TRAINING_FLAGS, pretrain_values
from engine.metrics import classification_metrics, format_confusion, save_confusion_png
from engine.results import append_result, code_version, save_predictions

log = logging.getLogger(__name__)


def report(y_true: np.ndarray, y_pred: np.ndarray, job: EvalJob, ts: float, seed: int,
           n_train: int | str, n_test: int, epochs: int, seconds: float, hos: str, probe: str, *,
           eval_set: list[Sample] | None = None, probe_param: str = "", select_on: str = "",
           selection_labels: str = "") -> dict:
    """Print the metrics, save the per-image predictions and append one row to the results table.

    ``eval_set`` lists the images ``y_true``/``y_pred`` belong to, in order (default: the
    test split). Probes pass what they chose and on which labels: ``probe_param`` (e.g.
    ``C=0.1``), ``select_on`` (``shots`` or ``val``) and ``selection_labels`` (how many
    labels the choice read).
    """
    opt = job.opt
    samples = job.index.test if eval_set is None else eval_set
    if not (len(samples) == len(y_true) == len(y_pred) == n_test):
        raise RuntimeError(f"report: {len(samples)} images, {len(y_true)} labels, {len(y_pred)} predictions, "
                           f"n_test {n_test}")
    raw = classification_metrics(y_true, y_pred, opt.num_classes, opt.classes)
    m = {"OA": 100 * raw["OA"], "AA": 100 * raw["AA"], "kappa": raw["kappa"], "macro_F1": 100 * raw["macro_f1"],
         "per_class_acc": [100 * a for a in raw["per_class_acc"]], "confusion": raw["confusion"]}
    log.info("%s ts=%g seed=%d %s: OA %.2f  AA %.2f  kappa %.4f  macro-F1 %.2f  (%s train / %d test)",
             opt.name, ts, seed, probe or f"hos {hos}", m["OA"], m["AA"], m["kappa"], m["macro_F1"], n_train, n_test)
    log.info("per-class accuracy: %s", ", ".join(f"{c} {a:.1f}" for c, a in zip(opt.classes, m["per_class_acc"])))
    log.info("confusion matrix (rows true, columns predicted):\n%s", format_confusion(m["confusion"], opt.classes))
    predictions = save_predictions(
        job.results, f"{opt.name}_{job.mode.code}_{probe or 'hos' + hos}_ts{ts:g}_s{seed}",
        [Path(s.path).relative_to(opt.root).as_posix() for s in samples],
        [opt.classes[int(t)] for t in y_true], [opt.classes[int(p)] for p in y_pred])
    trained = job.mode.job in ("train", "finetune") and not probe
    meta = job.init_meta
    if job.mode.job == "train":
        pretrain_datasets, selected_by = ("imagenet" if job.imagenet else ""), ""
    else:
        pretrain_datasets = provenance.pretrain_datasets(meta)
        selected_by = str(meta.get("selected_by") or ("" if job.init_epoch == "" else "epoch"))
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "code_version": code_version(), "ds": opt.name,
           "split_version": getattr(job.index, "split_version", "unknown"),
           "ts": ts, "seed": seed, "mode": job.mode.code, "netnum": job.netnum, "pretext": job.pretext,
           "pretrain_expnum": job.init_expnum if job.mode.job != "train" else ("imagenet" if job.imagenet else "random"),
           "pretrain_epoch": job.init_epoch, "pretrain_datasets": pretrain_datasets, "ckpt_selected_by": selected_by,
           "hos": hos, "probe": probe, "probe_param": probe_param, "select_on": select_on,
           "selection_labels": selection_labels,
           "bn_stats": bn_stats_of(job, trained), "dtype": opt.dtype, "bands": " ".join(opt.bands),
           "input_size": opt.input_size, "tta": int(job.tta),
           "bs": job.bs if trained else "", "optimizer": job.optim.name if trained else "",
           "lr": job.optim.lr if trained else "", "wd": job.optim.wd if trained else "", "epochs": epochs,
           "aug": TRAIN_PLAN if trained else "", "allow_overlap": int(job.allow_overlap),
           "OA": round(m["OA"], 4), "AA": round(m["AA"], 4), "kappa": round(m["kappa"], 5),
           "macro_F1": round(m["macro_F1"], 4), "n_train": n_train, "n_test": n_test,
           "seconds": round(seconds, 1), "per_class": json.dumps([round(a, 2) for a in m["per_class_acc"]]),
           "predictions": predictions}
    if job.mode.job != "train":
        row.update(pretrain_values(meta))                     # how the backbone was pretrained (its meta["args"])
    elif not job.imagenet and job.init_seed is not None:      # random init with --init-seed: the level
        row["pretrain_seed"] = job.init_seed
    for column, value in job.flags.items():                   # every other identity flag (engine/identity.py)
        row.setdefault(column, value if trained or column not in TRAINING_FLAGS else "")
    append_result(job.results, row)
    if job.vis:
        png = job.results.parent / "figures" / f"confusion_{opt.name}_{job.mode.code}_{probe or 'hos' + hos}_ts{ts:g}_s{seed}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        save_confusion_png(m["confusion"], opt.classes, png)
    return m


def bn_stats_of(job: EvalJob, trained: bool) -> str:
    """The row's ``bn_stats``: the policy of a frozen backbone (probes, --hos 9), ``fine-tuned`` when
    training changed the statistics, ``as-saved`` for a saved classifier scored by --mode 2x/3x."""
    if job.mode.job in ("val", "test"):
        return "as-saved"
    if trained and job.hos != 9:
        return "fine-tuned"
    return job.bn_stats

