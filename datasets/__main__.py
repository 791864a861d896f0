"""``python -m datasets --ds NAME``: build (demo), scan, split and print a dataset's summary.

``--export-split FILE.csv`` writes the split as a plain CSV, ``path,class,split`` (train / val /
test, paths relative to the dataset folder) plus its ``split_version``, for others to reuse with
``--split-file``; an existing file is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from config.errors import UserError, exit_on_user_error
from datasets.folder import describe, prepare_dataset
from datasets.index import split_csv
from datasets.options import get_opt
from config.atomic import atomic_write_text


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ds", default="demo", help="dataset name, a+b, or a folder of your own imagery")
    p.add_argument("--data-root", help="folder holding the datasets (default $RSSSL_DATA or ./data)")
    p.add_argument("--cache-dir", help="where split records and measured statistics go (default $RSSSL_CACHE or ~/.cache/rs-ssl)")
    p.add_argument("--dtype", help="band group: RGB NIR SAR TEN ALL MS")
    p.add_argument("--rgb-bands", help="for your own multispectral imagery: 1-based R,G,B band numbers, e.g. 4,3,2")
    p.add_argument("--split-file", help="use this split: a path,class,split CSV or a folder of train/val/test lists")
    p.add_argument("--export-split", metavar="FILE.csv", help="write the split as path,class,split to FILE.csv")
    p.add_argument("--overwrite", action="store_true", help="let --export-split replace an existing FILE.csv")
    args = p.parse_args(argv)
    if args.overwrite and not args.export_split:
        raise UserError("--overwrite replaces the --export-split file; give --export-split FILE.csv or drop it")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = get_opt(args.ds, args)
    if args.export_split and opt.parts:
        raise UserError(f"--export-split writes the split of one dataset; --ds {args.ds} pools several: "
                        "export each of them on its own")
    dest = Path(args.export_split).expanduser() if args.export_split else None
    if dest is not None and dest.is_dir():
        raise UserError(f"--export-split {dest} is a folder; give a file name such as {dest / (opt.name + '-split.csv')}")
    if dest is not None and dest.exists() and not args.overwrite:
        raise UserError(f"--export-split {dest} exists; pick a new file name, or add --overwrite to replace it")
    opt, index = prepare_dataset(opt)
    print(describe(opt, index))
    if dest is not None:
        try:
            atomic_write_text(dest, split_csv(opt, index))
        except OSError as err:
            raise UserError(f"--export-split {dest} could not be written ({err.strerror}); pick a writable path") from None
        print(f"split     written to {dest} ({len(index.train) + len(index.test)} files, {index.split_version})")


if __name__ == "__main__":
    main()
