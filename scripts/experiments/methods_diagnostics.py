"""The pretraining diagnostics of a methods table (scripts/experiments/methods.sh), as markdown.

    OUT=runs/methods_euroms NET=090000 MODES="910 911" SEEDS="0 1 2" python scripts/experiments/methods_diagnostics.py

Per mode, mean over the pretraining seeds of each final run's epoch log (``<netnum>_<expnum>_log.csv``):
the loss at the first and the last epoch; the embedding std at the end against 1/sqrt(d) (the std of
L2-normalised embeddings spread evenly over d dimensions; ~0 is collapse); how far the kept backbone's
weights moved from their initialisation (``backbone_moved``, ||W - W0|| / ||W0||); the validation kNN
accuracy after the last epoch; DINO's teacher entropy as a fraction of ln K (1: a uniform teacher,
the collapse DINO's centring fights); MoCo's share of queries whose own image had a key in the
queue (masked out of the negatives, so the contamination rate is 0); images/s and wall time (runs.csv).
Then, where the lr grid ran, one line per grid lr: where its short run ended and which lr was chosen.
"""
from __future__ import annotations

import csv
import math
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config.codes import PRETEXTS  # noqa: E402
from engine.pretrain_flags import LR_SELECTION  # noqa: E402

EMBEDDING = {916: ("bottleneck", 256)}      # DINO's emb_std is that of its 256-d bottleneck embedding


def _f(rows: list[dict], key: str, i: int = -1) -> float:
    vals = [r.get(key, "") for r in rows]
    vals = [float(v) for v in vals if v not in ("", None)]
    return vals[i] if vals else math.nan


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def _text(path: Path, default: str = "") -> str:
    """A one-line marker file of methods.sh (``<mode>.lr``, ``<tag>.expnum``), stripped; ``default`` if absent."""
    return path.read_text().strip() if path.exists() else default


