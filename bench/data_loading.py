"""Images/s decoding the real EuroSAT GeoTIFFs: plain GDAL loop (the floor) vs the harness.

    python bench/data_loading.py [--root ../shared/data] [--repeats 3]

Measures in one run, so the ratios are comparable on a noisy machine:
  floor   ``gdal.Open(f).ReadAsArray()`` over every file
  reader  ``datasets.reader.read_raw`` (what an uncached epoch does per file)
  epoch   a RasterDataset epoch of decoded arrays, uncached vs ``--pin-memory`` cached, and
          the same epoch converted to float32 (the first step of every transform)
Targets: reader >= 0.8x the floor; a cached epoch >= 20x an uncached one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from osgeo import gdal  # noqa: E402

from datasets.options import get_opt  # noqa: E402
from datasets.folder import RasterDataset  # noqa: E402
from datasets.index import build_index  # noqa: E402
from datasets.reader import read_raw  # noqa: E402

gdal.UseExceptions()


def rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    opt = get_opt("euroms", argparse.Namespace(data_root=a.root))
    idx = build_index(opt)
    samples = idx.train + idx.test
    files = [s.path for s in samples]
    n = len(files)

    floor = rate(lambda: [gdal.Open(str(f)).ReadAsArray() for f in files], n, a.repeats)
    reader = rate(lambda: [read_raw(f, opt.band_index, 13) for f in files], n, a.repeats)
    rgb_floor = rate(lambda: [gdal.Open(str(f)).ReadAsArray(band_list=[4, 3, 2]) for f in files], n, a.repeats)
    rgb_reader = rate(lambda: [read_raw(f, (3, 2, 1), 13) for f in files], n, a.repeats)
    raw_ds = RasterDataset(samples, opt, as_float=False)
    uncached = rate(lambda: [raw_ds[i] for i in range(n)], n, a.repeats)
    t = time.perf_counter()
    cached_ds = RasterDataset(samples, opt, cache=True, as_float=False)
    fill = time.perf_counter() - t
    cached = rate(lambda: [cached_ds[i] for i in range(n)], n, a.repeats)
    f_ds, f_cached_ds = RasterDataset(samples, opt), RasterDataset(samples, opt, cache=True)
    f_uncached = rate(lambda: [f_ds[i] for i in range(n)], n, a.repeats)
    f_cached = rate(lambda: [f_cached_ds[i] for i in range(n)], n, a.repeats)

    print(f"EuroSAT 13-band GeoTIFFs, {n} files, median of {a.repeats} passes")
    print("| path | images/s | ratio |")
    print("|---|---:|---:|")
    print(f"| plain gdal.Open().ReadAsArray() (floor) | {floor:,.0f} | 1.00x |")
    print(f"| datasets.reader.read_raw, 13 bands | {reader:,.0f} | {reader / floor:.2f}x floor (target >= 0.8) |")
    print(f"| plain ReadAsArray(band_list=[4,3,2]) | {rgb_floor:,.0f} | 1.00x |")
    print(f"| read_raw, bands B04 B03 B02 | {rgb_reader:,.0f} | {rgb_reader / rgb_floor:.2f}x its floor |")
    print(f"| epoch of decoded arrays, uncached | {uncached:,.0f} | 1.00x |")
    print(f"| epoch of decoded arrays, --pin-memory cache | {cached:,.0f} | {cached / uncached:.1f}x uncached (target >= 20) |")
    print(f"| epoch as float32 tensors, uncached | {f_uncached:,.0f} | 1.00x |")
    print(f"| epoch as float32 tensors, cached | {f_cached:,.0f} | {f_cached / f_uncached:.1f}x (the uint16->float32 copy is memory-bound) |")
    print(f"cache fill: {fill:.2f} s for {cached_ds.cache.nbytes / 2**20:.1f} MiB (native uint16)")
    ok = reader / floor >= 0.8 and cached / uncached >= 20
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
