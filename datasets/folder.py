"""Datasets over an :class:`~datasets.index.Index`: reading, optional in-memory cache, statistics.

``prepare_dataset`` is what the entry scripts call: generate the demo if asked, scan and
split, and measure per-band mean/std on the TRAINING split (never a test image), cached
next to the split record per split version and keyed by the files' fingerprint, so images
rewritten under the same names are measured again. Pooled ``a+b`` datasets keep each part's own
statistics.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from datasets.fingerprint import files_fingerprint
from datasets.index import Index, Sample, build_index
from datasets.reader import header, read_raw
from config.atomic import atomic_write_text
from datasets.transforms import resize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSpec:
    """How ``--pin-memory`` caches a dataset.

    ``size``: store every image resized to ``size x size`` (antialiased, rounded back to the
    native dtype) instead of at native resolution (``--cache-size``). ``shared``: the path of a
    file in RAM-backed ``/dev/shm`` that all processes of a node map (one copy per node);
    ``builder`` says whether this process fills it (the node's first) or waits and maps it.
    """

    size: int | None = None
    shared: Path | None = None
    builder: bool = True


def shared_cache_path(key: str, paths: Sequence[Path]) -> Path:
    """``/dev/shm/rsssl_<key>_<digest of the file list>.npy`` (the temp dir where there is no /dev/shm)."""
    import hashlib
    import tempfile
    digest = hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest()[:12]
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return root / f"rsssl_{key}_{digest}.npy"


def _resized(a: np.ndarray, size: int) -> np.ndarray:
    """``C x H x W`` -> ``C x size x size`` (bilinear, antialiased), rounded and clipped to ``a``'s dtype."""
    out = resize(torch.from_numpy(a.astype(np.float32)), size).numpy()
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(a.dtype)


class RasterCache:
    """Decoded raw arrays of a list of files, read once up front into ONE preallocated array.

    Filled before DataLoader workers fork, so workers share the pages; no list of arrays is
    stacked, so the peak is the cache itself. With ``spec.shared`` the array is a file in
    /dev/shm that the node's first process fills and every other process of the node maps
    read-only: one copy per node (bench/cache_memory.py measures it). Reads use threads:
    GDAL releases the GIL while decoding. Images of different sizes (user folders) are kept
    as a list, per process, unless ``spec.size`` resizes them to one size.
    """

    def __init__(self, paths: Sequence[Path], band_index: Sequence[int] | None,
                 expect_bands: int | None, threads: int = 4, progress: bool = False,
                 spec: CacheSpec = CacheSpec()):
        self.paths = list(paths)
        self.spec = spec
        if spec.shared is not None and not spec.builder:
            self.data: np.ndarray | list[np.ndarray] = _wait_and_map(spec.shared)
            self.nbytes = self.data.nbytes
            return

        def read(p: Path) -> np.ndarray:
            a = read_raw(p, band_index, expect_bands)
            return a if spec.size is None else _resized(a, spec.size)

        first = read(self.paths[0])
        shape, n = (len(self.paths), *first.shape), len(self.paths)
        if spec.shared is not None:
            part = spec.shared.with_suffix(".part")
            data = np.lib.format.open_memmap(part, mode="w+", dtype=first.dtype, shape=shape)
        else:
            data = np.empty(shape, dtype=first.dtype)
        data[0] = first
        odd: dict[int, np.ndarray] = {}          # images of another shape than the first

        def fill(i: int) -> np.ndarray | None:
            """Reads image i straight into its row (an image of another shape comes back instead).

            Writing from the reading thread keeps at most one decoded image per thread alive:
            results handed back through ``pool.map`` queue up whenever the threads outpace the
            consumer, up to the whole dataset, and the peak would no longer be one copy."""
            a = read(self.paths[i])
            if a.shape == first.shape and a.dtype == first.dtype:
                data[i] = a
                return None
            return a

        with ThreadPoolExecutor(max(1, threads)) as pool:
            it = pool.map(fill, range(1, n))
            if progress:
                from tqdm import tqdm
                it = tqdm(it, total=n - 1, desc="caching", leave=False)
            for i, a in enumerate(it, start=1):
                if a is not None:
                    odd[i] = a
        if odd:
            if spec.shared is not None:
                part.unlink(missing_ok=True)
                raise UserError(f"--pin-memory shares one array per node, but {self.paths[min(odd)]} is "
                                f"{odd[min(odd)].shape} and {self.paths[0]} {first.shape}; add --cache-size "
                                f"{max(first.shape[-2:])} to store them at one size")
            self.data = [odd[i] if i in odd else data[i].copy() for i in range(n)]
            del data
        elif spec.shared is not None:
            data.flush()
            del data
            os.replace(part, spec.shared)                   # the others map it once it is complete
            self.data = np.load(spec.shared, mmap_mode="r")
        else:
            self.data = data
        self.nbytes = sum(a.nbytes for a in self.data) if isinstance(self.data, list) else self.data.nbytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[i]


def _wait_and_map(path: Path, timeout: float = 6 * 3600) -> np.ndarray:
    """Map the node's shared cache read-only once its builder has renamed it into place."""
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the shared --pin-memory cache {path} did not appear within {timeout:.0f} s")
        time.sleep(0.2)
    return np.load(path, mmap_mode="r")


class RasterDataset(Dataset):
    """Samples -> ``(transform(x), label, index)`` with x a float32 C x H x W tensor in raw units.

    ``as_float=False`` (no transform) hands out the decoded arrays in their native dtype,
    zero-copy from the cache: what bench/data_loading.py times as a cached epoch.
    """

    def __init__(self, samples: Sequence[Sample], opt: DatasetOpt,
                 transform: Callable[[torch.Tensor], object] | None = None, cache: bool | CacheSpec = False,
                 threads: int = 4, as_float: bool = True):
        self.samples = list(samples)
        self.as_float = as_float or transform is not None
        self.opt = opt
        self.transform = transform
        self.band_index = opt.band_index
        self.expect = len(opt.band_names)
        self.cache = (RasterCache([s.path for s in self.samples], self.band_index, self.expect, threads,
                                  progress=len(self.samples) > 2000,
                                  spec=cache if isinstance(cache, CacheSpec) else CacheSpec())
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
        if self.as_float:
            x = torch.from_numpy(raw.astype(np.float32))
        else:      # a read-only map of the shared cache is copied (torch wants writable arrays)
            x = torch.from_numpy(raw if raw.flags.writeable else np.array(raw))
        if self.transform is not None:
            x = self.transform(x)
        return x, self.samples[i].label, i

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def make_dataset(opt: DatasetOpt, samples: Sequence[Sample],
                 transform_for: Callable[[DatasetOpt], Callable], cache: bool | CacheSpec = False,
                 threads: int = 4) -> Dataset:
    """One dataset, or for pooled ``a+b`` a concatenation with each part's own normalisation."""
    if not opt.parts:
        return RasterDataset(samples, opt, transform_for(opt), cache, threads)
    subsets = []
    for part in opt.parts:
        mine = [s for s in samples if _under(s.path, part.root)]
        if mine:
            mine_cache = cache
            if isinstance(cache, CacheSpec) and cache.shared is not None:      # one shared file per part
                mine_cache = replace(cache, shared=cache.shared.with_name(f"{cache.shared.stem}_{part.name}.npy"))
            subsets.append(RasterDataset(mine, part, transform_for(part), mine_cache, threads))
    return PooledDataset(subsets)


class PooledDataset(ConcatDataset):
    """The parts of a pooled ``a+b`` dataset in one; an item's third element is its position in the
    WHOLE dataset (each part counts from 0: MoCo's queue and the monitor's cache need one numbering)."""

    def __getitem__(self, i: int):
        x, label, _ = super().__getitem__(i)
        return x, label, i if i >= 0 else len(self) + i


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


def check_pixel_types(opt: DatasetOpt, samples: Sequence[Sample], threads: int = 4) -> str:
    """The one pixel type (uint8, uint16, float32 ...) of every file of a dataset, from the headers; a dataset
    that mixes them is refused: a 16-bit png among 8-bit ones would be read as 0-65535 among 0-255."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        types = list(pool.map(lambda s: header(s.path).pixel_type, samples))
    kinds = sorted(set(types), key=types.count, reverse=True)
    if len(kinds) > 1:
        odd = [f"{types.count(k)} {k} (e.g. {samples[types.index(k)].path})" for k in kinds[1:]]
        raise UserError(f"{opt.name} ({opt.root}) mixes pixel types: {types.count(kinds[0])} files are {kinds[0]}, "
                        f"{', '.join(odd)}; convert them to one bit depth or move the odd ones out")
    return kinds[0] if kinds else ""


def stats_path(opt: DatasetOpt, split_version: str) -> Path:
    """Cache file of the normalisation statistics: one per dataset, split version and band set."""
    return opt.cache_dir / opt.cache_key / f"stats_{split_version}_{opt.dtype}_{'-'.join(opt.bands)}.json"


def _ensure_stats(opt: DatasetOpt, index: Index) -> DatasetOpt:
    """Per-band mean/std measured on the TRAINING split only, cached per split version and keyed by the
    files' fingerprint (size and times of every file): rewritten images are measured again. Measuring
    also checks that the dataset holds one pixel type."""
    if opt.mean is not None and opt.std is not None:
        return opt
    path = stats_path(opt, index.split_version)
    fingerprint = files_fingerprint(s.path for s in index.train + index.test)
    st = None
    if path.exists():
        try:
            st = json.loads(path.read_text())
            if st.get("bands") != list(opt.bands) or len(st["mean"]) != opt.n_bands \
                    or st.get("files_fingerprint") != fingerprint \
                    or not np.isfinite(np.asarray(st["mean"] + st["std"], dtype=np.float64)).all():
                st = None
        except (ValueError, KeyError, TypeError):
            st = None
    if st is not None:
        mean, std = np.asarray(st["mean"], dtype=np.float64), np.asarray(st["std"], dtype=np.float64)
        source = f"cached in {path}"
    else:
        pixel_type = check_pixel_types(opt, index.train + index.test)
        mean, std, n = band_stats(opt, index.train)
        source = f"measured on {n} of the {len(index.train)} training files"
        try:
            atomic_write_text(path, json.dumps({
                "dataset": opt.name, "split_version": index.split_version, "split": "train",
                "bands": list(opt.bands), "mean": mean.tolist(), "std": std.tolist(),
                "files": n, "of": len(index.train), "pixel_type": pixel_type,
                "files_fingerprint": fingerprint}, indent=1))
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
    if opt.parts:
        folder = ", ".join(str(p.root) for p in opt.parts)
        split = (f"split     {index.split_version}: train {len(index.train)} / test {len(index.test)} "
                 "(each dataset keeps its own split; pooled for pretraining only)")
    else:
        folder = str(opt.root)
        split = (f"split     {index.split_version}: train {len(index.train)} (validation slice {len(index.val)}, "
                 f"few-shot pool {len(index.train) - len(index.val)}) / test {len(index.test)} "
                 + (f"(from {opt.split_file})" if opt.split_file else f"({opt.train_fraction:.0%} per class, fixed)"))
    lines = [f"dataset   {opt.name}: {opt.title}", f"folder    {folder}",
             f"bands     {opt.n_bands} ({opt.dtype}: {' '.join(opt.bands)})"
             + (f", true colour = bands {' '.join(opt.rgb_bands)}" if opt.rgb_index else ""),
             f"input     {opt.input_size} x {opt.input_size}", split]
    if opt.mean is not None:
        lines.append("mean      " + " ".join(f"{v:.1f}" for v in opt.mean) + "  (training split)")
        lines.append("std       " + " ".join(f"{v:.1f}" for v in opt.std))
    if index.classes:
        tr, va, te = index.counts("train"), index.counts("val"), index.counts("test")
        w = max(len(c) for c in index.classes)
        lines.append(f"{'class':<{w}}  train  (val)  test")
        lines += [f"{c:<{w}}  {tr[c]:>5}  {va[c]:>5}  {te[c]:>4}" for c in index.classes]
    return "\n".join(lines)
