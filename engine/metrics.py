"""Scene-classification metrics, confusion tables and mean +- std over seeds.

The formulas are written out with numpy (tests check them against scikit-learn), so
what each number means is visible here.  Accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``num_classes x num_classes`` counts; row = true class, column = predicted class."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes}): {arr.min()}..{arr.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict:
    """OA, AA, Cohen's kappa, macro-F1, per-class accuracy and the confusion matrix.

    - ``OA``: correct / all;
    - ``AA``: mean per-class recall over the classes present in ``y_true`` (balanced
      accuracy; a class with no test image has no recall and is left out);
    - ``kappa``: ``(p_o - p_e) / (1 - p_e)`` with ``p_e = sum_k rows_k * cols_k / n^2``
      (NaN when ``p_e = 1``, i.e. one class only, as scikit-learn);
    - ``macro_f1``: mean of ``2 TP / (2 TP + FP + FN)`` over the classes present in
      ``y_true`` or ``y_pred`` (scikit-learn's default label set);
    - ``per_class_acc``: recall of each class, NaN for a class absent from ``y_true``;
    - ``confusion``: counts, rows = true class (a list of lists, JSON-ready).
    """
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    conf = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    n = conf.sum()
    if n == 0:
        raise ValueError("no predictions to score")
    tp = np.diag(conf)
    rows, cols = conf.sum(axis=1), conf.sum(axis=0)
    present = rows > 0
    recall = np.full(num_classes, np.nan)
    recall[present] = tp[present] / rows[present]
    oa = tp.sum() / n
    pe = float((rows * cols).sum() / n**2)
    kappa = (oa - pe) / (1.0 - pe) if pe < 1.0 else math.nan
    f1_denom = rows + cols
    seen = f1_denom > 0
    f1 = np.zeros(num_classes)
    f1[seen] = 2 * tp[seen] / f1_denom[seen]
    return {
        "OA": float(oa),
        "AA": float(recall[present].mean()),
        "kappa": float(kappa),
        "macro_f1": float(f1[seen].mean()),
        "per_class_acc": [float(r) for r in recall],
        "per_class_f1": [float(v) if s else math.nan for v, s in zip(f1, seen)],
        "confusion": conf.astype(np.int64).tolist(),
        "class_names": list(class_names) if class_names is not None else [str(k) for k in range(num_classes)],
        "n": int(n),
    }


def format_confusion(conf: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str]) -> str:
    """Aligned text table of a confusion matrix for logs.

    Rows are true classes, labelled ``index name``; columns are predicted classes,
    labelled by index only so a 45-class table stays readable; the last column is the
    class's recall in percent.
    """
    c = np.asarray(conf, dtype=np.int64)
    k = c.shape[0]
    if c.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion of shape {c.shape} does not match {len(class_names)} class names")
    cell = max(len(str(int(c.max()))) if c.size else 1, len(str(k - 1)))
    labels = [f"{i} {name}" for i, name in enumerate(class_names)]
    head = max([len("true \\ pred")] + [len(s) for s in labels])
    lines = ["true \\ pred".ljust(head) + " " + " ".join(str(j).rjust(cell) for j in range(k)) + " recall%"]
    for i, label in enumerate(labels):
        total = c[i].sum()
        recall = f"{100.0 * c[i, i] / total:7.2f}" if total else "      -"
        lines.append(label.ljust(head) + " " + " ".join(str(int(v)).rjust(cell) for v in c[i]) + " " + recall)
    return "\n".join(lines)


def save_confusion_png(
    conf: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Write the row-normalised confusion matrix as an annotated heat map (PNG).

    Rows are normalised so each true class reads as the fractions it was predicted
    as (the diagonal is the per-class accuracy), which keeps unbalanced test sets
    comparable; the diagonal and every non-zero cell are annotated.  Draws on
    matplotlib's Agg canvas directly, so no display and no global pyplot state are
    involved (matplotlib is imported here, only when a figure is asked for).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = np.asarray(conf, dtype=np.float64)
    k = c.shape[0]
    rows = c.sum(axis=1, keepdims=True)
    norm = np.divide(c, rows, out=np.zeros_like(c), where=rows > 0)
    side = max(4.0, 0.35 * k + 2.0)
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, rotation=90, fontsize=max(4, min(9, 250 // max(k, 1))))
    ax.set_yticklabels(class_names, fontsize=max(4, min(9, 250 // max(k, 1))))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    size = max(3, min(9, 180 // max(k, 1)))
    for i in range(k):
        for j in range(k):
            if norm[i, j] > 0 or i == j:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=size,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    log.debug("wrote confusion matrix %s", path)
    return path


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of repeated runs; std 0 for one run."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("summarize needs at least one value")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt_mean_std(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    """``'mean +- std'`` of repeated runs, e.g. ``fmt_mean_std(oas, scale=100)`` -> ``'78.80 +- 1.23'``."""
    mean, std = summarize([x * scale for x in values])
    return f"{mean:.{digits}f} +- {std:.{digits}f}"
