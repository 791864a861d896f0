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
# Full-dataset per-band statistics (raw DN) as published with torchgeo's EuroSAT
# datamodule, in FILE order.  torchgeo's dict keys are shifted for the last five bands
# (its "B8A" value is B09's, "B09" is B10's, ... "B12" is B8A's); the values below follow
# the file order, and agree within 1.5 % with the 469-file subset in ../shared/data.
MEAN = (1354.40546513, 1118.24399958, 1042.92983953, 947.62620298, 1199.47283961,
        1999.79090914, 2369.22292565, 2296.82608323, 732.08340178, 12.11327804,
        1819.01027855, 1118.92391149, 2594.14080798)
STD = (245.71762908, 333.00778264, 395.09249139, 593.75055589, 566.4170017,
       861.18399006, 1086.63139075, 1117.98170791, 404.91978886, 4.77584468,
       1002.58768311, 761.30323499, 1231.58581042)
INPUT_SIZE = 64
BATCH_SIZE = 64
LR = 4e-4
TRAIN_FRACTION = 0.8
