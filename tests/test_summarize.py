"""scripts/summarize.py: mean +- std per method x labels per class."""
from __future__ import annotations

import csv

import pandas as pd

from engine.results import RESULT_COLUMNS, append_result
from tests.conftest import run_script


def test_summary_table_values(tmp_path):
    path = tmp_path / "r.csv"
    for ts, seed, oa, probe, hos, pre in [(5, 0, 50.0, "logreg", "", "simclr"), (5, 1, 60.0, "logreg", "", "simclr"),
                                          (20, 0, 80.0, "logreg", "", "simclr"), (5, 0, 40.0, "", "0", "random"),
                                          (5, 1, 44.0, "", "0", "random")]:
        append_result(path, {"ds": "euroms", "ts": ts, "seed": seed, "OA": oa, "probe": probe, "hos": hos,
                             "pretext": pre, "mode": 41})
    r = run_script(["scripts/summarize.py", str(path), "--out", str(tmp_path / "s")], timeout=120)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "s.md").read_text()
    assert "| simclr / logistic regression | 55.0 ± 7.1 (n=2) | 80.0 ± 0.0 (n=1) |" in md
    assert "| random / fine-tune all | 42.0 ± 2.8 (n=2) |  |" in md
    g = pd.read_csv(tmp_path / "s.csv")
    row = g[(g["method"] == "simclr / logistic regression") & (g["ts"] == 5)].iloc[0]
    assert abs(row["mean"] - 55.0) < 1e-9 and abs(row["std"] - 50 ** 0.5) < 1e-9 and row["count"] == 2
    assert (tmp_path / "s.png").stat().st_size > 5000
    with open(path) as f:
        assert next(csv.reader(f)) == list(RESULT_COLUMNS)


def test_missing_file_exits_2(tmp_path):
    r = run_script(["scripts/summarize.py", str(tmp_path / "none.csv")], timeout=120)
    assert r.returncode == 2 and "not found" in r.stderr
