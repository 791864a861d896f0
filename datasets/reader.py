"""Read rasters into channels-first arrays: GDAL for GeoTIFF, Pillow for jpg/png.

GeoTIFFs may hold any band count and UInt8/UInt16/Int16/Float32 data. ``read_raw`` keeps
the file's native dtype (what the in-memory cache stores: EuroSAT's 27,000 x 13 x 64 x 64
UInt16 is 2.9 GB, twice that as float32); ``read`` returns float32. Nothing is squeezed to
uint8: normalisation happens later, per band, in float.

Pixels that are not measurements are refused, naming the file (policy: refuse, never guess a
fill value): a GeoTIFF pixel equal to its band's nodata tag (e.g. -9999) and a NaN or infinite
value. Filled in, they would enter the statistics and the features as numbers; fill them
(``gdal_fillnodata.py``) or remove the file. A nodata tag without such a pixel is fine.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from osgeo import gdal
from PIL import Image


from config.errors import UserError

gdal.UseExceptions()
GDAL_SUFFIXES = (".tif", ".tiff")
MAX_PIXELS_ENV = "RSSSL_MAX_IMAGE_PIXELS"
PIL_DEFAULT_MAX_PIXELS = 89_478_485       # Pillow's own guard against decompression bombs
# the limit is enforced in _read_pil with a sentence; Pillow's warning (at 1x the limit) would only repeat it
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class RasterInfo:
    bands: int
    height: int
    width: int
    dtype: np.dtype


def _open(path: Path) -> gdal.Dataset:
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{path} is an empty file; re-download or remove it")
    try:
        ds = gdal.Open(str(path), gdal.GA_ReadOnly)
    except RuntimeError as err:
        raise UserError(f"{path} is not a readable raster ({str(err).strip()}); remove or replace the file") from None
    if ds is None:
        raise UserError(f"{path} is not a readable raster; remove or replace the file")
    return ds


def probe(path: Path) -> RasterInfo:
    """Band count, size and data type of one file, without reading its pixels."""
    path = Path(path)
    if path.suffix.lower() in GDAL_SUFFIXES:
        ds = _open(path)
        dt = gdal.GetDataTypeName(ds.GetRasterBand(1).DataType) if ds.RasterCount else "Byte"
        np_dt = np.dtype(_GDAL_TYPES.get(dt, "float32"))
        return RasterInfo(ds.RasterCount, ds.RasterYSize, ds.RasterXSize, np_dt)
    arr = read_raw(path)
    return RasterInfo(arr.shape[0], arr.shape[1], arr.shape[2], arr.dtype)


_GDAL_TYPES = {"Byte": "uint8", "UInt16": "uint16", "Int16": "int16", "UInt32": "uint32", "Int32": "int32",
               "Float32": "float32", "Float64": "float64"}
_PIL_TYPES = {"I;16": "uint16", "I": "int32", "F": "float32"}     # modes read as they are (others: as RGB uint8)


@dataclass(frozen=True)
class RasterHeader:
    """What a file's header says, without its pixels."""

    bands: int
    pixel_type: str          # numpy dtype name of the values read_raw returns
    nodata: bool             # a GeoTIFF band carries a nodata tag

    @property
    def needs_pixel_check(self) -> bool:
        """Whether only a full read can tell that every pixel is a measurement (float values, nodata tags)."""
        return self.nodata or self.pixel_type.startswith("float")


def header(path: Path) -> RasterHeader:
    """Band count, pixel type and nodata tags of ``path`` from its header only (cheap)."""
    path = Path(path)
    if path.suffix.lower() in GDAL_SUFFIXES:
        ds = _open(path)
        n = ds.RasterCount
        dt = gdal.GetDataTypeName(ds.GetRasterBand(1).DataType) if n else "Byte"
        nodata = any(ds.GetRasterBand(b + 1).GetNoDataValue() is not None for b in range(n))
        return RasterHeader(n, _GDAL_TYPES.get(dt, "float32"), nodata)
    from PIL import UnidentifiedImageError
    try:
        with Image.open(path) as im:
            one = im.mode in ("L", "I;16", "I", "F")                          # other modes are read as RGB
            return RasterHeader(1 if one else 3, _PIL_TYPES.get(im.mode, "uint8"), False)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise UserError(f"{path} is not a readable image ({err}); remove or replace the file") from None


def band_count(path: Path) -> int:
    """Bands ``read_raw`` would return for ``path``, from the file's header only (cheap)."""
    return header(path).bands


