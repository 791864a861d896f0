"""scripts/experiments/methods.sh end to end on the demo data: the lr grid chosen on the validation kNN, the
completed schedules, the probes under the BN policy, the summary, and a rerun that adds nothing."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

from tests.conftest import REPO


def _run(demo_root, out):
    env = {**os.environ, "PY": sys.executable, "DS": "demo", "ROOT": str(demo_root), "SIZE": "32",
           "BS": "16", "STEPS": "6", "GRID_STEPS": "3", "MODES": "910", "SEEDS": "0 1", "DRAWS": "2",
           "POLICIES": "as-trained", "OUT": str(out / "runs"), "RES": str(out / "res.csv"),
           "SUMMARY_FLAGS": "--include-dirty", "OMP_NUM_THREADS": "1", "RSSSL_CACHE": str(out / "cache")}
    return subprocess.run(["bash", str(REPO / "scripts/experiments/methods.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_methods_script_runs_the_protocol_and_resumes_without_repeating(demo_root, tmp_path):
    first = _run(demo_root, tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    runs = list(csv.DictReader(open(tmp_path / "runs" / "runs.csv")))
    assert [r["role"] for r in runs] == ["grid"] * 3 + ["final"] * 2
    grid = sorted(float(r["lr"]) for r in runs if r["role"] == "grid")
    assert grid[1] == 2 * grid[0] and grid[2] == 2 * grid[1]               # the recipe's lr x 0.5, 1, 2
    chosen = float((tmp_path / "runs" / "910.lr").read_text())
    selection = (tmp_path / "runs" / "910.selection").read_text().strip()
    assert chosen in grid and selection.startswith("val-knn:") and selection.endswith("@3")
    assert all(int(r["steps"]) >= 6 for r in runs if r["role"] == "final")
    rows = list(csv.DictReader(open(tmp_path / "res.csv")))
    random = [r for r in rows if r["pretext"] == "random"]
    method = [r for r in rows if r["pretext"] == "simclr"]
    assert len(random) == len(method) == 2 * 2 * 2                           # 2 seeds x 2 scales x 2 draws
    assert sorted({r["pretrain_seed"] for r in random}) == sorted({r["pretrain_seed"] for r in method}) == ["0", "1"]
    assert {r["pretrain_lr_selection"] for r in method} == {selection} and {r["bn_stats"] for r in rows} == {"as-trained"}
    assert "(2 x 2)" in (tmp_path / "res_summary.md").read_text()
    diag = (tmp_path / "res_pretrain.md").read_text()
    assert "| 910 |" in diag
    grid_lines = [ln for ln in diag.splitlines() if ln.startswith("| 910 | simclr | ") and ln.count("|") == 11]
    assert len(grid_lines) == 3                                                # the grid's three lrs, one line each
    assert [ln.split(" | ")[2] for ln in grid_lines if "**chosen**" in ln] == [(tmp_path / "runs" / "910.lr").read_text().strip()]
    second = _run(demo_root, tmp_path)                                       # everything exists: nothing reruns
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(list(csv.DictReader(open(tmp_path / "res.csv")))) == len(rows)
    assert len(list(csv.DictReader(open(tmp_path / "runs" / "runs.csv")))) == len(runs)


def test_a_plan_that_does_not_resolve_stops_the_script_with_its_sentence(demo_root, tmp_path):
    env = {**os.environ, "PY": sys.executable, "DS": "demo", "ROOT": str(demo_root), "SIZE": "32", "BS": "4096",
           "MODES": "910", "SEEDS": "0", "DRAWS": "1", "OUT": str(tmp_path / "runs"), "RES": str(tmp_path / "r.csv"),
           "RSSSL_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(["bash", str(REPO / "scripts/experiments/methods.sh")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "the plan does not resolve" in out.stdout + out.stderr
    assert "--bs 4096" in (tmp_path / "runs" / "times.txt").read_text()



def test_grid_none_takes_the_recipes_lr_and_runs_seed_major(demo_root, tmp_path):
    env = {**os.environ, "PY": sys.executable, "DS": "demo", "ROOT": str(demo_root), "SIZE": "32",
           "BS": "16", "STEPS": "3", "GRID": "none", "MODES": "910 913", "SEEDS": "0 1", "DRAWS": "1",
           "POLICIES": "as-trained", "OUT": str(tmp_path / "runs"), "RES": str(tmp_path / "res.csv"),
           "SUMMARY_FLAGS": "--include-dirty", "OMP_NUM_THREADS": "1", "RSSSL_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(["bash", str(REPO / "scripts/experiments/methods.sh")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    runs = list(csv.DictReader(open(tmp_path / "runs" / "runs.csv")))
    # no grid runs; every mode's seed 0 before any mode's seed 1
    assert [(r["role"], r["mode"], r["seed"]) for r in runs] == [
        ("final", "910", "0"), ("final", "913", "0"), ("final", "910", "1"), ("final", "913", "1")]
    rows = [r for r in csv.DictReader(open(tmp_path / "res.csv")) if r["pretext"] != "random"]
    assert rows and {r["pretrain_lr_selection"] for r in rows} == {"recipe"}
    assert "lr grid" not in (tmp_path / "res_pretrain.md").read_text()       # no grid ran: no grid table


def test_diagnostics_show_a_diverged_final_and_only_the_grid_that_chose(tmp_path):
    """methods_diagnostics.py on a hand-made OUT: a mode whose only final diverged keeps its line (it does not
    vanish from the table); the grid table lists the lrs of the grid that chose, the diverged one marked, not the
    runs an earlier GRID left in the same folder."""
    out = tmp_path / "runs"
    (out / "ck").mkdir(parents=True)
    (out / "runs.csv").write_text("mode,seed,lr,steps,expnum,seconds,img_per_s,role\n")
    (out / "913.lr").write_text("0.25\n")
    (out / "913.selection").write_text("val-knn:0.0625,0.25,1@250\n")
    for lr, end, knn in (("0.0625", "done", 12.5), ("0.25", "done", 14.0), ("1", "failed", None), ("0.5", "done", 30.0)):
        (out / f"grid_913_lr{lr}.expnum").write_text(f"e{lr}\n")
        (out / f"grid_913_lr{lr}.{end}").touch()
        if knn is not None:
            (out / "ck" / f"090000_e{lr}_log.csv").write_text(
                f"epoch,loss,emb_std,backbone_moved,knn_top1\n1,-0.5,0.01,0.05,{knn}\n")
    (out / "final_913_s0.expnum").write_text("f0\n")
    (out / "final_913_s0.failed").touch()
    env = {**os.environ, "OUT": str(out), "MODES": "913", "SEEDS": "0"}
    res = subprocess.run([sys.executable, str(REPO / "scripts/experiments/methods_diagnostics.py")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "| 913 | simsiam | 0 (+1 diverged) |" in text
    grid = [ln for ln in text.splitlines() if ln.startswith("| 913 | simsiam | ") and ln.count("|") == 11]
    assert [ln.split(" | ")[2] for ln in grid] == ["0.0625", "0.25", "1"]             # not 0.5 (another grid)
    assert "**chosen**" in grid[1] and "diverged" in grid[2] and "14" in grid[1]
    assert "913: val-knn:0.0625,0.25,1@250" in text
