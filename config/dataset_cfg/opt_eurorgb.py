"""EuroSAT RGB release (Helber et al., 2019): 27,000 RGB jpg, 64x64, 10 classes."""
from config import category

TITLE = "EuroSAT RGB (Helber et al., 2019)"
DIRNAMES = ("EuroSAT", "EuroSAT_RGB", "2750", "eurosat_rgb")
URL = "https://github.com/phelber/EuroSAT"
CLASSES = category.EUROSAT
EXTENSIONS = (".jpg", ".jpeg")
BAND_NAMES = ("R", "G", "B")
DTYPES = {"RGB": ("R", "G", "B")}
DEFAULT_DTYPE = "RGB"
RGB_BANDS = ("R", "G", "B")
INPUT_SIZE = 64
BATCH_SIZE = 64
LR = 4e-4
TRAIN_FRACTION = 0.8
SPLIT_LISTS = "eurosat"        # eurosat-train/val/test.txt of Neumann et al. (2019), for --split-file
SCENES = "eurosat"             # the RGB .jpg and the 13-band .tif releases show the same scenes
