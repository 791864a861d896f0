"""scripts/summarize.py: grouping by run identity, dirty and repeated rows, CIs and paired tests."""
from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from engine.results import append_result, save_predictions
from scripts import summarize, summary_stats
from tests.conftest import run_script

BASE = {"ds": "euroms", "split_version": "v2-abc", "mode": 41, "netnum": "000000", "pretext": "simclr",
        "pretrain_expnum": "26001_pretrain", "pretrain_epoch": 100, "probe": "logreg", "probe_param": "C=1",
        "select_on": "shots", "dtype": "MS", "input_size": 64, "code_version": "abc1234"}


def add(path, **over):
    append_result(path, {**BASE, **over})


def summary(tmp_path, capsys, *args):
    code = summarize.main([*map(str, args), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    table = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False) if code == 0 else None
    return code, table, err


def test_runs_differing_in_checkpoint_or_lr_are_never_pooled(tmp_path, capsys):
    path = tmp_path / "r.csv"
    for seed, (a, b, c) in enumerate([(50, 70, 40), (60, 72, 44)]):
        add(path, seed=seed, ts=5, OA=a)
        add(path, seed=seed, ts=5, OA=b, pretrain_epoch=200)                     # another checkpoint
        add(path, seed=seed, ts=5, OA=c, probe="", probe_param="", hos=0, lr=1e-3, mode=41)
        add(path, seed=seed, ts=5, OA=c + 10, probe="", probe_param="", hos=0, lr=1e-4, mode=41)
    code, t, _ = summary(tmp_path, capsys, path)
    assert code == 0 and len(t) == 4
    got = {(r["pretrain_epoch"], r["lr"]): (int(r["n"]), float(r["mean"]), float(r["std"])) for _, r in t.iterrows()}
    assert got == {("100", ""): (2, 55.0, pytest.approx(50 ** 0.5)), ("200", ""): (2, 71.0, pytest.approx(2 ** 0.5)),
                   ("100", "0.001"): (2, 42.0, pytest.approx(8 ** 0.5)), ("100", "0.0001"): (2, 52.0, pytest.approx(8 ** 0.5))}
    md = (tmp_path / "s.md").read_text()
    assert "pretrain_epoch=200" in md and "lr=0.0001" in md and (tmp_path / "s.png").stat().st_size > 5000


def test_repeated_seed_keeps_the_latest_row_and_says_so(tmp_path, capsys):
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=10.0, time="2026-01-01 10:00:00")
    add(path, seed=0, ts=5.0, OA=30.0, time="2026-01-02 10:00:00")               # the rerun (ts spelt 5.0)
    add(path, seed=0, ts=5, OA=20.0, time="2026-01-01 12:00:00")
    add(path, seed=1, ts=5, OA=50.0)
    code, t, err = summary(tmp_path, capsys, path)
    assert code == 0 and len(t) == 1 and t.iloc[0]["n"] == "2" and float(t.iloc[0]["mean"]) == 40.0
    assert "2 repeated (identity, seed) row(s): kept the latest" in err


def test_dirty_rows_left_out_unless_asked(tmp_path, capsys):
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=50.0)
    add(path, seed=1, ts=5, OA=90.0, code_version="abc1234-dirty")
    code, t, err = summary(tmp_path, capsys, path)
    assert code == 0 and len(t) == 1 and float(t.iloc[0]["mean"]) == 50.0 and "left out 1 row(s) of dirty trees" in err
    code, t, _ = summary(tmp_path, capsys, path, "--include-dirty")
    assert sorted(t["code_version"]) == ["abc1234", "abc1234-dirty"]


