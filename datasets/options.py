"""``--ds`` plus flags -> :class:`~config.dataset_cfg.DatasetOpt`: where the files are, which bands.

``--ds`` is an option module (``config/dataset_cfg/opt_<name>.py``), several joined with
``+`` to pool them for pretraining (``aid+nr``), or a path to the user's own imagery (a
class-per-folder tree, or a folder of unlabelled images for pretraining only). Flags given
on the command line override the module's defaults. This lives in the data layer because
it looks at the files (which folder exists, how many bands the user's rasters have);
``config`` only holds the static tables.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from config.dataset_cfg import (
    DTYPE_SIZES, RASTER_EXTENSIONS, DatasetOpt, available, cache_root, data_root, option_module,
)
from config.errors import UserError
from datasets.index import detect_layout
from datasets.reader import probe


def _flag(args: Any, name: str) -> Any:
    return getattr(args, name, None) if args is not None else None


def _select_bands(name: str, dtypes: dict[str, tuple[str, ...]], dtype: str | None,
                  default: str) -> tuple[str, tuple[str, ...]]:
    dtype = (dtype or default).upper()
    if dtype not in DTYPE_SIZES:
        raise UserError(f"--dtype {dtype!r} is not a band group; use one of {', '.join(DTYPE_SIZES)}")
    if dtype not in dtypes:
        raise UserError(f"--dtype {dtype} is not available for --ds {name}; it offers {', '.join(dtypes)}")
    return dtype, tuple(dtypes[dtype])


def _split_file(args: Any) -> Path | None:
    value = _flag(args, "split_file")
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"--split-file {value} does not exist; give a path,class,split CSV "
                        "(python -m datasets --export-split writes one) or a folder of train/val/test lists")
    return path


def _from_module(name: str, args: Any) -> DatasetOpt:
    mod = option_module(name)
    if _flag(args, "rgb_bands"):
        raise UserError(f"--rgb-bands is for your own imagery; --ds {name} knows its true-colour bands: drop it")
    root = data_root(args)
    found = next((root / d for d in mod.DIRNAMES if (root / d).is_dir()), None)
    generate = bool(getattr(mod, "GENERATE", False))
    if found is None:
        if not generate:
            tried = ", ".join(str(root / d) for d in mod.DIRNAMES)
            raise UserError(
                f"dataset {name} not found: looked in {tried}; get it from {mod.URL}, unpack it "
                "there, or point --data-root (or $RSSSL_DATA) at the folder that holds it")
        found = root / mod.DIRNAMES[0]
    dtype, bands = _select_bands(name, mod.DTYPES, _flag(args, "dtype"), mod.DEFAULT_DTYPE)
    return DatasetOpt(
        name=name, title=mod.TITLE, root=found, classes=tuple(mod.CLASSES),
        extensions=tuple(mod.EXTENSIONS), band_names=tuple(mod.BAND_NAMES), bands=bands,
        dtype=dtype, rgb_bands=tuple(mod.RGB_BANDS) if mod.RGB_BANDS else None,
        mean=None, std=None, input_size=int(mod.INPUT_SIZE), batch_size=int(mod.BATCH_SIZE),
        lr=float(mod.LR), train_fraction=float(mod.TRAIN_FRACTION),
        split_lists=str(getattr(mod, "SPLIT_LISTS", "")), split_file=_split_file(args), url=mod.URL,
        generate=generate, cache_dir=cache_root(args), scenes=str(getattr(mod, "SCENES", name)))


def _from_path(path: Path, args: Any) -> DatasetOpt:
    """The user's own imagery: band count, names and statistics come from the data."""
    if not path.is_dir():
        raise UserError(f"--ds {path} is not a folder; give a class-per-folder tree or a folder of images")
    classes, first = detect_layout(path)
    info = probe(first)
    band_names = tuple(f"B{i + 1}" for i in range(info.bands))
    dtypes = {"MS": band_names} if info.bands != 3 else {"RGB": band_names}
    if info.bands == 1:
        dtypes = {"NIR": band_names, "SAR": band_names}
    default = next(iter(dtypes))
    dt = _flag(args, "dtype")
    if dt and dt.upper() not in dtypes:
        raise UserError(f"--dtype {dt} does not fit {path}: its files have {info.bands} band(s); "
                        f"leave --dtype out or use {default}")
    dtype, bands = (dt.upper(), band_names) if dt else (default, band_names)
    rgb = _flag(args, "rgb_bands")
    rgb_bands = None
    if rgb:
        try:
            ids = [int(v) for v in str(rgb).split(",")]
            if not all(1 <= i <= info.bands for i in ids):    # band 0 would pick the last band
                raise IndexError
            rgb_bands = tuple(band_names[i - 1] for i in ids)
        except (ValueError, IndexError):
            raise UserError(f"--rgb-bands {rgb!r} must be three 1-based band numbers such as 4,3,2 "
                            f"within 1..{info.bands}") from None
        if len(rgb_bands) != 3:
            raise UserError(f"--rgb-bands {rgb!r} must name exactly three bands, e.g. 4,3,2")
    elif info.bands == 3:
        rgb_bands = band_names
    size = info.height if info.height == info.width else min(info.height, info.width)
    return DatasetOpt(
        name=path.name or "user", title=f"user imagery at {path}", root=path,
        classes=classes, extensions=RASTER_EXTENSIONS, band_names=band_names, bands=bands,
        dtype=dtype, rgb_bands=rgb_bands, mean=None, std=None, input_size=size,
        batch_size=64, lr=1e-3, split_file=_split_file(args), url="", cache_dir=cache_root(args),
        scenes=f"folder:{path.resolve()}")


def _apply_flags(opt: DatasetOpt, args: Any) -> DatasetOpt:
    over = {}
    for flag, attr in (("input_size", "input_size"), ("bs", "batch_size"), ("lr", "lr")):
        value = _flag(args, flag)
        if value is not None:
            over[attr] = value
    if "input_size" in over and int(over["input_size"]) < 8:
        raise UserError(f"--input_size {over['input_size']} is too small; use at least 8 pixels")
    return replace(opt, **over) if over else opt


def get_opt(ds: str, args: Any = None) -> DatasetOpt:
    """Options for ``--ds``: module defaults, then the flags given on the command line."""
    ds = str(ds).strip()
    if not ds:
        raise UserError(f"--ds is empty; use one of {', '.join(available())} or a folder path")
    looks_like_path = os.sep in ds or ds.startswith(".") or Path(ds).is_dir() and ds not in available()
    if looks_like_path:
        return _apply_flags(_from_path(Path(ds).expanduser(), args), args)
    if "+" in ds:
        if _flag(args, "split_file") is not None:
            raise UserError(f"--split-file names the split of one dataset; --ds {ds} pools several "
                            "(each keeps its own split): drop --split-file or pretrain on one dataset")
        parts = tuple(_apply_flags(_from_module(p, args), args) for p in ds.split("+") if p)
        if len(parts) < 2:
            raise UserError(f"--ds {ds!r}: join at least two dataset names with '+', e.g. aid+nr")
        nb = {p.n_bands for p in parts}
        if len(nb) != 1:
            raise UserError(f"--ds {ds}: the pooled datasets have different band counts "
                            f"({', '.join(f'{p.name} {p.n_bands}' for p in parts)}); pick a --dtype they share, e.g. RGB")
        first = parts[0]
        return replace(first, name=ds, title=" + ".join(p.title for p in parts), classes=None,
                       mean=None, std=None, parts=parts, rgb_bands=first.rgb_bands, split_lists="")
    return _apply_flags(_from_module(ds, args), args)
