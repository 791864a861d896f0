"""The --pin-memory cache: one preallocated array (peak = the cache), optional resize, and the
node-shared file that the first process builds and the others map."""
from __future__ import annotations

import argparse
import tracemalloc

import numpy as np
import pytest

from datasets.folder import CacheSpec, RasterCache, RasterDataset, prepare_dataset, shared_cache_path
from datasets.options import get_opt
from datasets.reader import read_raw
from datasets.transforms import resize


@pytest.fixture(scope="module")
def demo(demo_root):
    opt, index = prepare_dataset(get_opt("demo", argparse.Namespace(data_root=str(demo_root))))
    return opt, [s.path for s in index.train][:40]


def test_one_preallocated_array_equal_to_the_files_and_peak_is_one_copy(demo):
    opt, paths = demo
    tracemalloc.start()
    cache = RasterCache(paths, opt.band_index, len(opt.band_names), threads=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(cache.data, np.ndarray) and cache.data.shape[0] == len(paths)
    one = cache.data[0].nbytes
    assert cache.nbytes == one * len(paths)
    # each of the 2 reading threads holds at most its image in flight (measured: 3.8 images over the
    # cache); results queued through pool.map reached 14.5 when the threads outran the consumer,
    # and a list + np.stack would peak at twice the cache
    assert peak < cache.nbytes + 8 * one
    for i in (0, 17, len(paths) - 1):
        assert np.array_equal(cache[i], read_raw(paths[i], opt.band_index, len(opt.band_names)))


def test_cache_at_training_resolution(demo):
    opt, paths = demo
    cache = RasterCache(paths[:5], opt.band_index, len(opt.band_names), spec=CacheSpec(size=24))
    raw = read_raw(paths[3], opt.band_index, len(opt.band_names))
    assert cache.data.shape == (5, raw.shape[0], 24, 24) and cache.data.dtype == raw.dtype
    import torch
    expect = resize(torch.from_numpy(raw.astype(np.float32)), 24).numpy()
    assert np.abs(cache[3].astype(np.float64) - expect).max() <= 0.5 + 1e-3     # rounded to the native dtype


def test_shared_file_built_once_and_mapped_by_the_others(demo, tmp_path, monkeypatch):
    opt, paths = demo
    path = shared_cache_path("test", paths)
    assert path.parent.is_dir() and path.suffix == ".npy"
    path = tmp_path / path.name
    built = RasterCache(paths, opt.band_index, len(opt.band_names), spec=CacheSpec(shared=path, builder=True))
    assert path.exists() and not path.with_suffix(".part").exists()
    # another process of the node: reads no file, maps the builder's array
    monkeypatch.setattr("datasets.folder.read_raw", lambda *a: pytest.fail("a mapping process decoded a file"))
    mapped = RasterCache(paths, opt.band_index, len(opt.band_names), spec=CacheSpec(shared=path, builder=False))
    assert isinstance(mapped.data, np.memmap) and not mapped.data.flags.writeable
    assert np.array_equal(np.asarray(mapped.data), np.asarray(built.data))
    ds = RasterDataset([], opt)
    ds.samples, ds.cache, ds.as_float, ds.transform = [None] * len(paths), mapped, False, None
    monkeypatch.setattr(ds, "samples", [type("S", (), {"label": 0})()] * len(paths))
    x, _, _ = ds[2]
    assert np.array_equal(x.numpy(), built[2])       # read-only map handed out as a writable copy