def test_split_versions_never_pooled_and_migrated_rows_are_their_own_group(tmp_path, capsys):
    path = tmp_path / "old.csv"
    old_cols = ["time", "code_version", "ds", "ts", "seed", "mode", "netnum", "pretrain_expnum", "pretrain_epoch",
                "pretext", "hos", "probe", "epochs", "lr", "OA", "AA", "kappa", "macro_F1", "n_train", "n_test",
                "seconds", "per_class"]
    with open(path, "w", newline="") as f:          # an older-schema table, not yet migrated
        w = csv.writer(f)
        w.writerow(old_cols)
        w.writerow(["2026-11-22 12:00:00", "abc1234", "euroms", "5.0", "0", "41", "000000", "26001_pretrain", "100",
                    "simclr", "", "logreg", "0", "0.0", "40.0", "", "", "", "50", "94", "1", "[]"])
    new = tmp_path / "new.csv"
    add(new, seed=0, ts=5, OA=60.0)
    add(new, seed=0, ts=5, OA=80.0, split_version="v2-def")
    code, t, err = summary(tmp_path, capsys, path, new)
    assert code == 0
    assert sorted(zip(t["split_version"], t["mean"].astype(float))) == [("unknown", 40.0), ("v2-abc", 60.0),
                                                                          ("v2-def", 80.0)]
    assert "split_version 'unknown'" in err


def test_seed_bootstrap_ci_is_exact_on_two_values():
    # the mean of 2 seeds resampled with replacement is 50, 55 or 60 with probability 1/4, 1/2, 1/4:
    # the 2.5 % and 97.5 % quantiles are exactly 50 and 60
    lo, hi, over = summary_stats.bootstrap_ci(summary_stats.Scored(np.array([50.0, 60.0])), "OA", 4000, seed=3)
    assert (lo, hi, over) == (50.0, 60.0, "seeds")


def _preds(tmp_path, table, correct: np.ndarray, stem: str) -> str:
    n = len(correct)
    true = [f"c{i % 4}" for i in range(n)]
    pred = [t if ok else f"c{(i + 1) % 4}" for i, (t, ok) in enumerate(zip(true, correct))]
    return save_predictions(table, stem, [f"{t}/img{i}.tif" for i, t in enumerate(true)], true, pred)


def test_image_bootstrap_matches_the_binomial_closed_form(tmp_path, capsys):
    """Three seeds with identical predictions: only the test images vary, so the CI is p +- 1.96 sqrt(p(1-p)/N)."""
    path, n, p = tmp_path / "r.csv", 400, 0.7
    correct = np.arange(n) % 10 < 7
    rel = _preds(tmp_path, path, correct, "x")
    for seed in range(3):
        add(path, seed=seed, ts=5, OA=100 * p, predictions=rel)
    code, t, _ = summary(tmp_path, capsys, path, "--boot", "4000")
    half = 100 * 1.96 * (p * (1 - p) / n) ** 0.5                                       # 4.49 points
    r = t.iloc[0]
    assert code == 0 and r["ci_over"] == "seeds+images"
    assert float(r["ci_low"]) == pytest.approx(70 - half, abs=0.5) and float(r["ci_high"]) == pytest.approx(70 + half, abs=0.5)
    (tmp_path / rel).unlink()                                     # the table copied without its predictions
    code, t, err = summary(tmp_path, capsys, path)
    assert code == 0 and t.iloc[0]["ci_over"] == "seeds" and float(t.iloc[0]["ci_low"]) == 70.0
    assert "3 prediction file(s) named in the table are missing" in err


def test_ci_covers_seeds_and_images_wider_than_either(tmp_path):
    rng = np.random.default_rng(0)
    true = np.arange(200) % 4
    pred = np.where(rng.random((5, 200)) < np.array([[0.6], [0.7], [0.65], [0.75], [0.55]]), true, (true + 1) % 4)
    values = 100 * (pred == true).mean(1)
    both = summary_stats.bootstrap_ci(summary_stats.Scored(values, true, pred, 4), "OA", 2000, 0)
    seeds = summary_stats.bootstrap_ci(summary_stats.Scored(values), "OA", 2000, 0)
    one = summary_stats.bootstrap_ci(summary_stats.Scored(values[:1], true, pred[:1], 4), "OA", 2000, 0)
    assert both[2] == "seeds+images" and seeds[2] == "seeds" and one[2] == "seeds+images"
    assert both[1] - both[0] > seeds[1] - seeds[0] and both[1] - both[0] > 0


