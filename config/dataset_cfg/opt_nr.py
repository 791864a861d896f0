"""NWPU-RESISC45 (Cheng et al., Proc. IEEE 2017). 31,500 RGB jpg, 256x256, 45 classes."""
from config import category

TITLE = "NWPU-RESISC45 (Cheng et al., 2017)"
DIRNAMES = ("NWPU-RESISC45", "nwpu_resisc45", "NR")
URL = "https://gcheng-nwpu.github.io/#Datasets"
CLASSES = category.NWPU_RESISC45
EXTENSIONS = (".jpg", ".jpeg")
BAND_NAMES = ("R", "G", "B")
DTYPES = {"RGB": ("R", "G", "B")}
DEFAULT_DTYPE = "RGB"
RGB_BANDS = ("R", "G", "B")
INPUT_SIZE = 224
BATCH_SIZE = 64
LR = 4e-4
TRAIN_FRACTION = 0.8
SPLIT_LISTS = "resisc45"        # resisc45-train/val/test.txt of Neumann et al. (2019), for --split-file
