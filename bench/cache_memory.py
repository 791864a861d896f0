"""Resident memory of the --pin-memory cache in 2 processes: one shared copy per node vs a copy each.

    python bench/cache_memory.py [--root ../shared/data] [--ds aid] [--size 0]

Two processes (as ``--mp-distributed --nproc 2`` starts them) build the cache of the whole
dataset: SHARED, the first process fills a file in /dev/shm and the second maps it (what
training does); PRIVATE, each fills its own array (the old behaviour). Each process then
reads every byte of its cache and reports the growth of its proportional set size (PSS,
/proc/self/smaps_rollup: a page mapped by 2 processes counts half in each), so the sum over
the 2 processes is the memory the node really holds. ``--size S`` caches at S x S.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def pss_mib() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss in /proc/self/smaps_rollup")


def worker(rank: int, a: argparse.Namespace, shared: bool, out: mp.Queue, barrier) -> None:
    from datasets.folder import CacheSpec, RasterCache, prepare_dataset, shared_cache_path
    from datasets.options import get_opt
    opt, index = prepare_dataset(get_opt(a.ds, argparse.Namespace(data_root=a.root)))
    paths = [s.path for s in index.train + index.test]
    spec = CacheSpec(size=a.size or None,
                     shared=shared_cache_path(f"bench{int(shared)}", paths) if shared else None, builder=rank == 0)
    before = pss_mib()
    cache = RasterCache(paths, opt.band_index, len(opt.band_names), threads=2, spec=spec)
    barrier.wait()                                   # both have mapped it ...
    if shared and rank == 0:
        spec.shared.unlink()                         # ... so the name can go (as training does)
    checksum = float(np.sum([np.asarray(cache[i], dtype=np.float64).sum() for i in range(len(cache))]))
    barrier.wait()                                   # both have touched every page
    out.put((rank, cache.nbytes / 2**20, pss_mib() - before, checksum))
    barrier.wait()


def run(a: argparse.Namespace, shared: bool) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    out, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=worker, args=(r, a, shared, out, barrier)) for r in range(2)]
    for p in procs:
        p.start()
    rows = sorted(out.get() for _ in procs)
    for p in procs:
        p.join()
    assert rows[0][3] == rows[1][3], "the two processes see different data"
    size = rows[0][1]
    return size, rows[0][2], rows[1][2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--ds", default="aid")
    p.add_argument("--size", type=int, default=0, help="cache side (0: native)")
    a = p.parse_args()
    size, s0, s1 = run(a, shared=True)
    _, p0, p1 = run(a, shared=False)
    print(f"--pin-memory cache of {a.ds} ({'native' if not a.size else f'{a.size} px'}): {size:.1f} MiB a copy; "
          f"PSS growth of 2 processes after reading every byte")
    print("| cache | process 0 | process 1 | node total | copies |\n|---|---:|---:|---:|---:|")
    print(f"| shared (/dev/shm, one per node) | {s0:.1f} MiB | {s1:.1f} MiB | {s0 + s1:.1f} MiB | {(s0 + s1) / size:.2f} |")
    print(f"| private (one per process) | {p0:.1f} MiB | {p1:.1f} MiB | {p0 + p1:.1f} MiB | {(p0 + p1) / size:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
