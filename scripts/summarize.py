"""Summarise results tables: one line per run identity and labels per class, with honest uncertainty.

    python scripts/summarize.py results/euroms.csv [more.csv ...] [--out PREFIX] [--metric OA]
        [--baseline pretext=random] [--include-dirty] [--boot 2000] [--boot-seed 0] [--pivot]

Rows are grouped by everything that made them (IDENTITY: every column of the table but
the outcomes, engine/identity.py: dataset, split version, mode, network, pretext, the
pretraining run, its settings, code version and the digest of the weights file, what chose
the checkpoint, protocol, probe and what its parameter was chosen on, input, the
optimisation and schedule, processes, overlap override, code version, labels per class);
the seeds of a group are its replicates. Nothing else is pooled: two checkpoints, two
schedules or two split versions are two lines. A repeated (identity, seed) keeps its
latest row and the note names the rows merged; rows of dirty trees (code_version ending in
``-dirty``) are left out unless --include-dirty. Both are reported on stderr.

Each line: n seeds, mean, std over seeds, and a 95 % percentile-bootstrap CI over
seeds AND test images (from the per-image predictions saved beside the table; see
scripts/summary_stats.py); "CI over" says "seeds" where a row has no predictions.
``--baseline COLUMN=VALUE`` adds the paired difference to the baseline run with the
same dataset, split, evaluated split (mode 2x scores the validation slice), network,
labels per class, protocol and input, seed by seed: mean difference, its bootstrap CI
and p (seeds and images resampled jointly), the exact McNemar test of each seed
(median and range over seeds: the seeds share their test images, so their image pairs
are never pooled) and the paired t-test over seeds.

Writes <out>.md, <out>.csv (every identity column) and <out>.png (label-efficiency
curves with CI bands; scripts/summary_render.py lays them out) and prints the markdown.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.atomic import atomic_write  # noqa: E402
from config.errors import UserError  # noqa: E402
from engine.identity import identity_columns  # noqa: E402
from engine.results import is_result_table, load_predictions, read_table, strip_bom  # noqa: E402
from scripts.summary_pivot import pivot_markdown  # noqa: E402
from scripts.summary_render import plot, to_csv, to_markdown  # noqa: E402
from scripts.summary_stats import (METRICS, Scored, bootstrap_ci, level_differences, level_t_ci,  # noqa: E402
                                   mcnemar_per_seed, paired_bootstrap_ci, paired_t_p)

# every column of the table but the outcomes: derived from main_cls.py's parser and the table (engine/identity.py)
IDENTITY: tuple[str, ...] = identity_columns()
# what a baseline run must share with the run it is compared to (plus the seed: the same draw); ``mode`` as
# the split it scores (2x: the validation slice; 1x/3x/4x: the test split), so SimCLR (41) pairs with random
# init (11) but a validation row is never the baseline of a test row
PAIR_KEYS: tuple[str, ...] = ("ds", "split_version", "ts", "mode", "netnum", "hos", "probe", "probe_kind",
                              "select_on", "bn_stats", "dtype", "bands", "input_size", "tta")
# A run pretrained (or randomly initialised) with several seeds is ONE run: its pretraining seed is a level
# of the replicates, crossed with the draws (scripts/summary_stats.py), not a separate group. These columns
# name one pretraining of the run, so they leave the identity when the row records its pretraining seed.
LEVEL_COLUMNS: tuple[str, ...] = ("pretrain_seed", "pretrain_expnum", "init_sha")


@dataclass
class Row:
    cells: dict[str, str]
    table: Path
    order: int
    line: int = 0          # line in its table (the header is line 1)

    @property
    def where(self) -> str:
        return f"{self.table.name}:{self.line} ({self.cells.get('time', '')})"


@dataclass
class Group:
    key: tuple[str, ...]
    rows: list[Row] = field(default_factory=list)      # one per seed, sorted by seed

    @property
    def ident(self) -> dict[str, str]:
        return dict(zip(IDENTITY, self.key))

    def seeds(self) -> list[str]:
        """The replicates' keys: the draw's seed, or ``<pretraining seed>/<draw seed>``."""
        return [unit(r.cells) for r in self.rows]


def unit(cells: dict[str, str]) -> str:
    """A row's replicate within its run: its draw, and its pretraining seed where it records one."""
    level = (cells.get("pretrain_seed") or "").strip()
    return f"{canon('pretrain_seed', level)}/{cells['seed']}" if level else cells["seed"]


def canon(column: str, value: str) -> str:
    """One spelling per value: 5 / 5.0 / 5.00 and 1e-3 / 0.001 group together."""
    value = (value or "").strip()
    if column in ("netnum", "code_version", "pretrain_expnum", "bands", "split_version"):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return format(number, ".10g") if math.isfinite(number) else value


