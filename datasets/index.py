"""Scan class-per-folder trees, the ONE fixed train/test split, ``--ts`` and few-shot draws.

The split is a pure function of the relative file paths: within each class, files are
ordered by the SHA-1 of their relative path and the first ``round(0.8 * n)`` go to
training. It is therefore stratified, identical on every machine and in every process,
and does not depend on the order the filesystem lists files in. It is written to
``<cache>/<dataset>/split.csv`` as a record of what every experiment shared.

Few-shot subsets are drawn from the TRAINING split only, per class, from one seeded
permutation per (seed, class): the first k files of the permutation, so for one seed the
5-shot set is inside the 20-shot set.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config.dataset_cfg import RASTER_EXTENSIONS, DatasetOpt
from config.errors import UserError
from engine.atomic import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int          # -1 for unlabelled imagery


@dataclass
class Index:
    """Files of one dataset and its fixed split."""

    classes: tuple[str, ...] | None
    train: list[Sample]
    test: list[Sample]

    def counts(self, split: str) -> dict[str, int]:
        items = self.train if split == "train" else self.test
        names = self.classes or ("(unlabelled)",)
        out = {n: 0 for n in names}
        for s in items:
            out[names[s.label] if s.label >= 0 else names[0]] += 1
        return out


def _is_image(p: Path, extensions: tuple[str, ...]) -> bool:
    return p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")


def detect_layout(root: Path) -> tuple[tuple[str, ...] | None, Path]:
    """For the user's own imagery: class folders (returns their names) or unlabelled (None).

    A folder whose images all sit one level down, in at least two sub-folders, is read as
    class-per-folder; anything else (images at the top, or nested deeper) is unlabelled.
    Returns the layout and one image to probe for band count and size.
    """
    files = sorted(p for p in root.rglob("*") if _is_image(p, RASTER_EXTENSIONS))
    if not files:
        raise UserError(f"no images ({', '.join(RASTER_EXTENSIONS)}) found under {root}; "
                        "point --ds at a folder of GeoTIFFs or images")
    depths = {len(p.relative_to(root).parts) for p in files}
    dirs = sorted({p.parent.name for p in files})
    if depths == {2} and len(dirs) >= 2:
        return tuple(dirs), files[0]
    return None, files[0]


def _split_key(rel: str) -> str:
    return hashlib.sha1(rel.encode("utf-8")).hexdigest()


def scan(opt: DatasetOpt) -> dict[int, list[Path]]:
    """Files per class label, checked against the class table (unlabelled: all under -1)."""
    root = opt.root
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; check --data-root / --ds")
    if opt.classes is None:
        files = sorted(p for p in root.rglob("*") if _is_image(p, opt.extensions))
        if not files:
            raise UserError(f"no images ({', '.join(opt.extensions)}) under {root}")
        return {-1: files}
    present = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    missing = [c for c in opt.classes if c not in present]
    extra = [d for d in present if d not in opt.classes]
    if missing:
        raise UserError(f"{root} lacks class folder(s) {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''} expected by --ds {opt.name}; "
                        "restore them or check that --ds names the right dataset")
    if extra:
        raise UserError(f"{root} has folder(s) {', '.join(extra[:5])} that are not classes of "
                        f"--ds {opt.name}; move them out of the dataset folder")
    out: dict[int, list[Path]] = {}
    for i, c in enumerate(opt.classes):
        files = sorted(p for p in (root / c).iterdir() if _is_image(p, opt.extensions))
        if not files:
            raise UserError(f"class folder {root / c} holds no {'/'.join(opt.extensions)} files; "
                            "add its images or remove the class")
        out[i] = files
    return out


def split_files(files: list[Path], root: Path, train_fraction: float) -> tuple[list[Path], list[Path]]:
    """Deterministic split of one class: order by hash of the relative path."""
    keyed = sorted(files, key=lambda p: _split_key(p.relative_to(root).as_posix()))
    n_train = int(round(train_fraction * len(keyed)))
    if len(keyed) >= 2:
        n_train = min(max(n_train, 1), len(keyed) - 1)   # both sides non-empty
    return keyed[:n_train], keyed[n_train:]


def build_index(opt: DatasetOpt) -> Index:
    """Scan, split and record the split under the cache dir (pooled datasets: concatenated)."""
    if opt.parts:
        train: list[Sample] = []
        test: list[Sample] = []
        for part in opt.parts:
            sub = build_index(part)
            train += [Sample(s.path, -1) for s in sub.train]
            test += [Sample(s.path, -1) for s in sub.test]
        return Index(None, train, test)
    per_class = scan(opt)
    train, test = [], []
    for label, files in per_class.items():
        tr, te = split_files(files, opt.root, opt.train_fraction)
        train += [Sample(p, label) for p in tr]
        test += [Sample(p, label) for p in te]
    index = Index(opt.classes, train, test)
    _record_split(opt, index)
    return index


def _record_split(opt: DatasetOpt, index: Index) -> None:
    path = opt.cache_dir / opt.cache_key / "split.csv"
    rows = [(s.path.relative_to(opt.root).as_posix(), s.label, "train") for s in index.train]
    rows += [(s.path.relative_to(opt.root).as_posix(), s.label, "test") for s in index.test]
    rows.sort()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            try:
                with open(path, newline="") as f:
                    old = [(r[0], int(r[1]), r[2]) for r in list(csv.reader(f))[1:]]
            except (ValueError, IndexError):      # a damaged record is rewritten
                old = []
            if old == rows:
                return
            log.warning("the file list of %s changed since %s was written; rewriting the split record",
                        opt.root, path)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "label", "split"])
        w.writerows(rows)
        atomic_write_text(path, buf.getvalue())
    except OSError as err:   # a read-only cache must not stop an experiment
        log.warning("could not record the split in %s (%s)", path, err)


def shots_per_class(ts: float, n_available: int) -> int:
    """``--ts``: <= 1 is a fraction of the class's training split (at least 1 image), > 1 a count."""
    if ts <= 0:
        raise UserError(f"--ts {ts} must be > 0: a fraction in (0, 1] or a number of images per class")
    if ts <= 1:
        return max(1, int(round(ts * n_available)))
    if ts != int(ts):
        raise UserError(f"--ts {ts}: above 1 it counts images per class and must be a whole number")
    return int(ts)


def few_shot(train: list[Sample], ts: float, seed: int, classes: tuple[str, ...] | None = None) -> list[Sample]:
    """Per-class seeded draw from the training split; nested across ``ts`` for one seed."""
    by_class: dict[int, list[Sample]] = {}
    for s in train:
        by_class.setdefault(s.label, []).append(s)
    out: list[Sample] = []
    clamped = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: s.path.as_posix())
        k = shots_per_class(ts, len(items))
        if k > len(items):
            clamped.append((classes[label] if classes and label >= 0 else str(label), len(items)))
            k = len(items)
        rng = np.random.default_rng([int(seed), label + 1])
        order = rng.permutation(len(items))
        out += [items[i] for i in order[:k]]
    if clamped:
        log.warning("--ts %s asks for more images than exist in %d class(es) (%s); using all of them",
                    ts, len(clamped), ", ".join(f"{c}: {n}" for c, n in clamped[:5]))
    return out
