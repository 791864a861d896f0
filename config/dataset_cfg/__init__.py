"""Dataset option modules (static tables) and :class:`DatasetOpt`, the options of one dataset.

One module per dataset (``opt_<name>.py``): class table, bands, input size, defaults.
Nothing here touches the files: turning ``--ds`` (a module name, ``a+b``, or a folder of
the user's own imagery) into a :class:`DatasetOpt` is the data layer's job
(:func:`datasets.options.get_opt`), and this package imports nothing from ``datasets``.

Per-band mean/std are not constants of a module: they are measured on each dataset's
training split (``datasets.folder.prepare_dataset``) and cached per split version, so
no statistic of a test image reaches the normalisation. ImageNet's mean/std
(``config/baselines.py``) are the one documented exception: external constants that
ImageNet weights expect, used only by runs that start from those weights.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from config.errors import UserError

DEFAULT_DATA_ROOT = "./data"
DEFAULT_CACHE = "~/.cache/rs-ssl"
RASTER_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
DTYPE_SIZES = {"RGB": 3, "NIR": 1, "SAR": 1, "TEN": 10, "ALL": 12, "MS": 13}
VAL_FRACTION = 0.1     # share of each class's training split kept as the validation slice


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
    mean: np.ndarray | None                  # per selected band, raw units; None until measured
    std: np.ndarray | None
    input_size: int
    batch_size: int
    lr: float
    train_fraction: float = 0.8
    val_fraction: float = VAL_FRACTION
    split_lists: str = ""                    # file-name prefix of the Neumann et al. split lists
    split_file: Path | None = None           # --split-file: a CSV or a folder of split lists
    url: str = ""
    generate: bool = False                   # the built-in demo: generate when missing
    cache_dir: Path = field(default_factory=lambda: Path(DEFAULT_CACHE).expanduser())
    parts: tuple["DatasetOpt", ...] = ()     # non-empty for pooled datasets (a+b)
    scenes: str = ""                         # what the images show: releases of one dataset share it

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


def option_module(name: str) -> ModuleType:
    """The option module of a named dataset (``--ds NAME``)."""
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