def identity(cells: dict[str, str]) -> tuple[str, ...]:
    """The row's run identity (one value per :data:`IDENTITY` column, one spelling per value)."""
    derived = dict(cells)
    param = cells.get("probe_param", "")
    # logreg's C is chosen per draw (one protocol); kNN's "k=20,weighted" names the protocol itself
    derived["probe_kind"] = "C" if param.startswith("C=") else param
    if (cells.get("pretrain_seed") or "").strip():          # one pretraining of several: a level, not a run
        for c in LEVEL_COLUMNS:
            derived[c] = ""
    return tuple(canon(c, derived.get(c, "")) for c in IDENTITY)


def load(paths: list[Path], include_dirty: bool, notes: list[str]) -> list[Row]:
    rows: list[Row] = []
    dirty = 0
    for path in paths:
        for line, cells in enumerate(read_table(path), start=2):
            if cells["code_version"].endswith("-dirty") and not include_dirty:
                dirty += 1
                continue
            rows.append(Row(cells, path, len(rows), line))
    if dirty:
        notes.append(f"left out {dirty} row(s) of dirty trees (code_version ending in -dirty); "
                     "--include-dirty keeps them")
    if not rows:
        raise UserError(f"no rows left to summarise in {', '.join(map(str, paths))}"
                        + ("" if include_dirty or not dirty else " (all from dirty trees; pass --include-dirty)"))
    return rows


def group(rows: list[Row], notes: list[str]) -> list[Group]:
    """Rows by identity, one per seed: a repeated (identity, seed) keeps the latest (by time, then position),
    and the note names the rows that were merged."""
    latest: dict[tuple, Row] = {}
    dropped: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        k = (identity(r.cells), unit(r.cells))
        if k in latest:
            older, newer = sorted((r, latest[k]), key=lambda x: (x.cells["time"], x.order))
            dropped[k].append(older)
            r = newer
        latest[k] = r
    if dropped:
        repeated = sum(len(v) for v in dropped.values())
        merged = [f"unit {k[1]}: kept {latest[k].where}, dropped {', '.join(d.where for d in v)}"
                  for k, v in list(dropped.items())[:5]]
        notes.append(f"{repeated} repeated (identity, seed) row(s): kept the latest row of each; merged "
                     + "; ".join(merged) + (f"; and {len(dropped) - 5} more" if len(dropped) > 5 else ""))
    groups: dict[tuple, Group] = {}
    for (ident, _), r in latest.items():
        groups.setdefault(ident, Group(ident)).rows.append(r)
    for g in groups.values():
        g.rows.sort(key=lambda r: (_seed_order(r.cells.get("pretrain_seed") or ""), _seed_order(r.cells["seed"])))
    unknown = sum(1 for g in groups.values() if g.ident["split_version"] == "unknown")
    if unknown:
        notes.append(f"{unknown} group(s) come from rows with split_version 'unknown' (written before split "
                     "versions were recorded): they form their own groups, never pooled with versioned rows")
    return sorted(groups.values(), key=lambda g: tuple(_sort_key(c, v) for c, v in zip(IDENTITY, g.key)))


