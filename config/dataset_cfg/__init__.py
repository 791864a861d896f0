"""Dataset option modules and :func:`get_opt`, which turns ``--ds`` plus flags into options.

``--ds`` is one of the option modules here (``opt_<name>.py``), several joined with ``+``
to pool them for pretraining (``aid+nr``), or a path to the user's own imagery (a
class-per-folder tree, or a folder of unlabelled images for pretraining only).
Flags given on the command line override the module's defaults.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from config.errors import UserError

DEFAULT_DATA_ROOT = "./data"
DEFAULT_CACHE = "~/.cache/rs-ssl"
RASTER_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
DTYPE_SIZES = {"RGB": 3, "NIR": 1, "SAR": 1, "TEN": 10, "ALL": 12, "MS": 13}


@dataclass
class DatasetOpt:
    """Everything the data layer needs to know about one dataset (or a pool of them)."""

    name: str
    title: str
    root: Path
    classes: tuple[str, ...] | None          # None: unlabelled imagery (pretraining only)
    extensions: tuple[str, ...]
    band_names: tuple[str, ...]              # bands in the file, in file order
    bands: tuple[str, ...]                   # selected bands, in model-input order
    dtype: str
    rgb_bands: tuple[str, str, str] | None
    mean: np.ndarray | None                  # per selected band, raw units (None: measure)
    std: np.ndarray | None
    input_size: int
    batch_size: int
    lr: float
    train_fraction: float = 0.8
    url: str = ""
    generate: bool = False                   # the built-in demo: generate when missing
    cache_dir: Path = field(default_factory=lambda: Path(DEFAULT_CACHE).expanduser())
    parts: tuple["DatasetOpt", ...] = ()     # non-empty for pooled datasets (a+b)

    @property
    def band_index(self) -> tuple[int, ...]:
        """0-based positions of the selected bands in the file."""
        return tuple(self.band_names.index(b) for b in self.bands)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def rgb_index(self) -> tuple[int, int, int] | None:
        """Positions of R, G, B among the selected bands (None if not all selected)."""
        if not self.rgb_bands or not all(b in self.bands for b in self.rgb_bands):
            return None
        return tuple(self.bands.index(b) for b in self.rgb_bands)  # type: ignore[return-value]

    @property
    def labelled(self) -> bool:
        return self.classes is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    @property
    def cache_key(self) -> str:
        """Folder name under the cache dir for this dataset's split and statistics."""
        import hashlib
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]
        return f"{self.name.replace('/', '_')}-{digest}"


def available() -> list[str]:
    """Names of the option modules (``--ds`` values)."""
    pkg = Path(__file__).parent
    return sorted(m.name[4:] for m in pkgutil.iter_modules([str(pkg)]) if m.name.startswith("opt_"))


def _module(name: str) -> ModuleType:
    if name not in available():
        raise UserError(
            f"--ds {name!r} is not a known dataset; use one of {', '.join(available())}, "
            "several joined with '+', or a path to a folder of your own imagery")
    return importlib.import_module(f"config.dataset_cfg.opt_{name}")


def _flag(args: Any, name: str) -> Any:
    return getattr(args, name, None) if args is not None else None


def data_root(args: Any = None) -> Path:
    """``--data-root``, else ``$RSSSL_DATA``, else ``./data``."""
    return Path(_flag(args, "data_root") or os.environ.get("RSSSL_DATA") or DEFAULT_DATA_ROOT).expanduser()


def cache_root(args: Any = None) -> Path:
    """``--cache-dir``, else ``$RSSSL_CACHE``, else ``~/.cache/rs-ssl``."""
    return Path(_flag(args, "cache_dir") or os.environ.get("RSSSL_CACHE") or DEFAULT_CACHE).expanduser()


def _select_bands(name: str, band_names: tuple[str, ...], dtypes: dict[str, tuple[str, ...]],
                  dtype: str | None, default: str) -> tuple[str, tuple[str, ...]]:
    dtype = (dtype or default).upper()
    if dtype not in DTYPE_SIZES:
        raise UserError(f"--dtype {dtype!r} is not a band group; use one of {', '.join(DTYPE_SIZES)}")
    if dtype not in dtypes:
        raise UserError(f"--dtype {dtype} is not available for --ds {name}; it offers {', '.join(dtypes)}")
    return dtype, tuple(dtypes[dtype])


def _from_module(name: str, args: Any) -> DatasetOpt:
    mod = _module(name)
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
    dtype, bands = _select_bands(name, mod.BAND_NAMES, mod.DTYPES, _flag(args, "dtype"), mod.DEFAULT_DTYPE)
    idx = [mod.BAND_NAMES.index(b) for b in bands]
    mean = None if mod.MEAN is None else np.asarray(mod.MEAN, dtype=np.float64)[idx]
    std = None if mod.STD is None else np.asarray(mod.STD, dtype=np.float64)[idx]
    return DatasetOpt(
        name=name, title=mod.TITLE, root=found, classes=tuple(mod.CLASSES),
        extensions=tuple(mod.EXTENSIONS), band_names=tuple(mod.BAND_NAMES), bands=bands,
        dtype=dtype, rgb_bands=tuple(mod.RGB_BANDS) if mod.RGB_BANDS else None,
        mean=mean, std=std, input_size=int(mod.INPUT_SIZE), batch_size=int(mod.BATCH_SIZE),
        lr=float(mod.LR), train_fraction=float(mod.TRAIN_FRACTION), url=mod.URL,
        generate=generate, cache_dir=cache_root(args))


def _from_path(path: Path, args: Any) -> DatasetOpt:
    """The user's own imagery: band count, names and statistics come from the data."""
    from datasets.index import detect_layout  # local import: datasets depends on config
    from datasets.reader import probe

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
        batch_size=64, lr=1e-3, url="", cache_dir=cache_root(args))


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
        parts = tuple(_apply_flags(_from_module(p, args), args) for p in ds.split("+") if p)
        if len(parts) < 2:
            raise UserError(f"--ds {ds!r}: join at least two dataset names with '+', e.g. aid+nr")
        nb = {p.n_bands for p in parts}
        if len(nb) != 1:
            raise UserError(f"--ds {ds}: the pooled datasets have different band counts "
                            f"({', '.join(f'{p.name} {p.n_bands}' for p in parts)}); pick a --dtype they share, e.g. RGB")
        first = parts[0]
        return replace(first, name=ds, title=" + ".join(p.title for p in parts), classes=None,
                       mean=None, std=None, parts=parts, rgb_bands=first.rgb_bands)
    return _apply_flags(_from_module(ds, args), args)
