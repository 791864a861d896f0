"""AID: Aerial Image Dataset (Xia et al., TGRS 2017). 10,000 RGB jpg, 600x600, 30 classes."""
from config import category

TITLE = "AID (Xia et al., 2017)"
DIRNAMES = ("AID", "aid", "aid_subset")
URL = "https://captain-whu.github.io/AID/"
CLASSES = category.AID
EXTENSIONS = (".jpg", ".jpeg")
BAND_NAMES = ("R", "G", "B")
DTYPES = {"RGB": ("R", "G", "B")}
DEFAULT_DTYPE = "RGB"
RGB_BANDS = ("R", "G", "B")
INPUT_SIZE = 224
BATCH_SIZE = 64
LR = 4e-4
TRAIN_FRACTION = 0.8          # no published split: share yours with --export-split
