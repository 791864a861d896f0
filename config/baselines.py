"""External constants of the pretrained baselines: what their weights expect as input.

Static tables only (no code that reads data). Each value is copied from the source named
next to it, so that a baseline is evaluated with the preprocessing it was trained and
published with, not with the statistics of the dataset at hand.

ImageNet (torchvision ``IMAGENET1K_V1``): RGB in 0..255, minus ``IMAGENET_MEAN_255``,
divided by ``IMAGENET_STD_255`` (torchvision's ``ImageClassification`` transform: 0..1
then mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225)); native input 224 x 224.

Sentinel-2 digital numbers to 0..255 true colour (for ImageNet weights on Sentinel-2 data):
the recipe of the EuroSAT RGB release, ``gdal_translate -scale 0 2750 1 255`` on bands
B04 B03 B02 (maintainer's answer in jensleitloff/CNN-Sentinel#1, phelber/EuroSAT README),
i.e. ``clip(1 + DN * 254 / 2750, 1, 255)``.

SSL4EO-S12 (Wang et al., 2022) Sentinel-2 weights, also distributed by TorchGeo as
``ResNet18_Weights.SENTINEL2_ALL_MOCO``, ``ResNet50_Weights.SENTINEL2_ALL_MOCO`` / ``_DINO``
/ ``_DECUR``: 13 L1C bands in the order below (B8A after B08: not EuroSAT's file order),
input ``DN / 10000`` (TorchGeo's ``_ssl4eo_s12_transforms_s2_10k``; SSL4EO's own EuroSAT
evaluation, ``EurosatDataset(normalize=False)``, computes the same through uint8, which
cannot hold values above 1: we clip to [0, 1] instead of letting them wrap), images
resized to 256 and centre-cropped to 224. The L2A weights have 12 bands: B10 is absent.
"""
from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)            # R, G, B on 0..1 (torchvision)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN_255 = tuple(255 * m for m in IMAGENET_MEAN)   # 123.675, 116.28, 103.53
IMAGENET_STD_255 = tuple(255 * s for s in IMAGENET_STD)     # 58.395, 57.12, 57.375
IMAGENET_INPUT_SIZE = 224

# EuroSAT RGB release: Sentinel-2 DN 0..2750 -> 1..255 (clipped), bands B04 B03 B02.
S2_TRUE_COLOUR_DN_MAX = 2750.0
S2_TRUE_COLOUR_OUT = (1.0, 255.0)

# SSL4EO-S12 / TorchGeo Sentinel-2 weights.
SSL4EO_S2_DIVISOR = 10000.0                      # input = clip(DN / 10000, 0, 1)
SSL4EO_S2_CLIP = (0.0, 1.0)
SSL4EO_INPUT_SIZE = 224
SSL4EO_S2_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                       "B09", "B10", "B11", "B12")
SSL4EO_S2_L2A_BANDS = tuple(b for b in SSL4EO_S2_L1C_BANDS if b != "B10")

# Band order of a foreign Sentinel-2 state dict, by the input count of its first conv.
S2_BANDS_BY_COUNT: dict[int, tuple[str, ...]] = {13: SSL4EO_S2_L1C_BANDS, 12: SSL4EO_S2_L2A_BANDS}

# Method names looked for in a foreign checkpoint's layout or file name (TorchGeo names its
# files e.g. resnet18_sentinel2_all_moco-59bfdff9.pth), for the pretext column: ssl4eo-<method>.
SSL_METHOD_TOKENS = ("moco", "dino", "decur", "simclr", "byol", "mae", "seco", "barlow", "vicreg")