def _seed_order(seed: str) -> tuple:
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def _sort_key(column: str, value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def scored(g: Group, metric: str, missing: list[str]) -> Scored:
    """The group's values and, when every row saved them on the same images, its per-image predictions.

    Prediction files a row names but that are gone are appended to ``missing``.
    """
    values = np.array([_metric(r, metric) for r in g.rows])
    levels, draws = crossed(g.rows)
    preds = [load_predictions(r.table, r.cells.get("predictions", "")) for r in g.rows]
    missing += [str(r.table.parent / r.cells["predictions"]) for r, p in zip(g.rows, preds)
                if p is None and r.cells.get("predictions")]
    if any(p is None for p in preds) or any(p[0] != preds[0][0] for p in preds):
        return Scored(values, levels=levels, draws=draws)
    names = sorted({c for _, t, p in preds for c in (*t, *p)})
    idx = {c: i for i, c in enumerate(names)}
    true = np.array([idx[c] for c in preds[0][1]])
    pred = np.array([[idx[c] for c in p] for _, _, p in preds])
    images = tuple(f"{path}\t{label}" for path, label in zip(preds[0][0], preds[0][1]))
    return Scored(values, true, pred, len(names), images, levels, draws)


def crossed(rows: list[Row]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Pretraining-seed and draw indices of a run's rows when they cross (several draws of several
    pretraining seeds); None when each pretraining seed has one draw or there is one pretraining seed."""
    lv = [canon("pretrain_seed", (r.cells.get("pretrain_seed") or "").strip()) for r in rows]
    dr = [r.cells["seed"] for r in rows]
    if "" in lv or len(set(lv)) < 2 or len(set(lv)) == len(rows) or len(set(dr)) == len(rows):
        return None, None
    li = {v: i for i, v in enumerate(sorted(set(lv), key=_seed_order))}
    di = {v: i for i, v in enumerate(sorted(set(dr), key=_seed_order))}
    return np.array([li[v] for v in lv]), np.array([di[v] for v in dr])


def _metric(r: Row, metric: str) -> float:
    try:
        return float(r.cells[metric])
    except ValueError:
        raise UserError(f"{r.table}: a row has {metric} {r.cells[metric]!r}, not a number; repair or drop that row") from None


@dataclass
class Line:
    group: Group
    n: int
    mean: float
    std: float
    ci: tuple[float, float]
    over: str
    paired: dict = field(default_factory=dict)
    design: str = ""          # "3 x 5": pretraining seeds x draws, when the run has both


def summarize(groups: list[Group], metric: str, n_boot: int, boot_seed: int,
              baseline: tuple[str, str] | None, notes: list[str]) -> list[Line]:
    lines = []
    cache: dict[tuple, Scored] = {}
    missing: list[str] = []
    for g in groups:
        s = cache.setdefault(g.key, scored(g, metric, missing))
        lo, hi, over = bootstrap_ci(s, metric, n_boot, boot_seed)
        std = float(np.std(s.values, ddof=1)) if len(s.values) > 1 else math.nan
        design = "" if s.levels is None else f"{int(s.levels.max()) + 1} x {int(s.draws.max()) + 1}"
        lines.append(Line(g, len(s.values), float(np.mean(s.values)), std, (lo, hi), over, design=design))
    if missing:
        notes.append(f"{len(missing)} prediction file(s) named in the table are missing (e.g. {missing[0]}): "
                     "the CIs of their runs cover seeds only; keep <table>_predictions/ beside the table")
    if baseline is not None:
        col, value = baseline
        bases = [g for g in groups if g.ident[col] == canon(col, value)]
        if not bases:
            notes.append(f"--baseline {col}={value}: no group has that value; no paired differences")
        for line in lines:
            if line.group in bases:
                continue
            line.paired = _pair(line.group, bases, metric, n_boot, boot_seed, cache)
    return lines


def _pair(g: Group, bases: list[Group], metric: str, n_boot: int, boot_seed: int, cache: dict) -> dict:
    """The paired comparison of ``g`` with its baseline run; 'note' says why there is none."""
    cands = [b for b in bases if all(_pairing(k, b.ident[k]) == _pairing(k, g.ident[k]) for k in PAIR_KEYS)
             and align(g, b)[0]]
    if not cands:
        return {"note": "no baseline run with the same data, split, network, ts, protocol and seeds"}
    others = [c for c in IDENTITY if c not in PAIR_KEYS]
    score = [sum(b.ident[c] == g.ident[c] for c in others) for b in cands]
    best = [b for b, s in zip(cands, score) if s == max(score)]
    if len(best) > 1:
        return {"note": f"{len(best)} baseline runs match equally well (they differ in "
                        f"{', '.join(c for c in others if len({b.ident[c] for b in best}) > 1)}); "
                        "summarise them separately"}
    base = best[0]
    mine, theirs = align(g, base)
    a, b = _subset(cache[g.key], g, mine), _subset(cache[base.key], base, theirs, like=g, at=mine)
    diff = a.values - b.values
    lo, hi, over, p_boot = paired_bootstrap_ci(a, b, metric, n_boot, boot_seed)
    per_seed = mcnemar_per_seed(a, b)
    spread = (float(np.median(per_seed)), min(per_seed), max(per_seed)) if per_seed else (math.nan,) * 3
    return {"baseline": base, "n_pairs": len(mine), "diff": float(diff.mean()), "diff_ci": (lo, hi),
            "diff_over": over, "p_t": paired_t_p(*level_differences(a, b)), "p_boot": p_boot, "p_mcnemar": spread,
            "t_ci": level_t_ci(a, b)}


def _pairing(column: str, value: str) -> str:
    """What a baseline must share: ``mode`` by the split it scores (2x the validation slice, else the test split)."""
    if column == "mode":
        return "val" if value.startswith("2") else "test"
    return value


def _levels(g: Group) -> set[str]:
    return {(r.cells.get("pretrain_seed") or "").strip() for r in g.rows}


def align(g: Group, base: Group) -> tuple[list[int], list[int]]:
    """Row positions of ``g`` and of its baseline that pair up: the same (pretraining seed, draw) unit when both
    runs have several pretraining seeds (seed k meets initialisation k), else the same draw (a baseline with
    one initialisation, or none recorded, is the partner of each pretraining seed at that draw)."""
    units = {u: i for i, u in enumerate(base.seeds())}
    if len(_levels(g) - {""}) > 1 and len(_levels(base) - {""}) > 1:
        pairs = [(i, units[u]) for i, u in enumerate(g.seeds()) if u in units]
    else:
        by_draw: dict[str, int] = {}
        for i, r in enumerate(base.rows):
            by_draw.setdefault(r.cells["seed"], i)
        pairs = [(i, by_draw[r.cells["seed"]]) for i, r in enumerate(g.rows) if r.cells["seed"] in by_draw]
    return [i for i, _ in pairs], [j for _, j in pairs]


def _subset(s: Scored, g: Group, pos: list[int], like: Group | None = None, at: list[int] | None = None) -> Scored:
    """The rows ``pos`` of a run (a position may repeat: one baseline row for several pretraining seeds), with
    the crossed structure of ``like``'s rows ``at`` (the run it is paired with) or of its own."""
    rows = [like.rows[i] for i in at] if like is not None and at is not None else [g.rows[i] for i in pos]
    levels, draws = crossed(rows)
    if s.pred is None:
        return Scored(s.values[pos], levels=levels, draws=draws)
    return Scored(s.values[pos], s.true, s.pred[pos], s.num_classes, s.images, levels, draws)


def parse_baseline(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    col, sep, value = text.partition("=")
    if not sep or col not in IDENTITY or col in PAIR_KEYS:
        allowed = [c for c in IDENTITY if c not in PAIR_KEYS]
        raise UserError(f"--baseline {text!r} must be COLUMN=VALUE with COLUMN one of {', '.join(allowed)} "
                        "(e.g. --baseline pretext=random)")
    return col, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="output prefix (default: first CSV without .csv + _summary)")
    p.add_argument("--metric", default="OA", choices=METRICS)
    p.add_argument("--baseline", help="COLUMN=VALUE of the runs to compare against, e.g. pretext=random")
    p.add_argument("--include-dirty", dest="include_dirty", action="store_true",
                   help="keep rows whose code_version ends in -dirty (uncommitted code changes)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--boot-seed", dest="boot_seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--pivot", action="store_true",
                   help="put compact tables first: one line per run, one column per labels-per-class "
                        "(mean ± std [CI]; Δ to the baseline), as docs/results.md shows them")
    args = p.parse_args(argv)
    try:
        if args.boot < 100:
            raise UserError(f"--boot {args.boot} is too few resamples for a 95 % interval; use 1000 or more")
        baseline = parse_baseline(args.baseline)
        outs = output_paths(args.out, args.csv)
        notes: list[str] = []
        groups = group(load(args.csv, args.include_dirty, notes), notes)
        lines = summarize(groups, args.metric, args.boot, args.boot_seed, baseline, notes)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    md = to_markdown(lines, args.metric, args.boot, args.boot_seed, baseline)
    if args.pivot:
        md = pivot_markdown(lines, args.metric) + "\n" + md
    try:
        files = write_outputs(outs, {".md": md.encode("utf-8"), ".csv": to_csv(lines, baseline)},
                              lambda: plot(lines, args.metric))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md)
    print(f"written: {', '.join(map(str, files))}")
    return 0


