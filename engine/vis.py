"""PNG figures: image grids in true colour (any band count)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from config.dataset_cfg import DatasetOpt


def to_display(x: torch.Tensor, opt: DatasetOpt) -> np.ndarray:
    """A normalised C x H x W tensor -> H x W x 3 floats in [0, 1] (2-98 % stretch per image)."""
    x = x.detach().float().cpu()
    if x.shape[0] == 1:                        # a single band (e.g. colorization input)
        x = x.expand(3, -1, -1)
        idx = [0, 1, 2]
    else:
        idx = list(opt.rgb_index) if opt.rgb_index else [0, 0, 0]
    img = x[idx].permute(1, 2, 0).numpy()
    lo, hi = np.percentile(img, 2), np.percentile(img, 98)
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def save_grid(rows: Sequence[Sequence[torch.Tensor]], path: Path, opt: DatasetOpt,
              titles: Sequence[str] | None = None) -> None:
    """One row per sample, one column per view/image; ``titles`` name the columns."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, m = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n, m, figsize=(1.6 * m, 1.6 * n), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(m):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(to_display(row[j], opt))
            if i == 0 and titles and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