def _rows(path: Path) -> list[dict]:
    """The rows of a CSV (a run's epoch log, runs.csv); none if the file is absent."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fmt(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}g}"


def main() -> int:
    out, net = Path(os.environ["OUT"]), os.environ.get("NET", "090000")
    modes, seeds = os.environ["MODES"].split(), os.environ.get("SEEDS", "0 1 2").split()
    runs = _rows(out / "runs.csv")
    lines = ["| mode | method | seeds | lr (chosen) | loss first -> last | emb_std (1/sqrt d) | backbone moved | "
             "val kNN (%) | teacher entropy / ln K | own-image keys masked | img/s | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        per = []
        diverged = sum((out / f"final_{mode}_s{seed}.failed").exists() for seed in seeds)
        for seed in seeds:
            tag = out / f"final_{mode}_s{seed}.expnum"
            if not tag.exists() or not (out / f"final_{mode}_s{seed}.done").exists():
                continue                                    # not run, not finished (interrupted) or diverged
            exp = tag.read_text().strip()
            log = out / "ck" / f"{net}_{exp}_log.csv"
            if not log.exists():
                continue
            rows = _rows(log)
            ck = sorted((out / "ck").glob(f"{net}_{exp}_[0-9]*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
            state = torch.load(ck[-1], map_location="cpu", weights_only=True) if ck else {"meta": {}, "backbone": {}}
            meta, weights = state["meta"], state["backbone"]
            d = (EMBEDDING.get(int(mode), (None, None))[1]
                 or (weights["cls_token"].shape[-1] if int(mode) in (930, 931) and "cls_token" in weights
                     else None)                     # MAE: its cls latent (absent while the run has no checkpoint yet)
                 or (meta.get("args") or {}).get("feature_dim") or math.nan)
            run = [r for r in runs if r["expnum"] == exp]
            per.append({"loss0": _f(rows, "loss", 0), "loss1": _f(rows, "loss"), "std": _f(rows, "emb_std"),
                        "d": float(d), "moved": _f(rows, "backbone_moved"), "knn": _f(rows, "knn_top1"),
                        "ent": _f(rows, "teacher_entropy"), "own": _f(rows, "moco_own_keys"),
                        "ips": float(run[-1]["img_per_s"]) if run else math.nan,
                        "wall": float(run[-1]["seconds"]) if run else math.nan})
        if not per and not diverged:
            continue
        if not per:                                         # every seed diverged: say so instead of vanishing
            lines.append(f"| {mode} | {PRETEXTS[int(mode)][0]} | 0 (+{diverged} diverged) |" + " - |" * 9)
            continue
        lr = _text(out / f"{mode}.lr", "-")
        m = {k: _mean([p[k] for p in per]) for k in per[0]}
        n = f"{len(per)}" + (f" (+{diverged} diverged)" if diverged else "")
        lines.append(f"| {mode} | {PRETEXTS[int(mode)][0]} | {n} | {lr} | {fmt(m['loss0'], 4)} -> "
                     f"{fmt(m['loss1'], 4)} | {fmt(m['std'])} ({fmt(1 / math.sqrt(m['d']))}) | "
                     f"{fmt(100 * m['moved'], 3)} % | {fmt(m['knn'], 3)} | {fmt(m['ent'])} | {fmt(m['own'])} | "
                     f"{fmt(m['ips'], 3)} | {fmt(m['wall'], 4)} |")
    grid = grid_lines(out, net, modes, runs)
    print("\n".join(lines + (["", *grid] if grid else [])))
    return 0


def grid_lines(out: Path, net: str, modes: list[str], runs: list[dict]) -> list[str]:
    """The lr grid's short runs (``grid_<mode>_lr<lr>``), one line per lr: where each ended and which one the
    validation kNN chose (``<mode>.selection`` / ``<mode>.lr``); nothing where the modes ran without a grid."""
    lines, grids = [], []
    for mode in modes:
        chosen, selection = _text(out / f"{mode}.lr"), _text(out / f"{mode}.selection")
        # the lrs of the grid that chose (val-knn:a,b,c@steps); runs of an earlier GRID in the same OUT are not it
        m = LR_SELECTION.fullmatch(selection)
        grid = [float(x) for x in m.group("grid").split(",")] if m else []
        found = []
        for tag in out.glob(f"grid_{mode}_lr*.expnum"):
            lr = tag.name[len(f"grid_{mode}_lr"):-len(".expnum")]
            if grid and not any(math.isclose(float(lr), g, rel_tol=1e-9) for g in grid):
                continue
            exp = tag.read_text().strip()
            failed = (out / f"grid_{mode}_lr{lr}.failed").exists()
            if not failed and not (out / f"grid_{mode}_lr{lr}.done").exists():
                continue                                    # not run, or not finished yet
            rows = _rows(out / "ck" / f"{net}_{exp}_log.csv")     # a diverged run may have none
            run = [r for r in runs if r["expnum"] == exp]
            found.append((float(lr), lr, rows, failed, float(run[-1]["img_per_s"]) if run else math.nan))
        if found and selection:
            grids.append(f"{mode}: {selection}")
        for _, lr, rows, failed, ips in sorted(found):
            mark = "**chosen**" if chosen and math.isclose(float(lr), float(chosen), rel_tol=1e-9) else ""
            knn = "diverged" if failed else fmt(_f(rows, "knn_top1"), 3)
            lines.append(f"| {mode} | {PRETEXTS[int(mode)][0]} | {lr} | {len(rows)} | {fmt(_f(rows, 'loss'), 4)} | "
                         f"{fmt(_f(rows, 'emb_std'))} | {fmt(100 * _f(rows, 'backbone_moved'), 3)} % | {knn} | "
                         f"{fmt(ips, 3)} | {mark} |")
    if not lines:
        return []
    return [f"lr grid ({'; '.join(grids)}): each lr a short run from pretraining seed 0, read at its last epoch; the "
            "best validation kNN is chosen (ties: the recipe's lr, then the smaller)", "",
            "| mode | method | lr | epochs | loss (last) | emb_std | backbone moved | val kNN (%) | img/s | |",
            "|---|---|---|---|---|---|---|---|---|---|", *lines]


if __name__ == "__main__":
    sys.exit(main())
