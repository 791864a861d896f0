"""Scan class-per-folder trees; the ONE fixed split (train / validation slice / test); few-shot draws.

The split is keyed by scene: :func:`scene_key` is a file's path below the dataset folder
without its extension (``"AnnualCrop/AnnualCrop_1"``), so EuroSAT's RGB release (.jpg) and
its 13-band release (.tif) put every scene on the same side. Within each class, files are
ordered by the SHA-1 of their scene key; the first ``round(train_fraction * n)`` form the
training split, the rest the test split. The first ``round(val_fraction * n_train)`` of the
training split (at least 1 when the class has >= 2 training images) form the validation
slice. The split is therefore stratified, identical on every machine and process, and the
same for every ``--ts`` and ``--seed``.

Three sets, three uses (engine/labels.py states the rule for callers):

* ``Index.train``: the whole training split. Pretraining sees these images, without labels.
* ``Index.val``: the validation slice, the only labels that monitors, ``best`` checkpoints
  and hyper-parameter choices may read. ``Index.pool`` = train minus val is what few-shot
  draws come from, so no draw ever holds a validation image.
* ``Index.test``: read only to compute final results.

``--split-file`` replaces the rule by a published split (datasets/splitfile.py). The split is
written to ``<cache>/<dataset>/split.csv`` (an imported one to ``split_file-<digest>.csv``),
as ``path,class,split`` rows, the format ``--export-split`` writes, and named by
``Index.split_version``: ``v2-<digest>`` for this rule, ``file-<digest>`` for an imported
split, the digest being that of the sorted ``scene key, class, split`` rows. The same split
therefore has the same digest whether it was computed here, exported or imported, and for
the .jpg and .tif releases of a dataset.

Few-shot subsets are drawn per class from one seeded permutation per (seed, class) of the
pool ordered by scene key: the first k scenes, so for one seed the 5-shot set is inside the
20-shot set, and the same seed draws the same scenes in every release of a dataset.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from config.dataset_cfg import RASTER_EXTENSIONS, DatasetOpt
from config.errors import UserError
from config.atomic import atomic_write_text
from datasets.splitfile import read_split_file

log = logging.getLogger(__name__)

RULE_VERSION = "v2"      # v1 (until 2026-12): keyed by relative path incl. extension, no validation slice


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int          # -1 for unlabelled imagery
    key: str = ""       # scene key (see scene_key); filled by build_index


def scene_key(path: Path, root: Path) -> str:
    """The scene a file shows: ``"<class folder>/<file stem>"`` (``"<stem path>"`` when unlabelled).

    It is the path below the dataset folder without the extension, so the .jpg and .tif of
    one scene share it, while the folder that holds the dataset does not enter it.
    """
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        raise ValueError(f"{path} is not inside the dataset folder {root}") from None
    return rel.with_suffix("").as_posix()


@dataclass
class Index:
    """Files of one dataset (or a pool of datasets) and its fixed split."""

    classes: tuple[str, ...] | None
    train: list[Sample]                      # the WHOLE training split, validation slice included
    test: list[Sample]
    val: list[Sample] = field(default_factory=list)   # fixed validation slice, a subset of train
    split_version: str = "unknown"
    parts: tuple["Index", ...] = ()          # pooled a+b: the index of each dataset

    @property
    def pool(self) -> list[Sample]:
        """Training split minus the validation slice: what few-shot draws come from."""
        if not self.val:
            return list(self.train)
        held = {s.path for s in self.val}
        return [s for s in self.train if s.path not in held]

    def split(self, name: str) -> list[Sample]:
        """``train``, ``val``, ``pool`` or ``test``."""
        if name not in ("train", "val", "pool", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def counts(self, split: str) -> dict[str, int]:
        names = self.classes or ("(unlabelled)",)
        out = {n: 0 for n in names}
        for s in self.split(split):
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


def _hash(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def n_val_of(n_train: int, val_fraction: float) -> int:
    """Size of a class's validation slice: ``round(val_fraction * n_train)``, at least 1 when
    the class has >= 2 training images, and always leaving one image to draw shots from."""
    if n_train < 2 or val_fraction <= 0:
        return 0
    return min(max(int(round(val_fraction * n_train)), 1), n_train - 1)


def rule_split(keys: Iterable[str], train_fraction: float, val_fraction: float) -> dict[str, str]:
    """This project's split of ONE class's scene keys: key -> ``train`` / ``val`` / ``test``."""
    ordered = sorted(set(keys), key=_hash)
    n_train = int(round(train_fraction * len(ordered)))
    if len(ordered) >= 2:
        n_train = min(max(n_train, 1), len(ordered) - 1)   # both sides non-empty
    n_val = n_val_of(n_train, val_fraction)
    return {k: ("val" if i < n_val else "train" if i < n_train else "test") for i, k in enumerate(ordered)}


def val_slice(keys: Iterable[str], val_fraction: float) -> set[str]:
    """The validation slice cut from ONE class's training keys (for imported splits without one)."""
    ordered = sorted(set(keys), key=_hash)
    return set(ordered[:n_val_of(len(ordered), val_fraction)])


