"""UC Merced Land Use (Yang & Newsam, 2010). 2,100 RGB tif, 256x256, 21 classes."""
from config import category

TITLE = "UC Merced Land Use (Yang & Newsam, 2010)"
DIRNAMES = ("UCMerced_LandUse/Images", "UCMerced_LandUse", "ucm")
URL = "http://weegee.vision.ucmerced.edu/datasets/landuse.html"
CLASSES = category.UC_MERCED
EXTENSIONS = (".tif", ".tiff")
BAND_NAMES = ("R", "G", "B")
DTYPES = {"RGB": ("R", "G", "B")}
DEFAULT_DTYPE = "RGB"
RGB_BANDS = ("R", "G", "B")
INPUT_SIZE = 224
BATCH_SIZE = 64
LR = 4e-4
TRAIN_FRACTION = 0.8
SPLIT_LISTS = "uc_merced"        # uc_merced-train/val/test.txt of Neumann et al. (2019), for --split-file
