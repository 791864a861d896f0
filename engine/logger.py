"""Per-epoch training log: a CSV next to the checkpoints and TensorBoard event files."""
from __future__ import annotations

import csv
import logging
import io
from pathlib import Path

from config.atomic import atomic_write_text

log = logging.getLogger(__name__)


class EpochLog:
    """Rows of per-epoch numbers; the CSV is rewritten atomically after every epoch.

    Adding epoch N drops rows from epoch N on (a resumed run replaces them), only among rows
    with the same ``key`` values (e.g. the same seed).
    """

    def __init__(self, csv_path: Path, tb_dir: Path | None = None, resume: bool = False,
                 key: tuple[str, ...] = ()):
        self.path = Path(csv_path)
        self.key = key          # columns that tell interleaved runs apart, e.g. ("seed",) in fine-tuning
        self.rows: list[dict] = []
        if resume and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.tb = None
        if tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(tb_dir))
            except ImportError:  # tensorboard is in requirements.txt; tolerate a trimmed install
                log.warning("tensorboard is not installed: no event files, the CSV log still works")

    def add(self, epoch: int, values: dict[str, float]) -> None:
        mine = lambda r: all(str(r.get(k)) == str(values.get(k)) for k in self.key)  # noqa: E731
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch or not mine(r)]   # a resumed run replaces
        self.rows.append({"epoch": epoch, **values})
        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, epoch)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
