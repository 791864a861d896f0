"""Datasets over an :class:`~datasets.index.Index`: reading, optional in-memory cache, statistics.

``prepare_dataset`` is what the entry scripts call: generate the demo if asked, scan and
split, and measure per-band mean/std on the TRAINING split (never a test image), cached
next to the split record per split version. Pooled ``a+b`` datasets keep each part's own
statistics.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from datasets.index import Index, Sample, build_index
from datasets.reader import read_raw
from engine.atomic import atomic_write_text

log = logging.getLogger(__name__)


class RasterCache:
    """Decoded raw arrays of a list of files in their native dtype, read once up front.

    Filled in the main process before DataLoader workers fork, so workers share the pages
    (one contiguous array when all files have the same shape). Reads use threads: GDAL
    releases the GIL while decoding.
    """

    def __init__(self, paths: Sequence[Path], band_index: Sequence[int] | None,
                 expect_bands: int | None, threads: int = 4, progress: bool = False):
        self.paths = list(paths)
        read = lambda p: read_raw(p, band_index, expect_bands)  # noqa: E731
        first = read(self.paths[0])
        arrays: list[np.ndarray] = [first]
        with ThreadPoolExecutor(max(1, threads)) as pool:
            it = pool.map(read, self.paths[1:])
            if progress:
                from tqdm import tqdm
                it = tqdm(it, total=len(self.paths) - 1, desc="caching", leave=False)
            arrays += list(it)
        if all(a.shape == first.shape and a.dtype == first.dtype for a in arrays):
            self.data: np.ndarray | list[np.ndarray] = np.stack(arrays)
        else:
            self.data = arrays
        self.nbytes = sum(a.nbytes for a in arrays)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[i]


class RasterDataset(Dataset):
    """Samples -> ``(transform(x), label, index)`` with x a float32 C x H x W tensor in raw units.

    ``as_float=False`` (no transform) hands out the decoded arrays in their native dtype,
    zero-copy from the cache: what bench/data_loading.py times as a cached epoch.
    """

    def __init__(self, samples: Sequence[Sample], opt: DatasetOpt,
                 transform: Callable[[torch.Tensor], object] | None = None, cache: bool = False,
                 threads: int = 4, as_float: bool = True):
        self.samples = list(samples)
        self.as_float = as_float or transform is not None
        self.opt = opt
        self.transform = transform
        self.band_index = opt.band_index
        self.expect = len(opt.band_names)
        self.cache = (RasterCache([s.path for s in self.samples], self.band_index, self.expect,
                                  threads, progress=len(self.samples) > 2000)
                      if cache and self.samples else None)

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, i: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache[i]
        return read_raw(self.samples[i].path, self.band_index, self.expect)

    def __getitem__(self, i: int):
        raw = self.raw(i)
        # numpy converts uint16 -> float32 ~50x faster than torch's uint16 path
        x = torch.from_numpy(raw.astype(np.float32) if self.as_float else raw)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.samples[i].label, i

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def make_dataset(opt: DatasetOpt, samples: Sequence[Sample],
                 transform_for: Callable[[DatasetOpt], Callable], cache: bool = False,
                 threads: int = 4) -> Dataset:
    """One dataset, or for pooled ``a+b`` a concatenation with each part's own normalisation."""
    if not opt.parts:
        return RasterDataset(samples, opt, transform_for(opt), cache, threads)
    subsets = []
    for part in opt.parts:
        mine = [s for s in samples if _under(s.path, part.root)]
        if mine:
            subsets.append(RasterDataset(mine, part, transform_for(part), cache, threads))
    return ConcatDataset(subsets)


def _under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


STATS_MAX_FILES = 2000


