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
# Per-band mean/std in raw 0-255 units, measured on all 1,500 scenes of the AID subset in
# ../shared/data (scripts/band_stats.py recomputes them for any copy).
MEAN = (103.82, 104.87, 95.54)
STD = (54.20, 48.52, 47.81)
INPUT_SIZE = 224
BATCH_SIZE = 64
LR = 4e-4
TRAIN_FRACTION = 0.8
