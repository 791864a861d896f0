"""The compact tables of scripts/summarize.py --pivot: one line per run, one column per labels-per-class.

A cell is ``mean ± std [95 % CI]`` and, with ``--baseline``, ``Δ diff [CI]`` against the baseline run
(the difference in bold where its CI excludes 0). Lines are labelled by the few columns that tell them
apart (method, network, BN-statistics policy, protocol); every other identity column is in the full
table and the CSV. These are the tables docs/results.md shows, written by the script that computed them.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

from config.codes import PRETEXTS

LABEL_COLUMNS = ("pretext", "mode", "netnum", "probe", "hos", "bn_stats", "pretrain_recipe", "pretrain_lr_selection",
                 "input_size")
PROTOCOLS = {"0": "fine-tune all", "1": "fine-tune, backbone lr/5", "9": "linear probe",
             "logreg": "logistic regression", "knn": "kNN"}
CODES = {name: code for code, (name, _) in PRETEXTS.items()}


def _f(v: float, digits: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def label(ident: dict[str, str], vary: Sequence[str]) -> str:
    """``910 simclr`` (+ the varying label columns), ``random init`` for the baselines."""
    pretext = ident.get("pretext", "")
    name = f"{CODES[pretext]} {pretext}" if pretext in CODES else ("random init" if pretext == "random" else pretext)
    extra = []
    for c in vary:
        v = ident.get(c, "")
        if not v or c in ("pretext", "mode"):
            continue
        extra.append(PROTOCOLS.get(v, v) if c in ("probe", "hos") else f"{c}={v}")
    return name + (f" ({', '.join(extra)})" if extra else "")


def cell(line: Any, digits: int) -> str:
    lo, hi = line.ci
    text = f"{_f(line.mean, digits)} ± {_f(line.std, digits)}"
    if not math.isnan(lo):
        text += f" [{_f(lo, digits)}, {_f(hi, digits)}]"
    pr = line.paired
    if "diff" in pr:
        dlo, dhi = pr["diff_ci"]
        delta = f"Δ {_f(pr['diff'], digits, True)} [{_f(dlo, digits, True)}, {_f(dhi, digits, True)}]"
        text += "; " + (f"**{delta}**" if shown(pr) else delta)
    return text


def shown(pr: dict) -> bool:
    """A difference counts as shown when its crossed-bootstrap CI excludes 0 and, for a run with several
    pretraining seeds, so does the t interval over them, on the same side (scripts/summary_stats.py)."""
    lo, hi = pr["diff_ci"]
    if math.isnan(lo) or not (lo > 0 or hi < 0):
        return False
    tlo, thi = pr.get("t_ci", (math.nan, math.nan))
    return math.isnan(tlo) or (tlo > 0 and lo > 0) or (thi < 0 and hi < 0)


def pivot_markdown(lines: Sequence[Any], metric: str) -> str:
    """One table per dataset: a line per run (all identity columns but ``ts``), a column per ``ts``."""
    digits = 3 if metric == "kappa" else 1
    out = []
    by_ds: dict[str, list[Any]] = defaultdict(list)
    for ln in lines:
        by_ds[ln.group.ident["ds"]].append(ln)
    for ds, part in by_ds.items():
        runs: dict[tuple, dict[str, Any]] = defaultdict(dict)
        idents: dict[tuple, dict[str, str]] = {}
        for ln in part:
            ident = ln.group.ident
            key = tuple((k, v) for k, v in ident.items() if k != "ts")
            runs[key][ident["ts"]] = ln
            idents[key] = ident
        scales = sorted({ln.group.ident["ts"] for ln in part}, key=float)
        vary = [c for c in LABEL_COLUMNS if len({i.get(c, "") for i in idents.values()} - {""}) > 1]
        out += [f"**{ds}**, {metric}{'' if metric == 'kappa' else ' (%)'}: mean ± std [95 % CI]"
                + ("; Δ to the baseline [95 % CI], bold where it and the t interval over pretraining seeds exclude 0"
                   if any(
                    "diff" in ln.paired for ln in part) else ""), ""]
        head = ["run", "n", *[f"{float(t):g} labels/class" for t in scales]]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        short = {k: label(idents[k], vary) for k in runs}
        names = dict(short)
        for k in runs:                      # runs the short label cannot tell apart: each names what differs
            twins = [o for o in runs if short[o] == short[k]]
            if len(twins) > 1:
                diff = [c for c in idents[k] if c != "ts" and len({idents[o][c] for o in twins}) > 1]
                names[k] = short[k] + " [" + ", ".join(f"{c}={idents[k][c]}" for c in diff) + "]"
        order = sorted(runs, key=lambda k: (idents[k].get("pretext") != "random", names[k]))
        for key in order:
            row = runs[key]
            any_line = next(iter(row.values()))
            n = str(any_line.n) + (f" ({any_line.design})" if getattr(any_line, "design", "") else "")
            out.append("| " + " | ".join([names[key], n,
                                          *[cell(row[t], digits) if t in row else "–" for t in scales]]) + " |")
        out.append("")
    return "\n".join(out)
