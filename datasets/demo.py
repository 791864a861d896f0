"""The built-in demo dataset: synthetic Sentinel-2-like scenes, deterministic from a seed.

Six land-cover classes (``config.category.DEMO``) as a class-per-folder tree of 13-band
UInt16 GeoTIFFs laid out like EuroSAT (``<Class>/<Class>_<n>.tif``, bands B01..B12 then
B8A last, 10 m pixels in UTM zone 32N). It exists so the harness runs anywhere without
a download; it is not a substitute for real imagery.

Each scene is a linear mixture of material spectra (L1C-like digital numbers close to
EuroSAT's per-class means) weighted by abundance maps that carry the class's spatial
structure. The classes are built so that neither cue alone is enough:

- Water: water and turbid water, smooth low-frequency ripples, sometimes a vegetated shore.
- Forest: blobby canopy (crowns lit, gaps in shadow) with a few grassy clearings.
- Fields: parallel stripes of two alternating crops / soil, random orientation and period.
- Urban: a rotated grid of roof blocks (some green) separated by asphalt streets.
- Roads: 1-3 thin asphalt or concrete lines crossing patchy vegetation.
- BareSoil: soil with a smooth moisture gradient, fine grain and sparse vegetation.

Roads and Urban share asphalt and concrete, Fields and Forest and Roads share
vegetation, Fields and BareSoil share soil, so the mean spectrum of an image is not
enough to name its class: spatial structure matters.

Within a class every image differs by illumination gain (0.8-1.2), haze, per-material
spectral jitter, orientation, scale and per-pixel noise; 20 m and 60 m bands are
block-averaged to their native resolution as in Level-1C products.

Command line::

    python -m datasets.demo --out data/rsssl_demo [--per-class 60] [--seed 0] [--size 64]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from osgeo import gdal, osr

from config.category import DEMO
from config.dataset_cfg.opt_euroms import BAND_NAMES
from config.errors import UserError, exit_on_user_error

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
README_NAME = "README.txt"
EPSG = 32632
PIXEL_SIZE_M = 10.0

# Native resolution (m) of each band, in file order B01..B12, B8A.
BAND_RESOLUTION_M = (60, 10, 10, 10, 20, 20, 20, 10, 60, 60, 20, 20, 20)

# Material spectra in Level-1C digital numbers (top-of-atmosphere reflectance x 10000),
# file order B01..B12, B8A. Values follow EuroSAT's per-class means:
# water dark beyond red, vegetation with a strong red edge (B05 -> B07), soil rising
# into the SWIR (B11), roofs flat and bright, asphalt flat and grey.
MATERIALS: dict[str, tuple[int, ...]] = {
    "water":   (1199, 938, 783, 506, 515, 378, 377, 312, 91, 8, 109, 72, 291),
    "turbid":  (1250, 1060, 960, 760, 770, 560, 540, 470, 120, 8, 180, 110, 430),
    "forest":  (1095, 797, 670, 396, 734, 2113, 2725, 2677, 848, 9, 1314, 523, 3060),
    "crop":    (1300, 1000, 900, 560, 1150, 2800, 3450, 3400, 1050, 13, 2000, 950, 3800),
    "grass":   (1320, 1090, 1030, 880, 1300, 2100, 2450, 2420, 980, 15, 2250, 1350, 2700),
    "soil":    (1500, 1330, 1420, 1620, 1880, 2120, 2300, 2330, 820, 14, 3150, 2550, 2520),
    "wetsoil": (1330, 1120, 1160, 1290, 1460, 1610, 1720, 1750, 610, 14, 1890, 1400, 1890),
    "roof":    (1750, 1600, 1560, 1580, 1650, 1800, 1900, 1850, 620, 13, 2150, 1900, 1950),
    "asphalt": (1450, 1240, 1180, 1170, 1260, 1380, 1470, 1450, 500, 12, 1650, 1480, 1520),
}
_NAMES = tuple(MATERIALS)
_SPECTRA = np.array([MATERIALS[m] for m in _NAMES], dtype=np.float64)  # (K, 13)
_INDEX = {m: k for k, m in enumerate(_NAMES)}

# Additive haze (path radiance) at full strength, strongest in the blue end.
_HAZE = np.array((260, 210, 160, 110, 80, 55, 45, 40, 15, 0, 10, 5, 35), dtype=np.float64)
# Sensor noise: floor (DN) plus a fraction of the signal.
_NOISE_FLOOR = np.array((12, 14, 14, 16, 16, 18, 20, 22, 10, 1, 18, 16, 22), dtype=np.float64)
_NOISE_REL = 0.012

Scene = tuple[np.ndarray, np.ndarray]  # (abundances (K, H, W), shading (H, W))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (periodic), rescaled to zero mean and unit std."""
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-12)


