"""Per-band statistics of a dataset's split: print them and save them as JSON.

    python scripts/band_stats.py --ds euroms --data-root ../shared/data            # training split
    python scripts/band_stats.py --ds aid --split test --out aid_test_stats.json

The training split's mean/std are what every run normalises with (measured the same way
by datasets/folder.py and cached per split version); other splits are for comparison
only and are never used for normalisation. Values are in raw units (digital numbers for
Sentinel-2, 0-255 for 8-bit images), per selected band, with min, max and the 1st/99th
percentiles of a per-file sample to spot saturated or dead bands.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.errors import UserError, exit_on_user_error  # noqa: E402
from datasets.folder import STATS_MAX_FILES, band_stats  # noqa: E402
from datasets.index import build_index  # noqa: E402
from datasets.options import get_opt  # noqa: E402
from datasets.reader import read_raw  # noqa: E402
from config.atomic import atomic_write_text  # noqa: E402

SPLITS = ("train", "val", "pool", "test", "all")


def _range_stats(opt, samples, max_files: int | None, seed: int = 0) -> dict[str, list[float]]:
    """Min, max and 1st/99th percentiles per band over (a seeded subset of) the files."""
    paths = [s.path for s in samples]
    if max_files is not None and len(paths) > max_files:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), max_files, replace=False))]
    lo, hi, p1, p99 = [], [], [], []
    for p in paths:
        a = read_raw(p, opt.band_index, len(opt.band_names)).reshape(opt.n_bands, -1)
        lo.append(a.min(1))
        hi.append(a.max(1))
        q = np.percentile(a, [1, 99], axis=1)
        p1.append(q[0])
        p99.append(q[1])
    return {"min": np.min(lo, 0).tolist(), "max": np.max(hi, 0).tolist(),
            "p1_median": np.median(p1, 0).tolist(), "p99_median": np.median(p99, 0).tolist()}


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ds", required=True, help="dataset name or a folder of your own imagery")
    p.add_argument("--data-root", help="folder holding the datasets (default $RSSSL_DATA or ./data)")
    p.add_argument("--cache-dir", help="split records (default $RSSSL_CACHE or ~/.cache/rs-ssl)")
    p.add_argument("--dtype", help="band group: RGB NIR SAR TEN ALL MS")
    p.add_argument("--rgb-bands", help="your own multispectral imagery: 1-based R,G,B band numbers")
    p.add_argument("--split-file", help="a path,class,split CSV or a folder of train/val/test lists")
    p.add_argument("--split", default="train", choices=SPLITS,
                   help="train (what runs normalise with), val, pool (train minus val), test, or all files")
    p.add_argument("--max-files", type=int, default=STATS_MAX_FILES,
                   help="measure a seeded random subset of this many files (0: all); runs use the default")
    p.add_argument("--out", help="JSON file to write (default: band_stats_<ds>_<split>_<split version>.json "
                                 "in the current folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.max_files < 0:
        raise UserError(f"--max-files {args.max_files} must be >= 0 (0 measures every file)")
    opt = get_opt(args.ds, args)
    if opt.parts:
        raise UserError(f"--ds {args.ds} pools datasets, each normalised with its own statistics; "
                        "run band_stats.py once per dataset")
    index = build_index(opt)
    samples = index.train + index.test if args.split == "all" else index.split(args.split)
    if not samples:
        raise UserError(f"the {args.split} split of {opt.name} is empty; pick another --split")
    max_files = args.max_files or None
    mean, std, n = band_stats(opt, samples, max_files)
    ranges = _range_stats(opt, samples, max_files)
    out = {"dataset": opt.name, "root": str(opt.root), "split": args.split, "split_version": index.split_version,
           "bands": list(opt.bands), "files": n, "of": len(samples), "mean": mean.tolist(), "std": std.tolist(),
           **ranges}
    w = max(len(b) for b in opt.bands)
    print(f"{opt.name} {args.split} split ({index.split_version}): {n} of {len(samples)} files, raw units")
    print(f"{'band':<{w}}  {'mean':>10}  {'std':>10}  {'min':>8}  {'max':>8}")
    for i, b in enumerate(opt.bands):
        print(f"{b:<{w}}  {mean[i]:>10.2f}  {std[i]:>10.2f}  {ranges['min'][i]:>8g}  {ranges['max'][i]:>8g}")
    dest = Path(args.out or f"band_stats_{opt.name}_{args.split}_{index.split_version}.json").expanduser()
    try:
        atomic_write_text(dest, json.dumps(out, indent=1))
    except OSError as err:
        raise UserError(f"--out {dest} could not be written ({err.strerror}); pick a writable path") from None
    print(f"saved to {dest}")
    return out


if __name__ == "__main__":
    main()
