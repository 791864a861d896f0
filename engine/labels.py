"""The label rule: which labels each part of the harness may read, written once.

Every dataset has one fixed split (datasets/index.py) into a training split, a fixed
validation slice inside it, and a test split:

* **Few-shot training** reads the labels of the shots only, drawn from
  :func:`fewshot_pool` (training split minus validation slice). Few-shot hyper-parameters
  chosen by cross-validation use those shots and nothing else.
* **Model selection** -- the kNN monitor during pretraining, the ``best`` checkpoint,
  ``--cepoch best``, hyper-parameter choices that are not cross-validated on the shots
  (``--select-on val``), mode 2x (val) -- reads only :func:`selection_set`, the
  validation slice. :func:`monitor_set` is the monitor's: the slice, scored leave-one-out
  (each image against the others), so no label outside the slice is read.
* **Checkpoints** are used only when chosen by their epoch or on the validation slice
  (:func:`checkpoint_choice`, asked wherever a checkpoint is loaded).
* **The test split** (:func:`final_eval_set`) is read only to compute the final rows
  (OA, AA, kappa, F1, per-class accuracy) after every choice above has been made.

Pretraining itself reads no labels and may see every training image, the validation
slice included, but never a test image. Ask these functions instead of reaching into
``Index`` fields, so a reader can check the rule in one place.
"""
from __future__ import annotations

from pathlib import Path

from config.errors import UserError
from datasets.index import Index, Sample


def _labelled(index: Index, what: str) -> None:
    if index.classes is None:
        raise ValueError(f"{what} needs labels; this index is unlabelled imagery (or a pool) for pretraining only")


def fewshot_pool(index: Index) -> list[Sample]:
    """What few-shot draws come from: the training split minus the validation slice."""
    return index.pool


def _slice(index: Index, what: str, fix: str = "") -> list[Sample]:
    _labelled(index, what)
    if not index.val:
        raise UserError(f"{what} reads the validation slice, and split {index.split_version} has none (every class "
                        "has fewer than 2 training images, or the split file gives no val rows); "
                        f"add images{fix} or use a split file with val rows")
    return list(index.val)


def selection_set(index: Index) -> list[Sample]:
    """The ONLY labelled images that model selection and hyper-parameter choices may read."""
    return _slice(index, "model selection")


def monitor_set(index: Index) -> list[Sample]:
    """The labelled images of a kNN monitor: the validation slice, both memory and queries (leave-one-out).

    The slice is the only labelled data model selection may read (the SPEC); a memory of pool
    images would read the labels the few-shot rows are not allowed (up to 200 per class against
    5 or 20). No test image is in it.
    """
    return _slice(index, "the kNN monitor", ", pretrain with --knn-freq 0 (no monitor)")


def final_eval_set(index: Index) -> list[Sample]:
    """The test split: read only to compute the final rows, after every choice is made."""
    _labelled(index, "a final evaluation")
    if not index.test:
        raise UserError(f"split {index.split_version} has no test images to evaluate on; "
                        "use a split (or --split-file) with test rows")
    return list(index.test)


def checkpoint_choice(meta: dict, path: Path) -> str:
    """What chose the checkpoint at ``path``: ``epoch``/``last`` (its number), ``val-knn`` (the monitor on the
    validation slice) or ``published``; one chosen on TEST labels is refused, on every path that loads one.

    ``best`` files written before the validation slice existed say nothing (or their ``selected_epoch``) and
    were chosen by kNN accuracy on test labels; they are told apart by that or by their ``_best`` name.
    """
    chosen = meta.get("selected_by") or None          # "": a classifier trained from random or ImageNet weights
    if chosen in ("val-knn", "epoch", "last", "published"):
        return str(chosen)
    if chosen is None and "selected_epoch" not in meta and not Path(path).stem.endswith("_best"):
        return "epoch" if meta.get("epoch") is not None else ""
    raise UserError(f"{path} was chosen as 'best' by {chosen or 'kNN accuracy on TEST labels (written before the validation slice)'}, "
                    "not by the kNN monitor on the validation slice; use a numbered checkpoint of that run "
                    "(--cepoch N, the last epoch) or re-run pretraining")


def check_classes_covered(index: Index, scored_on: str) -> None:
    """Every class needs a shot to learn from and an image to be scored on (``test``, or ``val`` for mode 2x);
    otherwise the row would claim its ``--ts`` for a class that had no shot, or average over a class it never
    scored. Refused, naming the classes and the counts."""
    _labelled(index, "a few-shot evaluation")
    names = index.classes or ()
    pool = index.counts("pool")
    scored = index.counts("val" if scored_on == "val" else "test")
    where = "validation slice" if scored_on == "val" else "test split"
    for count, place, why in ((pool, "few-shot pool (training split minus validation slice)",
                               "a classifier cannot learn it"), (scored, where, "no row could score it")):
        empty = [c for c in names if count[c] == 0]
        if empty:
            detail = ", ".join(f"{c}: {pool[c]} pool / {index.counts('val')[c]} val / {index.counts('test')[c]} test"
                               for c in empty[:5])
            raise UserError(f"class(es) {', '.join(empty[:5])} of split {index.split_version} have no image in the "
                            f"{place} ({detail}): {why}; give every class images there (more images, or the rows of "
                            "a --split-file) or move those class folders out")