def _rotated(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates about the image centre, rotated by ``angle`` (radians)."""
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - c
    cos, sin = np.cos(angle), np.sin(angle)
    return x * cos + y * sin, -x * sin + y * cos


def _stripes(u: np.ndarray, period: float, duty: float, phase: float) -> np.ndarray:
    """Anti-aliased coverage (0..1) of stripes ``duty * period`` pixels wide along ``u``."""
    t = np.mod(u / period + phase, 1.0)
    edge = period * np.minimum(np.minimum(t, np.abs(t - duty)), 1.0 - t)
    inside = t < duty
    return np.clip(np.where(inside, 0.5 + edge, 0.5 - edge), 0.0, 1.0)


def _softmax_cover(rng: np.random.Generator, size: int, names: tuple[str, ...],
                   sigma: float, bias: dict[str, float]) -> np.ndarray:
    """Patchy land cover: per-pixel softmax over one smooth random field per material."""
    logits = np.stack([2.0 * _smooth_noise(rng, size, sigma) + bias.get(m, 0.0) for m in names])
    weights = np.exp(logits - logits.max(axis=0))
    weights /= weights.sum(axis=0)
    abund = np.zeros((len(_NAMES), size, size))
    for m, w in zip(names, weights):
        abund[_INDEX[m]] += w
    return abund


def _water(rng: np.random.Generator, size: int) -> Scene:
    """Open water: turbidity plumes, smooth low-frequency ripples, sometimes a shore."""
    abund = np.zeros((len(_NAMES), size, size))
    turbid = np.clip(rng.uniform(0.0, 0.4) + 0.2 * _smooth_noise(rng, size, 12.0), 0.0, 1.0)
    abund[_INDEX["water"]] = 1.0 - turbid
    abund[_INDEX["turbid"]] = turbid
    shade = np.ones((size, size))
    for _ in range(3):
        u, _v = _rotated(size, rng.uniform(0, np.pi))
        shade += rng.uniform(0.02, 0.05) * np.sin(2 * np.pi * u / rng.uniform(12, 40) + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.3:
        u, _v = _rotated(size, rng.uniform(0, 2 * np.pi))
        d = u + 3.0 * _smooth_noise(rng, size, 6.0)
        threshold = np.quantile(d, 1.0 - rng.uniform(0.03, 0.15))
        land = np.clip(d - threshold + 0.5, 0.0, 1.0)
        cover = _softmax_cover(rng, size, ("grass", "forest"), 4.0, {})
        abund = abund * (1.0 - land) + cover * land
    return abund, shade


def _forest(rng: np.random.Generator, size: int) -> Scene:
    """Closed canopy: blobby crowns lit and shaded, mixed conifer/broadleaf, grassy clearings."""
    crowns = _smooth_noise(rng, size, rng.uniform(1.0, 2.2))
    stands = _smooth_noise(rng, size, 10.0)
    gap_q = np.quantile(crowns, rng.uniform(0.03, 0.25))
    gaps = np.clip((gap_q - crowns) / 0.5 + 0.5, 0.0, 1.0)
    abund = np.zeros((len(_NAMES), size, size))
    broadleaf = rng.uniform(0.0, 0.5)
    abund[_INDEX["forest"]] = (1.0 - gaps) * (1.0 - broadleaf)
    abund[_INDEX["crop"]] = (1.0 - gaps) * broadleaf
    abund[_INDEX["grass"]] = gaps
    shade = 1.0 + rng.uniform(0.12, 0.22) * crowns + 0.06 * stands
    return abund, shade


def _fields(rng: np.random.Generator, size: int) -> Scene:
    """Striped fields: parallel strips of two alternating covers, random angle and period."""
    u, _v = _rotated(size, rng.uniform(0, np.pi))
    strip = _stripes(u, rng.uniform(4.0, 12.0), rng.uniform(0.35, 0.65), rng.uniform(0, 1))
    vigour = rng.uniform(0.4, 1.0)
    crop_a = np.zeros(len(_NAMES))
    crop_a[_INDEX["crop"]], crop_a[_INDEX["soil"]] = vigour, 1.0 - vigour
    crop_b = np.zeros(len(_NAMES))
    other = rng.choice(("soil", "grass", "crop"))
    if other == "crop":
        weak = rng.uniform(0.2, 0.5)
        crop_b[_INDEX["crop"]], crop_b[_INDEX["soil"]] = weak, 1.0 - weak
    else:
        crop_b[_INDEX[other]] = 1.0
    abund = crop_a[:, None, None] * strip + crop_b[:, None, None] * (1.0 - strip)
    shade = 1.0 + 0.04 * _smooth_noise(rng, size, 3.0)
    return abund, shade


def _urban(rng: np.random.Generator, size: int) -> Scene:
    """Urban grid: roof blocks of varying brightness, parks and vacant lots, asphalt streets."""
    u, v = _rotated(size, rng.uniform(0, np.pi / 2))
    block = rng.uniform(7.0, 14.0)
    duty = rng.uniform(1.5, 3.0) / block
    pu, pv = rng.uniform(0, 1, size=2)
    streets = np.maximum(_stripes(u, block, duty, pu), _stripes(v, block, duty, pv))
    iu = np.floor(u / block + pu).astype(int) % 16
    iv = np.floor(v / block + pv).astype(int) % 16
    bright = rng.uniform(0.75, 1.3, size=(16, 16))[iu, iv]
    dark_roof = rng.uniform(0.0, 0.5, size=(16, 16))[iu, iv]
    kind = rng.random((16, 16))
    green = np.where(kind < 0.25, rng.uniform(0.7, 1.0, (16, 16)), rng.uniform(0.0, 0.4, (16, 16)))[iu, iv]
    lot = np.where(kind > 0.85, rng.uniform(0.5, 1.0, (16, 16)), 0.0)[iu, iv]
    built = (1.0 - streets) * (1.0 - green)
    abund = np.zeros((len(_NAMES), size, size))
    abund[_INDEX["asphalt"]] = streets + built * (1.0 - lot) * dark_roof
    abund[_INDEX["roof"]] = built * (1.0 - lot) * (1.0 - dark_roof) * bright
    abund[_INDEX["soil"]] = built * lot
    abund[_INDEX["grass"]] = (1.0 - streets) * green * 0.6
    abund[_INDEX["forest"]] = (1.0 - streets) * green * 0.4
    shade = 1.0 + 0.08 * _smooth_noise(rng, size, 0.8)
    return abund, shade


def _roads(rng: np.random.Generator, size: int) -> Scene:
    """Roads: 1-3 thin asphalt or concrete lines crossing patchy vegetation."""
    background = _softmax_cover(rng, size, ("grass", "crop", "forest", "soil"), rng.uniform(5.0, 10.0),
                                {"forest": rng.uniform(-2.0, 1.0), "soil": rng.uniform(-3.0, 0.5)})
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - c
    road = np.zeros((size, size))
    concrete = np.zeros((size, size))
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(0, np.pi)
        dist = x * np.sin(angle) - y * np.cos(angle) - rng.uniform(-size / 4, size / 4)
        line = np.clip(rng.uniform(1.0, 3.0) / 2 + 0.5 - np.abs(dist), 0.0, 1.0)
        if rng.random() < 0.3:
            concrete = np.maximum(concrete, line)
        road = np.maximum(road, line)
    concrete = np.minimum(concrete, road)
    abund = background * (1.0 - road)
    abund[_INDEX["asphalt"]] += road - concrete
    abund[_INDEX["roof"]] += concrete
    shade = 1.0 + 0.04 * _smooth_noise(rng, size, 2.0)
    return abund, shade


def _bare_soil(rng: np.random.Generator, size: int) -> Scene:
    """Bare soil: smooth moisture gradient, fine grain, sparse vegetation."""
    u, _v = _rotated(size, rng.uniform(0, 2 * np.pi))
    wet = np.clip(rng.uniform(0.1, 0.5) + rng.uniform(0.2, 0.6) * u / size
                  + 0.1 * _smooth_noise(rng, size, 12.0), 0.0, 1.0)
    veg_field = _smooth_noise(rng, size, 3.0)
    veg_q = np.quantile(veg_field, 1.0 - rng.uniform(0.0, 0.3))
    veg = 0.6 * np.clip(veg_field - veg_q + 0.5, 0.0, 1.0)
    abund = np.zeros((len(_NAMES), size, size))
    abund[_INDEX["soil"]] = (1.0 - wet) * (1.0 - veg)
    abund[_INDEX["wetsoil"]] = wet * (1.0 - veg)
    abund[_INDEX["grass"]] = veg
    grain = rng.uniform(0.03, 0.07)
    shade = 1.0 + grain * (0.7 * rng.standard_normal((size, size)) + 0.7 * _smooth_noise(rng, size, 0.7))
    return abund, shade


SCENES: dict[str, Callable[[np.random.Generator, int], Scene]] = {
    "Water": _water, "Forest": _forest, "Fields": _fields,
    "Urban": _urban, "Roads": _roads, "BareSoil": _bare_soil,
}
assert tuple(SCENES) == DEMO


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """Average ``img`` (..., H, W) over ``factor`` x ``factor`` blocks and expand back."""
    size = img.shape[-1]
    starts = np.arange(0, size, factor)
    sums = np.add.reduceat(np.add.reduceat(img, starts, axis=-2), starts, axis=-1)
    counts = np.add.reduceat(np.add.reduceat(np.ones((size, size)), starts, axis=0), starts, axis=1)
    label = np.arange(size) // factor
    return (sums / counts)[..., label[:, None], label[None, :]]


def render(class_name: str, n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """One demo image as a (13, size, size) uint16 array; a pure function of its arguments."""
    rng = np.random.default_rng([seed, DEMO.index(class_name), n])
    abund, shade = SCENES[class_name](rng, size)
    spectra = _SPECTRA * rng.normal(1.0, 0.08, size=(len(_NAMES), 1)) \
        * rng.normal(1.0, 0.04, size=_SPECTRA.shape)
    gain = rng.uniform(0.8, 1.2)
    haze = rng.uniform(0.0, 1.0) * _HAZE
    img = np.einsum("khw,kb->bhw", abund, spectra) * (gain * shade) + haze[:, None, None]
    for resolution in (20, 60):
        bands = [b for b, r in enumerate(BAND_RESOLUTION_M) if r == resolution]
        img[bands] = _block_mean(img[bands], resolution // 10)
    sigma = _NOISE_FLOOR[:, None, None] + _NOISE_REL * img
    img = img + sigma * rng.standard_normal(img.shape)
    return np.clip(np.rint(img), 1, 65535).astype(np.uint16)


def _write_tif(path: Path, array: np.ndarray, origin: tuple[float, float], srs_wkt: str) -> None:
    """Write a (bands, H, W) uint16 array as an LZW GeoTIFF in UTM with 10 m pixels."""
    bands, height, width = array.shape
    driver = gdal.GetDriverByName("GTiff")
    ds = driver.Create(str(path), width, height, bands, gdal.GDT_UInt16,
                       options=["COMPRESS=LZW", "PREDICTOR=2", "INTERLEAVE=PIXEL"])
    ds.SetGeoTransform((origin[0], PIXEL_SIZE_M, 0.0, origin[1], 0.0, -PIXEL_SIZE_M))
    ds.SetProjection(srs_wkt)
    for b, name in enumerate(BAND_NAMES, start=1):
        ds.GetRasterBand(b).SetDescription(name)
    ds.WriteArray(array)
    ds.FlushCache()
    ds = None


def _params_line(per_class: int, size: int, seed: int) -> str:
    return f"parameters: per_class={per_class} size={size} seed={seed} version={GENERATOR_VERSION}"


def _readme(per_class: int, size: int, seed: int) -> str:
    classes = "\n".join(f"  {i} {c}: {SCENES[c].__doc__}" for i, c in enumerate(DEMO))
    return (
        "rs-ssl built-in demo dataset (synthetic, NOT real imagery)\n"
        "\n"
        f"Generated by datasets/demo.py: python -m datasets.demo --out <dir> "
        f"--per-class {per_class} --seed {seed} --size {size}\n"
        f"{_params_line(per_class, size, seed)}\n"
        "\n"
        f"{len(DEMO)} classes x {per_class} images, {size}x{size} pixels, 13 bands UInt16,\n"
        f"band order {' '.join(BAND_NAMES)} (as EuroSAT: B8A last),\n"
        f"GeoTIFF (LZW), EPSG:{EPSG}, {PIXEL_SIZE_M:g} m pixels. Layout <Class>/<Class>_<n>.tif, n from 1.\n"
        "Each scene mixes Sentinel-2 L1C-like material spectra with class-specific spatial\n"
        "structure; the same seed gives byte-identical files.\n"
        "\n"
        f"Classes (label order):\n{classes}\n"
    )


def _expected_files(per_class: int) -> list[Path]:
    return [Path(c) / f"{c}_{n}.tif" for c in DEMO for n in range(1, per_class + 1)]


def _is_complete(root: Path, per_class: int, size: int, seed: int) -> bool:
    """True if ``root`` holds this generator's output for exactly these parameters."""
    readme = root / README_NAME
    if not readme.is_file():
        return False
    wanted = _params_line(per_class, size, seed).rsplit(" version=", 1)[0]
    if not any(line.startswith(wanted + " ") for line in readme.read_text().splitlines()):
        return False
    return all((root / f).is_file() for f in _expected_files(per_class))


def generate_demo(out_dir: Path, per_class: int = 60, size: int = 64, seed: int = 0) -> Path:
    """Write the demo dataset to ``out_dir`` (class-per-folder GeoTIFFs) and return it.

    Idempotent: an ``out_dir`` already holding this output returns at once. Atomic: the
    files are written into a hidden sibling folder renamed into place at the end, so an
    interrupted run leaves no half dataset and concurrent callers (one per process)
    all end up with the same complete folder.
    """
    out_dir = Path(out_dir).expanduser()
    if per_class < 1 or size < 16:
        raise UserError(f"demo dataset needs --per-class >= 1 and size >= 16 (got {per_class}, {size}).")
    if _is_complete(out_dir, per_class, size, seed):
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} exists but is not a demo dataset with per_class={per_class}, "
                        f"size={size}, seed={seed}; delete it or choose another --out.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    gdal.UseExceptions()
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    srs_wkt = srs.ExportToWkt()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        for ci, name in enumerate(DEMO):
            (tmp / name).mkdir()
            for n in range(1, per_class + 1):
                array = render(name, n, seed, size)
                origin_rng = np.random.default_rng([seed, ci, n, 1])
                origin = (300000.0 + PIXEL_SIZE_M * origin_rng.integers(0, 30000),
                          5000000.0 + PIXEL_SIZE_M * origin_rng.integers(0, 80000))
                _write_tif(tmp / name / f"{name}_{n}.tif", array, origin, srs_wkt)
        (tmp / README_NAME).write_text(_readme(per_class, size, seed))
        os.chmod(tmp, 0o755)
        try:
            if out_dir.is_dir():
                out_dir.rmdir()
            os.rename(tmp, out_dir)
        except OSError:
            if not _is_complete(out_dir, per_class, size, seed):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Command line: generate the demo dataset and report where and how long."""
    parser = argparse.ArgumentParser(prog="python -m datasets.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/rsssl_demo")
    parser.add_argument("--per-class", type=int, default=60, help="images per class (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    root = generate_demo(args.out, per_class=args.per_class, size=args.size, seed=args.seed)
    log.info("demo dataset: %d classes x %d images in %s (%.1f s)",
             len(DEMO), args.per_class, root, time.perf_counter() - start)


if __name__ == "__main__":
    main()