def split_digest(rows: Iterable[tuple[str, str, str]]) -> str:
    """Digest of a split: sorted ``scene key, class, split`` rows (extensions and folder root excluded)."""
    text = "\n".join(",".join(r) for r in sorted(set(rows)))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def build_index(opt: DatasetOpt) -> Index:
    """Scan, split (rule or ``--split-file``) and record the split under the cache dir."""
    if opt.parts:
        subs = tuple(build_index(part) for part in opt.parts)
        train = [Sample(s.path, -1, s.key) for sub in subs for s in sub.train]
        test = [Sample(s.path, -1, s.key) for sub in subs for s in sub.test]
        return Index(None, train, test, [], "+".join(sub.split_version for sub in subs), subs)
    per_class = scan(opt)
    names = opt.classes or ()
    samples = [Sample(p, label, scene_key(p, opt.root)) for label, files in per_class.items() for p in files]
    cls = {s.key: (names[s.label] if s.label >= 0 else "") for s in samples}
    if opt.split_file is not None:
        assign = read_split_file(opt.split_file, opt, cls)
        if opt.classes is not None and "val" not in assign.values():
            log.info("%s has no validation rows: the validation slice is cut from its training rows "
                     "(%.0f %% per class, hash-ordered)", opt.split_file, 100 * opt.val_fraction)
            by_class: dict[str, list[str]] = {}
            for k, sp in assign.items():
                if sp == "train":
                    by_class.setdefault(cls[k], []).append(k)
            for keys in by_class.values():
                assign.update({k: "val" for k in val_slice(keys, opt.val_fraction)})
        prefix = "file"
    else:
        assign = {}
        val_fraction = opt.val_fraction if opt.classes is not None else 0.0
        for label in per_class:
            keys = [s.key for s in samples if s.label == label]
            assign.update(rule_split(keys, opt.train_fraction, val_fraction))
        prefix = RULE_VERSION
    samples.sort(key=lambda s: (s.label, s.key, s.path.name))
    train = [s for s in samples if assign[s.key] in ("train", "val")]
    val = [s for s in samples if assign[s.key] == "val"]
    test = [s for s in samples if assign[s.key] == "test"]
    if not train:
        raise UserError(f"the split of {opt.root} has no training images; "
                        "check --split-file or add images")
    version = f"{prefix}-{split_digest((k, cls[k], sp) for k, sp in assign.items())}"
    index = Index(opt.classes, train, test, val, version)
    _record_split(opt, index, "split.csv" if opt.split_file is None else f"split_{version}.csv")
    return index


def split_rows(opt: DatasetOpt, index: Index) -> list[tuple[str, str, str]]:
    """``path, class, split`` rows, paths relative to the dataset folder, sorted."""
    names = opt.classes or ()
    held = {s.path for s in index.val}
    rows = []
    for split, items in (("train", index.train), ("test", index.test)):
        for s in items:
            sp = "val" if split == "train" and s.path in held else split
            rows.append((s.path.relative_to(opt.root).as_posix(), names[s.label] if s.label >= 0 else "", sp))
    return sorted(rows)


def split_csv(opt: DatasetOpt, index: Index) -> str:
    """The split as a plain CSV any reader takes (``--export-split``, and the split record): the columns
    ``path,class,split`` and, as provenance, ``split_version`` on every row (no comment line)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "class", "split", "split_version"])
    w.writerows((*row, index.split_version) for row in split_rows(opt, index))
    return buf.getvalue()


def _record_split(opt: DatasetOpt, index: Index, name: str) -> None:
    """Write the split record (the rule's split.csv, or an imported split resolved to the files)."""
    path = opt.cache_dir / opt.cache_key / name
    text = split_csv(opt, index)
    try:
        if path.exists():
            old = path.read_text(errors="replace")
            if old == text:
                return
            was = _recorded_version(old)
            if was:
                log.warning("the file list of %s changed since %s was written (%s, now %s); "
                            "rewriting the split record", opt.root, path, was, index.split_version)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as err:   # a read-only cache must not stop an experiment
        log.warning("could not record the split in %s (%s)", path, err)


def _recorded_version(text: str) -> str:
    """The split version a split record names: its ``split_version`` column, or an older file's '#' line."""
    lines = text.splitlines()
    if lines and lines[0].startswith("#") and "split_version " in lines[0]:
        return lines[0].split("split_version ")[-1].split(";")[0]
    if len(lines) > 1 and lines[0].endswith(",split_version"):
        return lines[1].rsplit(",", 1)[-1]
    return ""


def shots_per_class(ts: float, n_available: int) -> int:
    """``--ts``: <= 1 is a fraction of the class's few-shot pool (at least 1 image), > 1 a count."""
    if ts <= 0:
        raise UserError(f"--ts {ts} must be > 0: a fraction in (0, 1] or a number of images per class")
    if ts <= 1:
        return max(1, int(round(ts * n_available)))
    if ts != int(ts):
        raise UserError(f"--ts {ts}: above 1 it counts images per class and must be a whole number")
    return int(ts)


def few_shot(train: list[Sample], ts: float, seed: int, classes: tuple[str, ...] | None = None) -> list[Sample]:
    """Per-class seeded draw from ``train`` (pass ``index.pool``); nested across ``ts`` for one seed."""
    by_class: dict[int, list[Sample]] = {}
    for s in train:
        by_class.setdefault(s.label, []).append(s)
    out: list[Sample] = []
    clamped = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: (s.key or s.path.as_posix(), s.path.as_posix()))
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