def band_stats(opt: DatasetOpt, samples: Sequence[Sample], max_files: int | None = STATS_MAX_FILES,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-band mean and std (raw units, float64 sums) over ``samples``.

    With more than ``max_files`` files, a seeded random subset of that size is measured
    (None: all). Returns mean, std and the number of files measured.
    """
    paths = [s.path for s in samples]
    if not paths:
        raise UserError(f"{opt.name}: no training files to measure band statistics on")
    if max_files is not None and len(paths) > max_files:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), max_files, replace=False))]
    total = sq = None
    count = 0
    for p in paths:
        a = read_raw(p, opt.band_index, len(opt.band_names)).astype(np.float64)
        a = a.reshape(a.shape[0], -1)
        s, s2 = a.sum(1), (a * a).sum(1)
        total = s if total is None else total + s
        sq = s2 if sq is None else sq + s2
        count += a.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        bad = [b for b, m, s in zip(opt.bands, mean, std) if not (np.isfinite(m) and np.isfinite(s))]
        raise UserError(f"band(s) {', '.join(bad)} of {opt.name} hold NaN or infinite pixel values in the measured "
                        "files (a nodata value?); fill them in the files or pick other bands with --dtype")
    return mean, std, len(paths)


def stats_path(opt: DatasetOpt, split_version: str) -> Path:
    """Cache file of the normalisation statistics: one per dataset, split version and band set."""
    return opt.cache_dir / opt.cache_key / f"stats_{split_version}_{opt.dtype}_{'-'.join(opt.bands)}.json"


def _ensure_stats(opt: DatasetOpt, index: Index) -> DatasetOpt:
    """Per-band mean/std measured on the TRAINING split only, cached per split version."""
    if opt.mean is not None and opt.std is not None:
        return opt
    path = stats_path(opt, index.split_version)
    st = None
    if path.exists():
        try:
            st = json.loads(path.read_text())
            if st.get("bands") != list(opt.bands) or len(st["mean"]) != opt.n_bands \
                    or not np.isfinite(np.asarray(st["mean"] + st["std"], dtype=np.float64)).all():
                st = None
        except (ValueError, KeyError, TypeError):
            st = None
    if st is not None:
        mean, std = np.asarray(st["mean"], dtype=np.float64), np.asarray(st["std"], dtype=np.float64)
        source = f"cached in {path}"
    else:
        mean, std, n = band_stats(opt, index.train)
        source = f"measured on {n} of the {len(index.train)} training files"
        try:
            atomic_write_text(path, json.dumps({
                "dataset": opt.name, "split_version": index.split_version, "split": "train",
                "bands": list(opt.bands), "mean": mean.tolist(), "std": std.tolist(),
                "files": n, "of": len(index.train)}, indent=1))
        except OSError as err:
            log.warning("could not cache band statistics in %s (%s)", path, err)
    log.info("%s: per-band mean %s, std %s (training split %s, %s)", opt.name, np.round(mean, 2).tolist(),
             np.round(std, 2).tolist(), index.split_version, source)
    return replace(opt, mean=mean, std=std)


def prepare_dataset(opt: DatasetOpt) -> tuple[DatasetOpt, Index]:
    """Generate (demo), scan, split, and measure per-band statistics on the training split."""
    if opt.generate and not opt.root.is_dir():
        from datasets.demo import generate_demo
        log.info("generating the built-in demo dataset in %s", opt.root)
        generate_demo(opt.root)
    index = build_index(opt)
    if opt.parts:
        parts = tuple(_ensure_stats(p, sub) for p, sub in zip(opt.parts, index.parts))
        return replace(opt, parts=parts), index
    return _ensure_stats(opt, index), index


def describe(opt: DatasetOpt, index: Index) -> str:
    """The dataset summary printed by ``python -m datasets`` and ``make demo``."""
    lines = [f"dataset   {opt.name}: {opt.title}", f"folder    {opt.root}",
             f"bands     {opt.n_bands} ({opt.dtype}: {' '.join(opt.bands)})"
             + (f", true colour = bands {' '.join(opt.rgb_bands)}" if opt.rgb_index else ""),
             f"input     {opt.input_size} x {opt.input_size}",
             f"split     {index.split_version}: train {len(index.train)} (validation slice {len(index.val)}, "
             f"few-shot pool {len(index.train) - len(index.val)}) / test {len(index.test)} "
             + (f"(from {opt.split_file})" if opt.split_file else f"({opt.train_fraction:.0%} per class, fixed)")]
    if opt.mean is not None:
        lines.append("mean      " + " ".join(f"{v:.1f}" for v in opt.mean) + "  (training split)")
        lines.append("std       " + " ".join(f"{v:.1f}" for v in opt.std))
    if index.classes:
        tr, va, te = index.counts("train"), index.counts("val"), index.counts("test")
        w = max(len(c) for c in index.classes)
        lines.append(f"{'class':<{w}}  train  (val)  test")
        lines += [f"{c:<{w}}  {tr[c]:>5}  {va[c]:>5}  {te[c]:>4}" for c in index.classes]
    return "\n".join(lines)
