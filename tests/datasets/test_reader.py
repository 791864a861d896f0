
import numpy as np
import pytest
from osgeo import gdal

from config.errors import UserError
from datasets.reader import probe, read, read_raw
from tests.conftest import AID_SUBSET, EUROSAT_MS, needs_aid, needs_eurosat

README_MEAN = np.array([1351.4, 1117.8, 1047.8, 950.3, 1206.9, 2014.3, 2387.1, 2314.9, 742.0, 12.1, 1838.8, 1136.8, 2610.0])


@needs_eurosat
def test_eurosat_reads_13x64x64_uint16_and_means_match_readme():
    files = sorted(EUROSAT_MS.rglob("*.tif"))
    assert len(files) == 469
    arrs = np.stack([read_raw(f) for f in files])
    assert arrs.shape == (469, 13, 64, 64) and arrs.dtype == np.uint16
    mean = arrs.reshape(469, 13, -1).astype(np.float64).mean(axis=(0, 2))
    assert np.all(np.abs(mean - README_MEAN) / README_MEAN < 0.01)
    # B8A is the last band: it tracks B08 (NIR) closely, B09 does not
    b08, b8a = arrs[:, 7].astype(float).ravel(), arrs[:, 12].astype(float).ravel()
    assert np.corrcoef(b08, b8a)[0, 1] > 0.95
    assert abs(mean[12] - 2610.0) < 26


@needs_eurosat
def test_true_colour_band_selection():
    f = sorted((EUROSAT_MS / "Forest").glob("*.tif"))[0]
    full = read_raw(f)
    rgb = read_raw(f, band_index=(3, 2, 1))
    assert np.array_equal(rgb, full[[3, 2, 1]])
    ds = gdal.Open(str(f))
    assert np.array_equal(rgb[0], ds.GetRasterBand(4).ReadAsArray())
    assert read(f).dtype == np.float32 and np.array_equal(read(f), full.astype(np.float32))
    info = probe(f)
    assert (info.bands, info.height, info.width, info.dtype) == (13, 64, 64, np.uint16)


@needs_aid
def test_aid_subset_is_150px_rgb():
    classes = sorted(p.name for p in AID_SUBSET.iterdir() if p.is_dir())
    assert len(classes) == 30
    for c in classes[:30:5]:
        f = sorted((AID_SUBSET / c).glob("*.jpg"))[0]
        a = read_raw(f, expect_bands=3)
        assert a.shape == (3, 150, 150) and a.dtype == np.uint8


@pytest.mark.parametrize("dtype,gdt", [(np.uint8, gdal.GDT_Byte), (np.uint16, gdal.GDT_UInt16), (np.float32, gdal.GDT_Float32)])
def test_any_dtype_and_band_count(tmp_path, dtype, gdt):
    a = (np.arange(5 * 8 * 9).reshape(5, 8, 9) % 200).astype(dtype)
    path = tmp_path / "x.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 9, 8, 5, gdt)
    for b in range(5):
        ds.GetRasterBand(b + 1).WriteArray(a[b])
    ds = None
    got = read_raw(path)
    assert got.dtype == dtype and np.array_equal(got, a)
    with pytest.raises(UserError, match="has 5 band"):
        read_raw(path, expect_bands=13)


def test_not_a_raster_and_truncated(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_text("hello")
    with pytest.raises(UserError, match="not a readable raster"):
        read_raw(bad)
    good = tmp_path / "g.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(good), 64, 64, 13, gdal.GDT_UInt16)
    ds.GetRasterBand(1).Fill(7)
    ds = None
    data = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="truncated|not a readable"):
        read_raw(cut)
    jpg = tmp_path / "x.jpg"
    jpg.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(UserError, match="not a readable image"):
        read_raw(jpg)


def test_an_image_over_the_pixel_limit_names_the_file_and_the_way_to_allow_it(tmp_path, monkeypatch):
    from PIL import Image

    from datasets.reader import MAX_PIXELS_ENV, band_count
    path = tmp_path / "big.png"
    Image.new("RGB", (120, 100), (10, 20, 30)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")
    with pytest.raises(UserError) as e:
        read_raw(path)
    assert str(path) in str(e.value) and "12,000 pixels" in str(e.value) and f"{MAX_PIXELS_ENV}=12000" in str(e.value)
    monkeypatch.setenv(MAX_PIXELS_ENV, "12000")
    assert read_raw(path).shape == (3, 100, 120) and band_count(path) == 3
    monkeypatch.setenv(MAX_PIXELS_ENV, "none")
    assert read_raw(path)[:, 0, 0].tolist() == [10, 20, 30]
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(UserError, match=f"{MAX_PIXELS_ENV}=lots must be a number of pixels"):
        read_raw(path)


def test_band_count_reads_headers_like_read_raw(tmp_path):
    from PIL import Image

    from datasets.reader import band_count
    Image.new("L", (8, 8)).save(tmp_path / "g.png")
    Image.new("RGBA", (8, 8)).save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        assert band_count(tmp_path / name) == read_raw(tmp_path / name).shape[0]
