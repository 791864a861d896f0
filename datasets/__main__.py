"""``python -m datasets --ds NAME``: build (demo), scan, split and print a dataset's summary."""
from __future__ import annotations

import argparse
import logging

from config.dataset_cfg import get_opt
from config.errors import exit_on_user_error
from datasets.folder import describe, prepare_dataset


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ds", default="demo", help="dataset name, a+b, or a folder of your own imagery")
    p.add_argument("--data-root", help="folder holding the datasets (default $RSSSL_DATA or ./data)")
    p.add_argument("--cache-dir", help="where split records and measured statistics go (default $RSSSL_CACHE or ~/.cache/rs-ssl)")
    p.add_argument("--dtype", help="band group: RGB NIR SAR TEN ALL MS")
    p.add_argument("--rgb-bands", help="for your own multispectral imagery: 1-based R,G,B band numbers, e.g. 4,3,2")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt, index = prepare_dataset(get_opt(args.ds, args))
    print(describe(opt, index))


if __name__ == "__main__":
    main()
