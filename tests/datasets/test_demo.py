"""Tests for the built-in demo dataset generator (datasets/demo.py)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from config.category import DEMO
from config.dataset_cfg.opt_euroms import BAND_NAMES
from config.errors import UserError
from datasets import demo
from datasets.demo import generate_demo, render

gdal.UseExceptions()

PER_CLASS = 4
RED, NIR = BAND_NAMES.index("B04"), BAND_NAMES.index("B08")


def _read(path: Path) -> np.ndarray:
    ds = gdal.Open(str(path))
    assert (ds.RasterCount, ds.RasterYSize, ds.RasterXSize) == (13, 64, 64)
    assert all(ds.GetRasterBand(b).DataType == gdal.GDT_UInt16 for b in range(1, 14))
    return ds.ReadAsArray()


def _load(root: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """All images as (N, 13, 64, 64) float64 and their labels in DEMO order."""
    images = [_read(root / c / f"{c}_{n}.tif") for c in DEMO for n in range(1, per_class + 1)]
    return np.stack(images).astype(np.float64), np.repeat(np.arange(len(DEMO)), per_class)


def _peak_fraction(nir: np.ndarray, min_radius: float = 4.0) -> np.ndarray:
    """Per image: power of the strongest frequency at least ``min_radius`` cycles from DC,
    as a fraction of all non-DC power. Periodic stripes concentrate power in one peak."""
    n = nir.shape[-1]
    power = np.abs(np.fft.fft2(nir - nir.mean(axis=(-2, -1), keepdims=True))) ** 2
    f = np.fft.fftfreq(n) * n
    radius = np.hypot(f[:, None], f[None, :])
    return power[:, radius >= min_radius].max(axis=1) / power.sum(axis=(1, 2))


def _texture(images: np.ndarray) -> np.ndarray:
    """Three gain-free texture statistics of the NIR band: gradient, contrast, periodicity."""
    nir = images[:, NIR]
    mean = nir.mean(axis=(1, 2))
    gradient = np.abs(np.diff(nir, axis=2)).mean(axis=(1, 2)) + np.abs(np.diff(nir, axis=1)).mean(axis=(1, 2))
    return np.log(np.stack([gradient / mean, nir.std(axis=(1, 2)) / mean, _peak_fraction(nir)], axis=1))


def _nearest_mean_accuracy(features: np.ndarray, labels: np.ndarray, standardise: bool) -> float:
    """Fit class means on even-indexed images, classify the odd ones by nearest mean."""
    train = np.arange(len(labels)) % 2 == 0
    if standardise:
        features = (features - features[train].mean(0)) / features[train].std(0)
    centres = np.stack([features[train & (labels == k)].mean(0) for k in range(len(DEMO))])
    dist = ((features[~train][:, None, :] - centres[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == labels[~train]).mean())


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("a") / "rsssl_demo", per_class=PER_CLASS)


def test_tree_and_files(demo_root: Path) -> None:
    assert sorted(p.name for p in demo_root.iterdir() if p.is_dir()) == sorted(DEMO)
    for c in DEMO:
        assert sorted(p.name for p in (demo_root / c).iterdir()) == [f"{c}_{n}.tif" for n in range(1, 5)]
    ds = gdal.Open(str(demo_root / "Forest" / "Forest_1.tif"))
    x0, dx, rx, y0, ry, dy = ds.GetGeoTransform()
    assert (dx, dy, rx, ry) == (10.0, -10.0, 0.0, 0.0)
    assert 166000 <= x0 <= 834000 and 0 < y0 < 9_330_000
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    srs.AutoIdentifyEPSG()
    assert srs.GetAuthorityCode(None) == "32632"
    assert [ds.GetRasterBand(b).GetDescription() for b in range(1, 14)] == list(BAND_NAMES)
    readme = (demo_root / "README.txt").read_text()
    assert "seed=0" in readme and "per_class=4" in readme and all(c in readme for c in DEMO)
    assert not [p for p in demo_root.parent.iterdir() if p.name.startswith(".")]


def test_values_are_plausible_dn(demo_root: Path) -> None:
    images, _ = _load(demo_root, PER_CLASS)
    assert images.min() >= 1 and images.max() < 10000
    cirrus = images[:, BAND_NAMES.index("B10")]
    assert 5 < cirrus.mean() < 20 and cirrus.std() < 5


def test_files_match_render_and_are_byte_identical(demo_root: Path, tmp_path: Path) -> None:
    again = generate_demo(tmp_path / "again", per_class=PER_CLASS)
    for c in DEMO:
        for n in (1, PER_CLASS):
            a, b = demo_root / c / f"{c}_{n}.tif", again / c / f"{c}_{n}.tif"
            assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
            np.testing.assert_array_equal(_read(a), render(c, n, seed=0))


def test_seeds_differ() -> None:
    for c in DEMO:
        a, b = render(c, 1, seed=0).astype(float), render(c, 1, seed=1).astype(float)
        assert np.abs(a - b).mean() > 20
    assert not np.array_equal(render("Water", 1), render("Water", 2))


def test_spectral_signatures(demo_root: Path) -> None:
    images, labels = _load(demo_root, PER_CLASS)
    mean = {c: images[labels == k].mean(axis=(0, 2, 3)) for k, c in enumerate(DEMO)}
    assert mean["Water"][NIR] < 0.25 * mean["Forest"][NIR]
    assert mean["Water"][NIR] < 0.85 * mean["Water"][RED]
    assert mean["Forest"][NIR] > 4 * mean["Forest"][RED]
    red_edge = {c: mean[c][BAND_NAMES.index("B07")] / mean[c][BAND_NAMES.index("B05")] for c in DEMO}
    assert red_edge["Fields"] > 1.5 and red_edge["Fields"] > red_edge["Urban"] + 0.2
    swir = BAND_NAMES.index("B11")
    assert mean["BareSoil"][swir] > 1.15 * mean["BareSoil"][NIR] > 1.15 * mean["BareSoil"][RED]


def test_stripes_have_an_fft_peak_water_does_not(demo_root: Path) -> None:
    images, labels = _load(demo_root, PER_CLASS)
    peak = _peak_fraction(images[:, NIR])
    fields, water = peak[labels == DEMO.index("Fields")], peak[labels == DEMO.index("Water")]
    assert fields.mean() > 0.05
    assert fields.mean() / water.mean() > 5


def test_mean_spectrum_alone_is_not_enough_but_texture_helps() -> None:
    per_class = 20
    images = np.stack([render(c, n, seed=0) for c in DEMO for n in range(1, per_class + 1)]).astype(np.float64)
    labels = np.repeat(np.arange(len(DEMO)), per_class)
    spectrum = images.mean(axis=(2, 3))
    spectral_only = _nearest_mean_accuracy(spectrum, labels, standardise=False)
    with_texture = _nearest_mean_accuracy(np.hstack([spectrum, _texture(images)]), labels, standardise=True)
    assert spectral_only < 0.95
    assert with_texture >= 0.9
    assert with_texture - spectral_only >= 0.05


def test_idempotent_and_refuses_foreign_folder(demo_root: Path, tmp_path: Path) -> None:
    stamp = (demo_root / "Urban" / "Urban_1.tif").stat().st_mtime_ns
    assert generate_demo(demo_root, per_class=PER_CLASS) == demo_root
    assert (demo_root / "Urban" / "Urban_1.tif").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="seed=1"):
        generate_demo(demo_root, per_class=PER_CLASS, seed=1)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="delete it"):
        generate_demo(foreign, per_class=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(list(generate_demo(empty, per_class=1).rglob("*.tif"))) == len(DEMO)


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_write = demo._write_tif

    def failing_write(*args, **kwargs) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_write(*args, **kwargs)

    monkeypatch.setattr(demo, "_write_tif", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_demo(tmp_path / "rsssl_demo", per_class=2)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path) -> None:
    demo.main(["--out", str(tmp_path / "cli"), "--per-class", "1", "--seed", "3"])
    np.testing.assert_array_equal(_read(tmp_path / "cli" / "Roads" / "Roads_1.tif"), render("Roads", 1, seed=3))
    with pytest.raises(SystemExit) as err:
        demo.main(["--out", str(tmp_path / "bad"), "--per-class", "0"])
    assert err.value.code == 2
