"""Benchmark: the logistic-regression probe against the sklearn GridSearchCV path it replaced.

Features: random-init ResNet-18 (netnum 090000, 512-d) of the shared AID subset
(../shared/data/aid_subset, 30 classes; extracted once through main_cls.py's own feature
code and cached), or synthetic features of the same shape when the subset is absent. Per
seed, both probes get the same few-shot draw (``--per-class`` images per class from the
few-shot pool) and are scored on the test split; the old path is a faithful copy of the
code main_cls.py ran before (7 C values x 5 stratified folds, max_iter 2000, one process).

    python bench/probe.py                              # 20 per class (600 x 512 x 30), 5 seeds
    python bench/probe.py --per-class 10 --seeds 3     # the quick version
    python bench/probe.py --old-blas-threads 0         # the old path as main_cls.py ran it (OpenBLAS's threads)

The old path runs at its best setting by default, its BLAS pinned to 1 thread: with OpenBLAS's
2 threads on a 2-core machine scipy's L-BFGS loop over small matrices runs ~18x slower, and a
speed-up measured against that would mostly measure the thrashing. The last line is
    probe: <speedup>x faster than sklearn GridSearchCV (old path with <n> BLAS thread(s)); target 20x: <reached|NOT reached>; accuracy difference <d> points
with speedup = total seconds old / total seconds new, d = new minus old accuracy, mean over seeds.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.logreg import logreg_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TARGET = 20.0          # the speed-up the probe was asked for, against the old path at its best setting


def sklearn_gridsearch_predict(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray,
                               seed: int) -> tuple[np.ndarray, float]:
    """The logistic-regression probe as main_cls.py ran it before engine/probe.py (verbatim)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = min(5, int(np.bincount(y_train).min()))
    if folds >= 2:
        grid = GridSearchCV(pipe, {"logisticregression__C": np.logspace(-3, 3, 7)},
                            cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1)
        grid.fit(f_train, y_train)
        best_c = float(grid.best_params_["logisticregression__C"])
        model = grid.best_estimator_
    else:                                  # one shot per class: no fold to validate on
        best_c = 1.0
        model = pipe.fit(f_train, y_train)
    return model.predict(f_test), best_c


def aid_features(data: Path, workers: int) -> tuple[np.ndarray, np.ndarray, list, list, object]:
    """Random-init ResNet-18 features of the AID subset through main_cls.py's probe code."""
    from engine import evaljob, features, labels
    from engine.cli import base_parser
    from engine.runtime import init_runtime

    cache = os.environ.get("RSSSL_CACHE") or str(Path(tempfile.gettempdir()) / "rsssl-bench-cache")
    parser = evaljob.add_args(base_parser("", "cls"))
    args = parser.parse_args(["--ds", "aid", "--data-root", str(data), "--cache-dir", cache, "--mode", "11",
                              "--netnum", "090000", "--probe", "logreg", "--workers", str(workers),
                              "--no-progress", "--results", os.devnull])
    job = evaljob.resolve(args)
    rt = init_runtime(None, None, job.procs)
    try:
        table = features.probe_features(job, rt)
    finally:
        rt.close()
    return table, labels.fewshot_pool(job.index), labels.final_eval_set(job.index), job.opt.classes


def synthetic_features(per_class_pool: int = 36, per_class_test: int = 10, classes: int = 30, dim: int = 512,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Non-negative, correlated, weakly separable features shaped like pooled ReLU outputs."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(64, dim)) / 8
    centres = rng.normal(size=(classes, 64))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(classes), n)
        z = centres[y] * 0.6 + rng.normal(size=(len(y), 64))
        return np.maximum(z @ mix + 0.2 * rng.normal(size=(len(y), dim)), 0), y
    xp, yp = draw(per_class_pool)
    xt, yt = draw(per_class_test)
    return xp, yp, xt, yt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=20, help="shots per class (20 x 30 classes = 600 x 512)")
    parser.add_argument("--seeds", type=int, default=5, help="few-shot draws (seeds 0..N-1)")
    parser.add_argument("--data", default=str(SHARED), help="folder holding aid_subset/")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for feature extraction")
    parser.add_argument("--old-blas-threads", type=int, default=1,
                        help="pin the old path's BLAS to N threads (threadpoolctl); default 1, its best setting (on a "
                             "2-core machine scipy's L-BFGS loop over small matrices runs ~18x slower with OpenBLAS's "
                             "2 threads than with 1); 0 = as main_cls.py ran it")
    a = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore")            # sklearn's ConvergenceWarning at max_iter 2000, every fit
    from datasets.index import few_shot

    if (Path(a.data) / "aid_subset").is_dir():
        table, pool, test, classes = aid_features(Path(a.data), a.workers)
        x_test, y_test = table.take(test)
        source = f"random-init ResNet-18 features of {Path(a.data) / 'aid_subset'}"

        def draw(seed: int) -> tuple[np.ndarray, np.ndarray]:
            return table.take(few_shot(pool, a.per_class, seed, classes))
    else:
        xp, yp, x_test, y_test = synthetic_features()
        source = "synthetic features (../shared/data/aid_subset is absent)"

        def draw(seed: int) -> tuple[np.ndarray, np.ndarray]:
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.permutation(np.flatnonzero(yp == c))[:a.per_class] for c in np.unique(yp)])
            return xp[idx], yp[idx]
    import sklearn.linear_model  # noqa: F401  (loads scipy's own OpenBLAS now, so that the limit below reaches it:
    # a library loaded inside threadpool_limits keeps its default threads, and the first seed ran unpinned)

    def pinned() -> contextlib.AbstractContextManager:
        """The old path's BLAS thread limit, applied around it only."""
        if a.old_blas_threads <= 0:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits
        return threadpool_limits(limits=a.old_blas_threads, user_api="blas")
    print(f"{source}; {a.per_class} per class, seeds 0..{a.seeds - 1}, test {len(y_test)} images; "
          f"old path BLAS threads: {a.old_blas_threads or 'default'}")
    print("| seed | shots x dim | old C | old acc | old s | new C | new acc | new s |")
    print("|---|---|---|---|---|---|---|---|")
    t_old, t_new, diffs = [], [], []
    for seed in range(a.seeds):
        x, y = draw(seed)
        t0 = time.perf_counter()
        with pinned():
            pred_old, c_old = sklearn_gridsearch_predict(x, y, x_test, seed)
        t_old.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = logreg_probe(x, y, x_test, seed)
        t_new.append(time.perf_counter() - t0)
        acc_old, acc_new = 100 * (pred_old == y_test).mean(), 100 * (res.pred == y_test).mean()
        diffs.append(acc_new - acc_old)
        print(f"| {seed} | {x.shape[0]} x {x.shape[1]} | {c_old:g} | {acc_old:.2f} | {t_old[-1]:.1f} | {res.C:g} | "
              f"{acc_new:.2f} | {t_new[-1]:.2f} |", flush=True)
    print(f"old: {sum(t_old):.1f} s in all (median {statistics.median(t_old):.1f} s per seed); "
          f"new: {sum(t_new):.2f} s in all (median {statistics.median(t_new):.2f} s per seed)")
    speedup = sum(t_old) / sum(t_new)
    threads = f"{a.old_blas_threads} BLAS thread(s)" if a.old_blas_threads > 0 else "BLAS threads as main_cls.py ran it"
    print(f"probe: {speedup:.1f}x faster than sklearn GridSearchCV (old path with {threads}); target {TARGET:g}x: "
          f"{'reached' if speedup >= TARGET else 'NOT reached'}; accuracy difference {statistics.mean(diffs):+.2f} points")


if __name__ == "__main__":
    main()
