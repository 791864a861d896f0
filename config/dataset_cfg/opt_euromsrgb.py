"""EuroSAT 13-band GeoTIFFs read as true colour: bands B04, B03, B02 only."""
from config.dataset_cfg.opt_euroms import (  # noqa: F401  (same files, split, classes)
    BAND_NAMES, CLASSES, DIRNAMES, EXTENSIONS, INPUT_SIZE, BATCH_SIZE, LR,
    RGB_BANDS, SCENES, SPLIT_LISTS, TRAIN_FRACTION, URL,
)

TITLE = "EuroSAT 13-band GeoTIFFs, true colour B04 B03 B02"
DTYPES = {"RGB": ("B04", "B03", "B02")}
DEFAULT_DTYPE = "RGB"