def read_raw(path: Path, band_index: Sequence[int] | None = None, expect_bands: int | None = None) -> np.ndarray:
    """Pixels of ``path`` as a C x H x W array in the file's own dtype.

    ``band_index``: 0-based bands to keep, in that order (None: all). ``expect_bands``: the
    band count the dataset's option module declares; a file that differs is an error.
    """
    path = Path(path)
    if path.suffix.lower() in GDAL_SUFFIXES:
        ds = _open(path)
        n = ds.RasterCount
        if expect_bands is not None and n != expect_bands:
            raise UserError(f"{path} has {n} band(s) but the dataset expects {expect_bands}; "
                            "check --ds / --dtype or remove the file")
        try:
            if band_index is None or list(band_index) == list(range(n)):
                arr = ds.ReadAsArray()
            else:
                arr = ds.ReadAsArray(band_list=[int(i) + 1 for i in band_index])
        except RuntimeError as err:
            raise UserError(f"{path} could not be read ({str(err).strip()}): the file is probably "
                            "truncated; re-download or remove it") from None
        if arr is None:
            raise UserError(f"{path} could not be read: the file is probably truncated; re-download or remove it")
        if arr.ndim == 2:
            arr = arr[None]
        bands = list(range(n)) if band_index is None else [int(i) for i in band_index]
        for j, b in enumerate(bands):
            tag = ds.GetRasterBand(b + 1).GetNoDataValue()
            if tag is not None:
                hits = int(np.isnan(arr[j]).sum() if np.isnan(tag) else (arr[j] == tag).sum())
                if hits:
                    raise UserError(f"{path} has {hits} pixel(s) at its nodata value {tag:g} in band {b + 1}: they are "
                                    "gaps, not measurements; fill them (gdal_fillnodata.py) or remove the file")
        return _finite(path, arr)
    return _finite(path, _read_pil(path, band_index, expect_bands))


def _finite(path: Path, arr: np.ndarray) -> np.ndarray:
    """``arr``, refused when it holds NaN or infinite values (float files only)."""
    if arr.dtype.kind == "f":
        bad = int((~np.isfinite(arr)).sum())
        if bad:
            raise UserError(f"{path} holds {bad} NaN or infinite pixel value(s): they are not measurements; fill "
                            "them or remove the file")
    return arr


def max_image_pixels() -> int | None:
    """Largest jpg/png (width x height) read: ``$RSSSL_MAX_IMAGE_PIXELS``, ``none`` for no limit,
    else Pillow's default guard against decompression bombs."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return PIL_DEFAULT_MAX_PIXELS
    if text.lower() == "none":
        return None
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_PIXELS_ENV}={text} must be a number of pixels (e.g. 200000000) or 'none'")
    return value


def _read_pil(path: Path, band_index: Sequence[int] | None, expect_bands: int | None) -> np.ndarray:
    from PIL import UnidentifiedImageError

    limit = max_image_pixels()
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with Image.open(path) as im:
            pixels = im.size[0] * im.size[1]
            if limit is not None and pixels > limit:
                raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit of {limit} pixels")
            im.load()
            if im.mode not in ("L", "RGB", "I;16", "I", "F"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels"
        raise UserError(f"{path} has {size}, over the limit of {limit:,} that guards against decompression bombs; "
                        f"if you trust the file, raise it with {MAX_PIXELS_ENV}="
                        f"{found.group(1) if found else 'N'} (or {MAX_PIXELS_ENV}=none)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise UserError(f"{path} is not a readable image ({err}); remove or replace the file") from None
    arr = arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))
    if expect_bands is not None and arr.shape[0] != expect_bands:
        if arr.shape[0] == 1 and expect_bands == 3:
            arr = np.repeat(arr, 3, axis=0)   # a grayscale jpg in an RGB dataset
        else:
            raise UserError(f"{path} has {arr.shape[0]} band(s) but the dataset expects {expect_bands}; "
                            "check --ds / --dtype or remove the file")
    if band_index is not None and list(band_index) != list(range(arr.shape[0])):
        arr = arr[list(band_index)]
    return arr


def read(path: Path, band_index: Sequence[int] | None = None, expect_bands: int | None = None) -> np.ndarray:
    """Like :func:`read_raw` but float32 (raw units, not normalised)."""
    return read_raw(path, band_index, expect_bands).astype(np.float32, copy=False)
