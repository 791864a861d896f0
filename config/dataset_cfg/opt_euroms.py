"""EuroSAT all bands (Helber et al., 2019): 27,000 Sentinel-2 L1C GeoTIFFs, 13 bands UInt16, 64x64.

Band order in the files is B01..B12 then B8A LAST (as in the official release).
"""
from config import category

TITLE = "EuroSAT 13-band Sentinel-2 (Helber et al., 2019)"
DIRNAMES = ("EuroSATallBands", "EuroSAT_MS", "eurosat_ms", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif")
URL = "https://github.com/phelber/EuroSAT (EuroSATallBands.zip)"
CLASSES = category.EUROSAT
EXTENSIONS = (".tif", ".tiff")
BAND_NAMES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
DTYPES = {
    "MS": BAND_NAMES,
    "ALL": tuple(b for b in BAND_NAMES if b != "B10"),          # 12: without the cirrus band
    "TEN": ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),  # 10 m + 20 m bands
    "RGB": ("B04", "B03", "B02"),
    "NIR": ("B08",),
}
DEFAULT_DTYPE = "MS"
RGB_BANDS = ("B04", "B03", "B02")
INPUT_SIZE = 64
BATCH_SIZE = 64
LR = 4e-4
TRAIN_FRACTION = 0.8
SPLIT_LISTS = "eurosat"        # eurosat-train/val/test.txt of Neumann et al. (2019), for --split-file
SCENES = "eurosat"             # the RGB .jpg and the 13-band .tif releases show the same scenes