def test_weighted_metrics_match_engine_metrics():
    from engine.metrics import classification_metrics
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
    m = classification_metrics(t, p, 5)
    conf = summary_stats._weighted_confusions(t, p, np.ones((1, 60)), 5)
    got = {k: float(summary_stats.metric_from_confusion(conf, k)[0]) for k in summary_stats.METRICS}
    assert got == pytest.approx({"OA": 100 * m["OA"], "AA": 100 * m["AA"], "kappa": m["kappa"],
                                 "macro_F1": 100 * m["macro_f1"]})


def test_paired_tests_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    a = np.array([55.3, 61.2, 58.9, 49.5, 60.1])
    b = np.array([50.1, 58.0, 59.4, 44.2, 55.0])
    assert summary_stats.paired_t_p(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
    rng = np.random.default_rng(2)
    ca, cb = rng.random(3000) < 0.72, rng.random(3000) < 0.69
    p, n10, n01 = summary_stats.mcnemar_exact_p(ca, cb)
    assert p == pytest.approx(stats.binomtest(min(n10, n01), n10 + n01, 0.5).pvalue, rel=1e-9)


def test_baseline_paired_difference(tmp_path, capsys):
    path = tmp_path / "r.csv"
    rng = np.random.default_rng(4)
    oa_ssl, oa_rnd = [], []
    for seed in range(4):
        c_ssl, c_rnd = rng.random(120) < 0.75, rng.random(120) < 0.6
        oa_ssl.append(100 * c_ssl.mean())
        oa_rnd.append(100 * c_rnd.mean())
        add(path, seed=seed, ts=5, OA=oa_ssl[-1], predictions=_preds(tmp_path, path, c_ssl, f"s{seed}"))
        add(path, seed=seed, ts=5, OA=oa_rnd[-1], mode=11, pretext="random", pretrain_expnum="random",
            pretrain_epoch="", predictions=_preds(tmp_path, path, c_rnd, f"r{seed}"))
    add(path, seed=0, ts=20, OA=90.0)                                   # no random run at 20 labels
    code, t, _ = summary(tmp_path, capsys, path, "--baseline", "pretext=random")
    assert code == 0
    row = t[(t["pretext"] == "simclr") & (t["ts"] == "5")].iloc[0]
    d = np.array(oa_ssl) - np.array(oa_rnd)
    assert float(row["diff"]) == pytest.approx(d.mean()) and row["n_pairs"] == "4"
    assert float(row["p_paired_t"]) == pytest.approx(summary_stats.paired_t_p(np.array(oa_ssl), np.array(oa_rnd)))
    assert float(row["diff_ci_low"]) < d.mean() < float(row["diff_ci_high"]) and 0 < float(row["p_boot"]) <= 1
    assert 0 <= float(row["p_mcnemar_min"]) <= float(row["p_mcnemar_median"]) <= float(row["p_mcnemar_max"]) <= 1
    assert "no baseline run" in t[t["ts"] == "20"].iloc[0]["note"]
    assert "McNemar per seed" in (tmp_path / "s.md").read_text()


@pytest.mark.parametrize("text, match", [("", "is empty"), ("epoch,loss\n1,2\n", "not a results table"),
                                         ("time,code_version,ds,ts,seed,OA\n1,2\n", "line 2 has 2 cells")])
def test_bad_tables_exit_2_in_one_sentence(tmp_path, capsys, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, _, err = summary(tmp_path, capsys, path)
    assert code == 2 and match in err and err.count("\n") == 1


def test_bad_baseline_and_missing_file_exit_2(tmp_path, capsys):
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=50.0)
    code, _, err = summary(tmp_path, capsys, path, "--baseline", "ts=5")
    assert code == 2 and "--baseline 'ts=5' must be COLUMN=VALUE" in err
    code, _, err = summary(tmp_path, capsys, tmp_path / "none.csv")
    assert code == 2 and "not found" in err


def test_script_runs_from_the_command_line(tmp_path):
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=50.0)
    add(path, seed=1, ts=5, OA=60.0)
    r = run_script(["scripts/summarize.py", str(path), "--out", str(tmp_path / "s")], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| simclr / logistic regression | 5 | 2 | 55.0 | 7.1 | [50.0, 60.0] | seeds |" in r.stdout


def test_mcnemar_pairs_images_even_when_a_run_never_predicts_some_classes(tmp_path, capsys):
    """Run A calls every image c0; the baseline misses one c0 image: 1 vs 8 discordant, p = 2 (1 + 9) / 2^9."""
    path = tmp_path / "r.csv"
    names = [f"c{i % 3}/img{i}.tif" for i in range(12)]
    true = [f"c{i % 3}" for i in range(12)]
    pred_b = ["c1"] + true[1:]
    rel_a = save_predictions(path, "a", names, true, ["c0"] * 12)
    rel_b = save_predictions(path, "b", names, true, pred_b)
    add(path, seed=0, ts=5, OA=100 * 4 / 12, predictions=rel_a)
    add(path, seed=0, ts=5, OA=100 * 11 / 12, pretext="random", mode=11, pretrain_expnum="random",
        pretrain_epoch="", predictions=rel_b)
    code, t, _ = summary(tmp_path, capsys, path, "--baseline", "pretext=random")
    row = t[t["pretext"] == "simclr"].iloc[0]
    assert code == 0 and float(row["p_mcnemar_median"]) == pytest.approx(20 / 512)
    assert float(row["diff"]) == pytest.approx(-700 / 12) and row["p_paired_t"] == "nan"


# ---- issue 19: never lose a file, one sentence for every bad input ----

def test_an_output_that_is_an_input_is_refused_and_the_table_survives(tmp_path, capsys):
    """``--out T`` would write T.csv over the input table T.csv."""
    path = tmp_path / "T.csv"
    add(path, seed=0, ts=5, OA=50.0)
    before = path.read_bytes()
    code = summarize.main([str(path), "--out", str(tmp_path / "T")])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "T.csv" in err and "Traceback" not in err and err.count("\n") == 1
    assert path.read_bytes() == before


def test_outputs_are_written_atomically(tmp_path, capsys, monkeypatch):
    """A failure while writing the summary leaves the previous summary whole (no partial file)."""
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=50.0)
    assert summarize.main([str(path), "--out", str(tmp_path / "s")]) == 0
    old = (tmp_path / "s.csv").read_bytes()
    add(path, seed=1, ts=5, OA=70.0)

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(summarize, "plot", broken)
    code = summarize.main([str(path), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "no space left" in err.lower() and "Traceback" not in err
    assert (tmp_path / "s.csv").read_bytes() == old
    assert not list(tmp_path.glob(".*.tmp"))


def test_unwritable_out_and_a_folder_as_input_exit_2(tmp_path, capsys):
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=50.0)
    blocker = tmp_path / "file"
    blocker.write_text("a file where --out wants a folder")
    code = summarize.main([str(path), "--out", str(blocker / "s")])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker) in err and "Traceback" not in err and err.count("\n") == 1
    code = summarize.main([str(tmp_path), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder" in err and "not found" not in err


def test_an_out_folder_without_write_permission_exits_2(tmp_path, capsys):
    import os
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=50.0)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        code = summarize.main([str(path), "--out", str(locked / "s")])
        err = capsys.readouterr().err
        assert code == 2 and str(locked) in err and "Traceback" not in err and err.count("\n") == 1
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("content", [b"path,true,pred\nc0/img0.tif,c0", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01binary"])
def test_truncated_or_binary_predictions_exit_2_naming_the_file(tmp_path, capsys, content):
    path = tmp_path / "r.csv"
    rel = _preds(tmp_path, path, np.arange(12) % 3 > 0, "x")
    add(path, seed=0, ts=5, OA=50.0, predictions=rel)
    add(path, seed=1, ts=5, OA=60.0, predictions=rel)
    (tmp_path / rel).write_bytes(content)
    code = summarize.main([str(path), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and rel.split("/")[-1] in err and "Traceback" not in err and err.count("\n") == 1


def test_a_results_table_saved_with_a_bom_is_read(tmp_path, capsys):
    """Excel writes UTF-8 CSVs with a byte-order mark; the header must still be ours."""
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=50.0)
    add(path, seed=1, ts=5, OA=60.0)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    code, t, err = summary(tmp_path, capsys, path)
    assert code == 0 and float(t.iloc[0]["mean"]) == 55.0, err
    add(path, seed=2, ts=5, OA=70.0)              # appending keeps working (and drops the mark)
    code, t, _ = summary(tmp_path, capsys, path)
    assert code == 0 and float(t.iloc[0]["mean"]) == 60.0


# ---- issue 19 §2: statistics that respect the shared test images ----

def _agreeing_runs(tmp_path, n10: int, n01: int, seeds: int = 5, n: int = 100):
    """Two runs whose seeds all agree image by image: A right and B wrong on n10 images, the reverse on n01."""
    path = tmp_path / "r.csv"
    correct_b = np.arange(n) % 10 < 6
    correct_a = correct_b.copy()
    wrong_b = np.flatnonzero(~correct_b)[:n10]
    right_b = np.flatnonzero(correct_b)[:n01]
    correct_a[wrong_b], correct_a[right_b] = True, False
    for seed in range(seeds):
        add(path, seed=seed, ts=5, OA=100 * correct_a.mean(), predictions=_preds(tmp_path, path, correct_a, f"a{seed}"))
        add(path, seed=seed, ts=5, OA=100 * correct_b.mean(), mode=11, pretext="random", pretrain_expnum="random",
            pretrain_epoch="", predictions=_preds(tmp_path, path, correct_b, f"b{seed}"))
    return path


def test_mcnemar_is_per_seed_not_pooled_over_seeds(tmp_path, capsys):
    """5 seeds that agree image by image are 5 copies of one comparison, not 5 x more evidence: pooled,
    McNemar says p = 0.002 (30 vs 10 discordant); per seed it is 0.289 (6 vs 2) and that is what is reported,
    with the crossed seed x image bootstrap's p."""
    path = _agreeing_runs(tmp_path, n10=6, n01=2)
    pooled = summary_stats.mcnemar_exact_p(np.repeat(True, 30).tolist() + [False] * 10,
                                           np.repeat(False, 30).tolist() + [True] * 10)[0]
    assert pooled < 0.005
    code, t, _ = summary(tmp_path, capsys, path, "--baseline", "pretext=random")
    row = t[t["pretext"] == "simclr"].iloc[0]
    per_seed = 2 * (1 + 8 + 28) / 256
    assert code == 0 and "p_mcnemar" not in t.columns
    assert float(row["p_mcnemar_median"]) == pytest.approx(per_seed)
    assert float(row["p_mcnemar_min"]) == float(row["p_mcnemar_max"]) == pytest.approx(per_seed)
    assert 0.05 < float(row["p_boot"]) < 0.5
    md = (tmp_path / "s.md").read_text()
    assert "McNemar per seed" in md and "pooled over seeds" not in md


def test_a_run_paired_with_its_own_copy_differs_by_exactly_zero(tmp_path, capsys):
    """The paired bootstrap resamples seeds and images jointly for both runs, so identical runs give a
    difference of 0 in every replicate: CI exactly [0, 0], p = 1 (a test that fails if the two runs were
    resampled apart)."""
    path = tmp_path / "r.csv"
    rng = np.random.default_rng(0)
    for seed in range(4):
        correct = rng.random(80) < 0.7
        for pretext, mode in (("simclr", 41), ("random", 11)):
            add(path, seed=seed, ts=5, OA=100 * correct.mean(), pretext=pretext, mode=mode,
                predictions=_preds(tmp_path, path, correct, f"{pretext}{seed}"))
    code, t, _ = summary(tmp_path, capsys, path, "--baseline", "pretext=random")
    row = t[t["pretext"] == "simclr"].iloc[0]
    assert code == 0
    assert (float(row["diff"]), float(row["diff_ci_low"]), float(row["diff_ci_high"])) == (0.0, 0.0, 0.0)
    assert float(row["p_boot"]) == 1.0 and float(row["p_mcnemar_median"]) == 1.0


def test_merged_rows_are_named(tmp_path, capsys):
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=10.0, time="2026-01-01 10:00:00")
    add(path, seed=0, ts=5, OA=30.0, time="2026-01-02 10:00:00")
    code, _, err = summary(tmp_path, capsys, path)
    assert code == 0 and "kept r.csv:3 (2026-01-02 10:00:00), dropped r.csv:2 (2026-01-01 10:00:00)" in err


def test_a_schedule_or_a_weights_file_apart_is_another_run(tmp_path, capsys):
    path = tmp_path / "r.csv"
    for i, over in enumerate([{}, {"lr_policy": "step"}, {"warmup": 5}, {"momentum": 0.8}, {"milestones": "10,20"},
                              {"lr_decay": 0.5}, {"amp": 1}, {"init_sha": "abc"}, {"processes": 2}]):
        add(path, seed=0, ts=5, OA=50.0 + i, **over)
    code, t, err = summary(tmp_path, capsys, path)
    assert code == 0 and len(t) == 9 and "repeated" not in err


def test_a_validation_row_is_never_the_baseline_of_a_test_row(tmp_path, capsys):
    path = tmp_path / "r.csv"
    add(path, seed=0, ts=5, OA=60.0)
    add(path, seed=0, ts=5, OA=40.0, mode=21, pretext="random", pretrain_expnum="random", pretrain_epoch="")
    code, t, _ = summary(tmp_path, capsys, path, "--baseline", "pretext=random")
    assert code == 0 and "no baseline run" in t[t["pretext"] == "simclr"].iloc[0]["note"]
    add(path, seed=0, ts=5, OA=45.0, mode=11, pretext="random", pretrain_expnum="random", pretrain_epoch="")
    code, t, _ = summary(tmp_path, capsys, path, "--baseline", "pretext=random")
    assert float(t[t["pretext"] == "simclr"].iloc[0]["diff"]) == 15.0          # 41 pairs with 11, not with 21


# ---- issue 17: the pretraining seed is a level of one run, crossed with the draws ----

def test_pretraining_seeds_are_levels_of_one_run_paired_with_init_seeds(tmp_path, capsys):
    """3 pretraining seeds x 2 draws of one recipe are ONE line (n 6 = 3 x 2), not three; random init with
    init seeds 0-2 pairs unit by unit; the paired t runs over the 3 pretraining seeds' mean differences."""
    path = tmp_path / "r.csv"
    gain = {0: 4.0, 1: 6.0, 2: 11.0}                     # the pretraining seed moves the cell
    for p in range(3):
        for d in range(2):
            add(path, seed=d, ts=5, OA=50 + gain[p] + d, pretrain_seed=p, pretrain_expnum=f"2600{p}_pretrain",
                init_sha=f"sha{p}", pretrain_recipe="small")
            add(path, seed=d, ts=5, OA=50 + d, pretext="random", mode=11, pretrain_expnum="random",
                pretrain_epoch="", pretrain_seed=p)
    code, t, _ = summary(tmp_path, capsys, path, "--baseline", "pretext=random")
    assert code == 0 and len(t) == 2
    run = t[t["pretext"] == "simclr"].iloc[0]
    assert run["n"] == "6" and run["seeds"] == "0/0 0/1 1/0 1/1 2/0 2/1" and run["pretrain_expnum"] == ""
    assert float(run["diff"]) == pytest.approx(7.0) and run["n_pairs"] == "6"
    d = np.array([4.0, 6.0, 11.0])
    t_stat = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    from scipy import stats
    assert float(run["p_paired_t"]) == pytest.approx(2 * stats.t.sf(t_stat, 2), rel=1e-6)
    assert "(3 x 2)" in (tmp_path / "s.md").read_text()


def test_crossed_weights_factorise_into_level_and_draw_counts():
    run = summary_stats.Scored(np.arange(6.0), levels=np.array([0, 0, 1, 1, 2, 2]), draws=np.array([0, 1] * 3))
    w = summary_stats.unit_weights(run, 500, np.random.default_rng(0))
    assert w.shape == (500, 6) and np.all(w >= 0)
    for b in range(500):
        grid = w[b].reshape(3, 2)                               # rows: pretraining seeds, columns: draws
        assert np.linalg.matrix_rank(grid) <= 1                 # an outer product: level count x draw count
        assert grid.sum() == 3 * 2                              # 3 levels drawn x 2 draws drawn
    flat = summary_stats.Scored(np.arange(6.0))
    same = np.random.default_rng(0).multinomial(6, np.full(6, 1 / 6), size=500)
    assert np.array_equal(summary_stats.unit_weights(flat, 500, np.random.default_rng(0)), same)   # old stream kept


def test_pivot_puts_one_line_per_run_and_a_column_per_scale(tmp_path, capsys):
    path = tmp_path / "r.csv"
    for d in range(3):
        for ts, gain in ((5, 20.0), (20, 0.5)):
            add(path, seed=d, ts=ts, OA=60 + gain + d, pretrain_seed=0)
            add(path, seed=d, ts=ts, OA=60 + d + (d == 1), pretext="random", mode=11, pretrain_expnum="random",
                pretrain_epoch="", pretrain_seed=0)
    code = summarize.main([str(path), "--baseline", "pretext=random", "--pivot", "--out", str(tmp_path / "s")])
    md = (tmp_path / "s.md").read_text()
    capsys.readouterr()
    head, first, second = [ln for ln in md.splitlines() if ln.startswith("| ")][:3]
    assert code == 0 and head == "| run | n | 5 labels/class | 20 labels/class |"
    assert first.startswith("| random init | 3 | 61.3 ± 1.2") and "Δ" not in first
    assert second.startswith("| 910 simclr | 3 | 81.0 ± 1.0")
    five, twenty = second.split(" | ")[2:4]
    assert "**Δ +19.7 [" in five                          # far from zero: bold
    assert "Δ +0.2 [" in twenty and "**" not in twenty    # within the noise


def test_pivot_names_the_lr_selection_and_every_twin_says_what_sets_it_apart(tmp_path, capsys):
    """A method at the recipe's lr and at a grid-chosen lr: two lines, each labelled by its selection; two runs
    the short label cannot tell apart (here: another pretraining lr) BOTH get the columns that differ."""
    path = tmp_path / "r.csv"
    for d in range(2):
        add(path, seed=d, ts=5, OA=60 + d, pretrain_seed=0, pretrain_lr_selection="recipe")
        add(path, seed=d, ts=5, OA=70 + d, pretrain_seed=0, pretrain_lr_selection="val-knn:0.1,0.4@250",
            pretrain_expnum="e2")
    assert summarize.main([str(path), "--pivot", "--out", str(tmp_path / "s")]) == 0
    lines = [ln for ln in (tmp_path / "s.md").read_text().splitlines() if ln.startswith("| 910 simclr")][:2]
    assert sorted(ln.split(" | ")[0] for ln in lines) == [
        "| 910 simclr (pretrain_lr_selection=recipe)", "| 910 simclr (pretrain_lr_selection=val-knn:0.1,0.4@250)"]
    path2 = tmp_path / "r2.csv"
    for d in range(2):
        add(path2, seed=d, ts=5, OA=60 + d, pretrain_seed=0, pretrain_lr="0.05")
        add(path2, seed=d, ts=5, OA=70 + d, pretrain_seed=0, pretrain_lr="0.2", pretrain_expnum="e2")
    assert summarize.main([str(path2), "--pivot", "--out", str(tmp_path / "s2")]) == 0
    capsys.readouterr()
    lines = [ln for ln in (tmp_path / "s2.md").read_text().splitlines() if ln.startswith("| 910 simclr")][:2]
    assert len(lines) == 2 and all("pretrain_lr=" in ln.split(" | ")[0] for ln in lines)


def test_one_checkpoint_pairs_with_a_baseline_of_one_or_no_initialisation_draw_by_draw(tmp_path, capsys):
    """A single pretraining (any seed) against random init without --init-seed, or with one: every draw
    pairs (the reviewer's case: SimCLR seed 3 x 5 draws against a random probe found no common unit)."""
    path = tmp_path / "r.csv"
    for d in range(5):
        add(path, seed=d, ts=5, OA=70 + d, pretrain_seed=3)
        add(path, seed=d, ts=5, OA=60 + d, pretext="random", mode=11, pretrain_expnum="random", pretrain_epoch="")
    code, t, _ = summary(tmp_path, capsys, path, "--baseline", "pretext=random")
    run = t[t["pretext"] == "simclr"].iloc[0]
    assert code == 0 and run["n_pairs"] == "5" and float(run["diff"]) == pytest.approx(10.0)


def test_two_configurations_with_the_same_seeds_are_never_pooled(tmp_path, capsys):
    """Another --tau (another pretrain_config) with the same pretraining seeds and draws is another line."""
    path = tmp_path / "r.csv"
    for cfg, oa in (("aaa111", 50.0), ("bbb222", 80.0)):
        for p in range(2):
            for d in range(2):
                add(path, seed=d, ts=5, OA=oa + p + d, pretrain_seed=p, pretrain_config=cfg,
                    pretrain_expnum=f"{cfg}{p}_pretrain")
    code, t, err = summary(tmp_path, capsys, path)
    assert code == 0 and len(t) == 2 and sorted(t["n"]) == ["4", "4"]
    assert sorted(float(m) for m in t["mean"]) == [51.0, 81.0] and "repeated" not in err


def test_a_difference_shown_by_both_intervals_covers_its_truth_with_three_pretraining_seeds():
    """3 pretraining seeds x 5 draws, the seeds' variance dominating (sd 3 vs 1): the crossed bootstrap alone
    covers the true difference too rarely (a bootstrap over 3 levels), the rule "both intervals exclude 0"
    (bootstrap and t over the seeds) keeps its level; and the inflation makes the bootstrap wider."""
    rng = np.random.default_rng(1)
    lv, dr = np.repeat(np.arange(3), 5), np.tile(np.arange(5), 3)
    boot = union = wider = 0
    reps = 120
    for r in range(reps):
        x = rng.normal(0, 3, 3)[lv] + rng.normal(0, 1, 5)[dr] + rng.normal(0, 0.5, 15)
        run = summary_stats.Scored(x, levels=lv, draws=dr)
        base = summary_stats.Scored(np.zeros(15), levels=lv, draws=dr)
        lo, hi, _, _ = summary_stats.paired_bootstrap_ci(run, base, "OA", 600, r)
        tlo, thi = summary_stats.level_t_ci(run, base)
        boot += lo <= 0 <= hi
        union += (lo <= 0 <= hi) or (tlo <= 0 <= thi)
        plain = summary_stats.paired_bootstrap_ci(summary_stats.Scored(x), summary_stats.Scored(np.zeros(15)),
                                                  "OA", 600, r)
        wider += (hi - lo) > (plain[1] - plain[0])
    assert union / reps >= 0.9 and boot / reps < union / reps and wider / reps > 0.9
    from scipy import stats
    assert summary_stats.t_quantile(2, 0.975) == pytest.approx(stats.t.ppf(0.975, 2), rel=1e-9)
