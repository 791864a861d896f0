"""Summarise results CSVs: mean +- std over seeds per method x labels per class.

    python scripts/summarize.py results/euroms.csv [more.csv ...] --out results/euroms_summary

writes <out>.md (markdown table), <out>.csv and <out>.png (accuracy against labels per
class, error bars = std over seeds) and prints the markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def method_label(row: pd.Series) -> str:
    init = str(row.get("pretext") or row.get("pretrain_expnum") or "random")
    if isinstance(row.get("probe"), str) and row["probe"]:
        proto = row["probe"]
    else:
        proto = f"hos {int(float(row['hos']))}"           # pandas reads the column as float
    names = {"hos 0": "fine-tune all", "hos 1": "fine-tune, backbone lr/5", "hos 9": "linear probe",
             "logreg": "logistic regression", "knn": "kNN"}
    return f"{init} / {names.get(proto, proto)}"


def summarize(frames: list[pd.DataFrame], metric: str = "OA") -> pd.DataFrame:
    df = pd.concat(frames, ignore_index=True)
    for col in ("probe", "pretext"):
        if col not in df:
            df[col] = ""
    df["probe"] = df["probe"].fillna("")
    df["method"] = df.apply(method_label, axis=1)
    g = df.groupby(["ds", "method", "ts"])[metric].agg(["mean", "std", "count"]).reset_index()
    g["std"] = g["std"].fillna(0.0)
    return g


def to_markdown(g: pd.DataFrame, metric: str) -> str:
    lines = []
    for ds, part in g.groupby("ds"):
        ts_values = sorted(part["ts"].unique())
        head = f"| {ds}: {metric} (%), mean ± std over seeds | " + " | ".join(f"{t:g} labels/class" for t in ts_values) + " |"
        lines += [head, "|" + "---|" * (len(ts_values) + 1)]
        for method, rows in part.groupby("method", sort=False):
            cells = []
            for t in ts_values:
                r = rows[rows["ts"] == t]
                cells.append(f"{r['mean'].iloc[0]:.1f} ± {r['std'].iloc[0]:.1f} (n={int(r['count'].iloc[0])})" if len(r) else "")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(g: pd.DataFrame, path: Path, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (_, method), rows in g.groupby(["ds", "method"]):
        rows = rows.sort_values("ts")
        ax.errorbar(rows["ts"], rows["mean"], yerr=rows["std"], marker="o", capsize=3, label=f"{method}")
    ax.set_xlabel("labels per class")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_xscale("log")
    ax.set_xticks(sorted(g["ts"].unique()))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="output prefix (default: first CSV without .csv + _summary)")
    p.add_argument("--metric", default="OA", choices=("OA", "AA", "kappa", "macro_F1"))
    args = p.parse_args(argv)
    missing = [str(c) for c in args.csv if not c.is_file()]
    if missing:
        print(f"error: results file(s) {', '.join(missing)} not found; run main_cls.py first", file=sys.stderr)
        return 2
    g = summarize([pd.read_csv(c) for c in args.csv], args.metric)
    out = args.out or args.csv[0].with_name(args.csv[0].stem + "_summary")
    md = to_markdown(g, args.metric)
    out.with_suffix(".md").write_text(md)
    g.to_csv(out.with_suffix(".csv"), index=False)
    plot(g, out.with_suffix(".png"), args.metric)
    print(md)
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.csv')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
