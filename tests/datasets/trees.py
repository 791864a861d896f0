"""Tiny class-per-folder trees on disk for split and statistics tests (4x4 pixels, fast to write)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal
from PIL import Image

from config.category import EUROSAT


def write_tif(path: Path, bands: int, value: np.ndarray | float, dtype=gdal.GDT_UInt16, size: int = 4) -> None:
    """A GeoTIFF of ``bands`` x size x size: a constant, or the given C x H x W array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((bands, size, size), value, dtype=np.float64) if np.ndim(value) == 0 else np.asarray(value)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, bands, dtype)
    for b in range(bands):
        ds.GetRasterBand(b + 1).WriteArray(np.asarray(arr[b]))
    ds = None


def write_jpg(path: Path, value: int = 100, size: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def eurosat_tree(data_root: Path, per_class: int, ext: str) -> Path:
    """EuroSAT's layout (``<Class>/<Class>_<n>``) under the folder names eurorgb / euroms look for."""
    folder = data_root / ("eurosat_rgb" if ext == ".jpg" else "eurosat_ms")
    for c in EUROSAT:
        for n in range(1, per_class + 1):
            if ext == ".jpg":
                write_jpg(folder / c / f"{c}_{n}.jpg")
            else:
                write_tif(folder / c / f"{c}_{n}.tif", 13, 1000 + n)
    return folder


def class_tree(root: Path, sizes: dict[str, int], bands: int = 3, seed: int = 0) -> Path:
    """A user's own class-per-folder tree of .tif files with random UInt16 values."""
    rng = np.random.default_rng(seed)
    for c, n in sizes.items():
        for i in range(n):
            write_tif(root / c / f"{c.lower()}_{i:03d}.tif", bands, rng.integers(0, 4000, (bands, 4, 4)))
    return root