def output_paths(out: Path | None, inputs: list[Path]) -> dict[str, Path]:
    """``<out>.md/.csv/.png``; refused when one of them is an input or another results table (never overwritten)."""
    out = out or inputs[0].with_name(inputs[0].stem + "_summary")
    outs = {ext: out.with_suffix(ext) for ext in (".md", ".csv", ".png")}
    given = {p.resolve(): p for p in inputs}
    for path in outs.values():
        if path.resolve() in given:
            raise UserError(f"--out {out} would write {path} over the input table {given[path.resolve()]}; "
                            f"pick another prefix, e.g. --out {out.with_name(out.name + '_summary')}")
        if path.suffix == ".csv" and path.is_file() and is_result_table(_first_line(path)):
            raise UserError(f"--out {out} would write {path} over a results table; pick another prefix, "
                            f"e.g. --out {out.with_name(out.name + '_summary')}")
    return outs


def _first_line(path: Path) -> list[str]:
    import csv
    with open(path, "rb") as f:
        line = strip_bom(f.readline()).decode("utf-8", "replace").rstrip("\r\n")
    return next(csv.reader([line]), [])


def write_outputs(outs: dict[str, Path], data: dict[str, bytes], png) -> list[Path]:
    """Write every output atomically (temp file + rename), the figure rendered first: a failure leaves the
    previous summary files whole. An unwritable place is one sentence."""
    where = outs[".md"].parent
    try:
        data = {**data, ".png": png()}
        where.mkdir(parents=True, exist_ok=True)
        for ext, path in outs.items():
            atomic_write(path, lambda f, b=data[ext]: f.write(b))
    except OSError as err:
        raise UserError(f"--out {where / outs['.md'].stem}: cannot write there ({err.strerror or err}); "
                        "pass an --out prefix in a folder you can write to") from None
    return list(outs.values())


if __name__ == "__main__":
    sys.exit(main())
