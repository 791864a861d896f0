"""Stand-ins for a DatasetOpt and raw images, shared by the pretext tests."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 32


def make_opt(bands: int, size: int = SIZE) -> SimpleNamespace:
    """What the pretexts read from a DatasetOpt (raw units: Sentinel-2-like means and stds)."""
    return SimpleNamespace(input_size=size, n_bands=bands, mean=np.linspace(300.0, 2000.0, bands),
                           std=np.linspace(50.0, 400.0, bands), rgb_index=(0, 1, 2) if bands == 3 else (3, 2, 1),
                           bands=tuple(f"B{i + 1:02d}" for i in range(bands)))


def raw_images(n: int, bands: int, side: int = 40, seed: int = 0) -> torch.Tensor:
    """Smooth raw-unit images (bilinear 5x5 noise) around the statistics: structure a decoder can learn."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, bands, 5, 5, generator=g)
    opt = make_opt(bands)
    mean = torch.as_tensor(opt.mean, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(opt.std, dtype=torch.float32)[:, None, None]
    return F.interpolate(low, size=side, mode="bilinear", align_corners=False) * 4 * std + mean - 2 * std
