"""How scripts/summarize.py writes its lines: the full markdown table, the CSV (every identity column, CI
bounds, p-values) and the label-efficiency figure. The lines come computed (scripts/summarize.py: grouping,
bootstrap, pairing); nothing here changes a number, it only lays them out.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from engine.identity import identity_columns
from scripts.summary_pivot import PROTOCOLS

if TYPE_CHECKING:
    from scripts.summarize import Line

IDENTITY: tuple[str, ...] = identity_columns()


def _fmt(v: float, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _p(v: float) -> str:
    if math.isnan(v):
        return "–"
    return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


# what a pretraining checkpoint implies (its settings, code version, file digest): named per line only where
# two lines of one checkpoint (pretraining run and epoch) differ in it; the CSV has them all
IMPLIED = ("pretrain_code_version", "pretrain_optimizer", "pretrain_lr", "pretrain_bs", "pretrain_epochs",
           "pretrain_steps", "pretrain_seed", "pretrain_recipe", "pretrain_config", "pretrain_lr_selection", "init_sha")


def varying(lines: list[Line]) -> tuple[list[str], dict[str, str]]:
    """Identity columns that differ between lines (shown per line) and the common ones (shown once)."""
    cols = [c for c in IDENTITY if c not in ("ds", "ts")]
    vary = [c for c in cols if len({ln.group.ident[c] for ln in lines}) > 1]
    common = {c: lines[0].group.ident[c] for c in cols if c not in vary and lines[0].group.ident[c] != ""}
    runs: dict[tuple, set] = defaultdict(set)
    for ln in lines:
        ident = ln.group.ident
        runs[(ident["pretrain_expnum"], ident["pretrain_epoch"])].add(tuple(ident[c] for c in IMPLIED))
    if all(len(v) == 1 for v in runs.values()):
        vary = [c for c in vary if c not in IMPLIED]
    return vary, common


def run_label(ident: dict[str, str], vary: list[str]) -> str:
    proto = ident["probe"] or (f"hos {ident['hos']}" if ident["hos"] else "")
    name = f"{ident['pretext'] or ident['pretrain_expnum'] or '?'} / {PROTOCOLS.get(ident['probe'] or ident['hos'], proto)}"
    # empty cells mean "does not apply" (no checkpoint, no training): left out of the label
    extra = [f"{c}={ident[c]}" for c in vary if c not in ("pretext", "probe", "hos") and ident[c]
             and not (c == "pretrain_expnum" and ident[c] == ident["pretext"])]
    return name + (f" ({', '.join(extra)})" if extra else "")


def to_markdown(lines: list[Line], metric: str, n_boot: int, boot_seed: int, baseline: tuple[str, str] | None) -> str:
    unit = "" if metric == "kappa" else " (%)"
    digits = 3 if metric == "kappa" else 1
    out = [f"95 % CI: percentile bootstrap, {n_boot} resamples (seed {boot_seed}), over seeds and test images "
           "(one image resample shared by all seeds of a run); 'CI over: seeds' where per-image predictions are missing.",
           ""]
    if baseline:
        out[0] += (f" Δ: mean paired difference to the {baseline[0]}={baseline[1]} run with the same seeds, CI as above; "
                   "p (boot): two-sided p of Δ = 0 from the same crossed seed x image bootstrap; McNemar per seed: "
                   "exact McNemar p of each seed's per-image predictions, median [min, max] over seeds (the seeds "
                   "share their test images, so their pairs are never pooled); p (t): paired t-test over seeds "
                   "(the draw's variance only; over the pretraining seeds' mean differences where a run has several). "
                   "n (P x D): P pretraining seeds (random init: initialisation seeds) x D draws, resampled as "
                   "crossed levels, the replicates spread by sqrt(P / (P - 1)) (a bootstrap over P levels "
                   "has (P - 1) / P of their variance). Δ t-CI: Student's t interval over the pretraining seeds' "
                   "mean differences (df = P - 1). A difference counts as shown only where both intervals "
                   "exclude 0 (simulated coverage of that rule with 3 x 5: 0.94; either alone 0.80-0.93).")
    by_ds: dict[str, list[Line]] = defaultdict(list)
    for ln in lines:
        by_ds[ln.group.ident["ds"]].append(ln)
    for ds, part in by_ds.items():
        vary, common = varying(part)
        out.append(f"**{ds}**, {metric}{unit}; common to every line: "
                   + ", ".join(f"{k}={v}" for k, v in common.items()))
        out.append("")
        head = ["run", "labels/class", "n", "mean", "std", "95 % CI", "CI over"]
        if baseline:
            head += [f"Δ vs {baseline[1]}", "Δ 95 % CI", "Δ t-CI", "p (boot)", "McNemar per seed", "p (t)", "pairs"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for ln in part:
            ident = ln.group.ident
            cells = [run_label(ident, vary), ident["ts"], str(ln.n) + (f" ({ln.design})" if ln.design else ""),
                     _fmt(ln.mean, digits), _fmt(ln.std, digits),
                     f"[{_fmt(ln.ci[0], digits)}, {_fmt(ln.ci[1], digits)}]" if not math.isnan(ln.ci[0]) else "–",
                     ln.over]
            if baseline:
                pr = ln.paired
                if "diff" in pr:
                    med, low, high = pr["p_mcnemar"]
                    cells += [f"{pr['diff']:+.{digits}f}", f"[{pr['diff_ci'][0]:+.{digits}f}, {pr['diff_ci'][1]:+.{digits}f}]"
                              if not math.isnan(pr["diff_ci"][0]) else "–",
                              f"[{pr['t_ci'][0]:+.{digits}f}, {pr['t_ci'][1]:+.{digits}f}]"
                              if not math.isnan(pr["t_ci"][0]) else "–", _p(pr["p_boot"]),
                              f"{_p(med)} [{_p(low)}, {_p(high)}]" if not math.isnan(med) else "–", _p(pr["p_t"]),
                              str(pr["n_pairs"])]
                else:
                    cells += ["(baseline)" if not pr else pr["note"], "", "", "", "", "", ""]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def to_csv(lines: list[Line], baseline: tuple[str, str] | None) -> bytes:
    """The summary table as CSV bytes (every identity column, CI bounds, p-values)."""
    import csv
    import io
    head = [*IDENTITY, "n", "mean", "std", "ci_low", "ci_high", "ci_over", "seeds"]
    if baseline:
        head += ["baseline_expnum", "diff", "diff_ci_low", "diff_ci_high", "diff_t_low", "diff_t_high", "p_boot",
                 "p_mcnemar_median", "p_mcnemar_min", "p_mcnemar_max", "p_paired_t", "n_pairs", "note"]
    f = io.StringIO()
    w = csv.writer(f, lineterminator="\n")
    w.writerow(head)
    for ln in lines:
        row = [*ln.group.key, ln.n, ln.mean, ln.std, ln.ci[0], ln.ci[1], ln.over, " ".join(ln.group.seeds())]
        if baseline:
            pr = ln.paired
            if "diff" in pr:
                row += [pr["baseline"].ident["pretrain_expnum"], pr["diff"], *pr["diff_ci"], *pr["t_ci"], pr["p_boot"],
                        *pr["p_mcnemar"], pr["p_t"], pr["n_pairs"], ""]
            else:
                row += [""] * 12 + [pr.get("note", "baseline")]
        w.writerow(row)
    return f.getvalue().encode("utf-8")


def plot(lines: list[Line], metric: str) -> bytes:
    """Label-efficiency curves (PNG bytes): mean against labels per class, shaded 95 % CI, one curve per run
    (identity minus ts)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple, list[Line]] = defaultdict(list)
    ts_col = IDENTITY.index("ts")
    for ln in lines:
        curves[ln.group.key[:ts_col] + ln.group.key[ts_col + 1:]].append(ln)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    vary, _ = varying(lines)
    for curve in curves.values():
        curve.sort(key=lambda ln: float(ln.group.ident["ts"]))
        x = [float(ln.group.ident["ts"]) for ln in curve]
        y = [ln.mean for ln in curve]
        label = run_label(curve[0].group.ident, [c for c in vary if c != "ts"])
        (handle,) = ax.plot(x, y, marker="o", label=label if len(label) < 80 else label[:77] + "...")
        lo = [ln.ci[0] for ln in curve]
        hi = [ln.ci[1] for ln in curve]
        if not any(math.isnan(v) for v in lo + hi):
            ax.fill_between(x, lo, hi, color=handle.get_color(), alpha=0.2, linewidth=0)
            # the band's ends as caps, so a curve with a single labels-per-class point shows its CI too
            ax.errorbar(x, y, yerr=[np.subtract(y, lo), np.subtract(hi, y)], fmt="none",
                        ecolor=handle.get_color(), capsize=3, alpha=0.6)
    ax.set_xlabel("labels per class")
    ax.set_ylabel(metric + ("" if metric == "kappa" else " (%)") + ", band and bars: 95 % CI")
    ticks = sorted({float(ln.group.ident["ts"]) for ln in lines})
    if ticks and min(ticks) > 0:
        ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
