"""PNG figures: image grids in true colour, or any three bands as false colour (any band count)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from models.bands import s2_name


def band_triplet(names: str | None, opt: DatasetOpt) -> tuple[int, int, int] | None:
    """``--vis-bands B08,B04,B03`` -> their positions among the dataset's bands (None: true colour)."""
    if names is None:
        return None
    wanted = [n.strip() for n in str(names).split(",") if n.strip()]
    key = lambda b: s2_name(str(b)) or str(b).strip().upper()  # noqa: E731  (B8a, b08, B8 spelled alike)
    canon = {key(b): i for i, b in enumerate(opt.bands)}
    idx = [canon.get(key(n)) for n in wanted]
    if len(wanted) != 3 or any(i is None for i in idx):
        raise UserError(f"--vis-bands {names} must name three of this dataset's bands ({' '.join(opt.bands)}) as red, "
                        "green, blue, e.g. --vis-bands B08,B04,B03")
    return tuple(idx)  # type: ignore[return-value]


def check_vis_flags(args, opt: DatasetOpt) -> None:
    """``--vis-every`` / ``--vis-bands`` only with ``--vis``; a positive interval; bands the data has."""
    given = [f for f, v in (("--vis-every", args.vis_every), ("--vis-bands", args.vis_bands)) if v is not None]
    if given and not args.vis:
        raise UserError(f"{', '.join(given)} shape the --vis figures; add --vis or drop {'them' if len(given) > 1 else 'it'}")
    if args.vis_every is not None and args.vis_every < 1:
        raise UserError(f"--vis-every {args.vis_every} must be >= 1 epoch; pass e.g. --vis-every 5")
    band_triplet(args.vis_bands, opt)


def to_display(x: torch.Tensor, opt: DatasetOpt, bands: tuple[int, int, int] | None = None) -> np.ndarray:
    """A normalised C x H x W tensor -> H x W x 3 floats in [0, 1] (2-98 % stretch per image); ``bands``
    picks the positions shown as R, G, B (default the dataset's true colour)."""
    x = x.detach().float().cpu()
    if x.shape[0] == 1:                        # a single band (e.g. colorization input)
        x = x.expand(3, -1, -1)
        idx = [0, 1, 2]
    elif bands is not None:
        idx = list(bands)
    else:
        idx = list(opt.rgb_index) if opt.rgb_index else [0, 0, 0]
    img = x[idx].permute(1, 2, 0).numpy()
    lo, hi = np.percentile(img, 2), np.percentile(img, 98)
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def save_grid(rows: Sequence[Sequence[torch.Tensor]], path: Path, opt: DatasetOpt,
              titles: Sequence[str] | None = None, bands: tuple[int, int, int] | None = None) -> None:
    """One row per sample, one column per view/image; ``titles`` name the columns; ``bands`` as in :func:`to_display`."""
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
                ax.imshow(to_display(row[j], opt, bands))
            if i == 0 and titles and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
