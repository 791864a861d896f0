"""Statistics for scripts/summarize.py: bootstrap CIs over seeds and test images, paired tests.

Few-shot rows vary for two reasons: the draw of the labelled shots (the seed) and the
finite test set (with 94 test images one image is a point of OA). Every seed of a run
is scored on the SAME test images, so the two sources are crossed, not nested. The
bootstrap here resamples both: each replicate draws the seeds with replacement and ONE
multiset of test images (multinomial weights) shared by all seeds (and, for a paired
difference, by both runs), and recomputes the metric from the weighted confusion
matrices. Percentile intervals. Where per-image predictions are missing the replicate
resamples the seeds only.

A method pretrained with several seeds adds a third source, crossed with the other two: every
pretraining seed is probed with the same draws on the same images. Its rows are then units
(pretraining seed, draw) (:attr:`Scored.levels`, :attr:`Scored.draws`), and each replicate
draws the pretraining seeds and the draws independently with replacement, a unit weighing the
product of its two counts (a crossed, "two-way" bootstrap; with random init, the initialisation
seed is the level that pairs with a pretraining seed). The paired t-test then runs over the
pretraining seeds' mean differences: the level whose variance dominates when a recipe moves a
cell by several points between pretrainings.

Paired tests, none of which treats the seeds' shared test images as independent:

* the **bootstrap p** of the paired difference, from the same crossed resampling as its CI
  (seeds and one image resample shared by both runs): twice the share of replicates on the far
  side of 0, ``p = min(1, 2 (min(#{d* <= 0}, #{d* >= 0}) + 1) / (B + 1))``, i.e. about the
  smallest level at which the percentile CI excludes 0;
* the **exact McNemar test per seed** (one seed's image pairs are independent draws of the
  test set), reported as the median and range over seeds. Pooling the seeds' image pairs
  (as this file did before) counts the same 94 images five times and is anti-conservative
  when the seeds agree;
* Student's **paired t over seeds**: the draw's variance only, not the test set's.

Implemented here without scipy; the tests compare them with scipy.stats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS = ("OA", "AA", "kappa", "macro_F1")


@dataclass
class Scored:
    """One run's seeds: the recorded metric per seed and, when saved, per-image predictions."""

    values: np.ndarray                 # (n_seeds,) the metric as recorded in the rows
    true: np.ndarray | None = None     # (n_images,) class indices, the same images for every seed
    pred: np.ndarray | None = None     # (n_seeds, n_images)
    num_classes: int = 0
    images: tuple[str, ...] = ()       # what the images are (path and true class), to pair two runs
    levels: np.ndarray | None = None   # (n_seeds,) pretraining-seed index of each unit (None: no such level)
    draws: np.ndarray | None = None    # (n_seeds,) draw index of each unit (with ``levels``)


def metric_from_confusion(conf: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of a stack of (weighted) confusion matrices ``(..., K, K)``, as engine.metrics defines it.

    OA, AA and macro-F1 in percent, kappa as a fraction.
    """
    conf = np.asarray(conf, dtype=np.float64)
    n = conf.sum(axis=(-1, -2))
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    rows, cols = conf.sum(axis=-1), conf.sum(axis=-2)
    if metric == "OA":
        return 100 * tp.sum(-1) / n
    if metric == "AA":
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(rows > 0, tp / rows, np.nan)
        return 100 * np.nanmean(recall, axis=-1)
    if metric == "macro_F1":
        denom = rows + cols
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
        return 100 * np.nanmean(f1, axis=-1)
    if metric == "kappa":
        po = tp.sum(-1) / n
        pe = (rows * cols).sum(-1) / n**2
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")


def _weighted_confusions(true: np.ndarray, pred: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices ``(B, K, K)`` of one seed's predictions under image weights ``(B, N)``."""
    cells = true * k + pred
    out = np.zeros((weights.shape[0], k * k))
    order = np.argsort(cells, kind="stable")
    sorted_cells = cells[order]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    sums = np.add.reduceat(weights[:, order], starts, axis=1)
    out[:, sorted_cells[starts]] = sums
    return out.reshape(-1, k, k)


def _replicates(runs: list[Scored], metric: str, n_boot: int, rng: np.random.Generator,
                images: bool) -> list[np.ndarray]:
    """Per run, ``(B, n_seeds)`` metric values under shared resampled image weights (or the recorded values)."""
    if not images:
        return [np.broadcast_to(r.values, (n_boot, len(r.values))) for r in runs]
    n_img = len(runs[0].true)
    weights = rng.multinomial(n_img, np.full(n_img, 1.0 / n_img), size=n_boot).astype(np.float64)
    out = []
    for r in runs:
        per_seed = [metric_from_confusion(_weighted_confusions(r.true, p, weights, r.num_classes), metric)
                    for p in r.pred]
        out.append(np.stack(per_seed, axis=1))
    return out


def has_images(*runs: Scored) -> bool:
    """All runs carry per-image predictions on one and the same list of test images."""
    if not all(r.true is not None and r.pred is not None for r in runs):
        return False
    return all(len(r.true) == len(runs[0].true) and r.images == runs[0].images for r in runs)


def bootstrap_ci(run: Scored, metric: str, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, str]:
    """Percentile CI of the mean over seeds; returns ``(low, high, over)``, over = 'seeds+images' or 'seeds'."""
    n = len(run.values)
    images = has_images(run)
    if n < 2 and not images:
        return math.nan, math.nan, "none (1 seed, no per-image predictions)"
    rng = np.random.default_rng(seed)
    (vals,) = _replicates([run], metric, n_boot, rng, images)
    w = unit_weights(run, n_boot, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (w * vals).sum(1) / w.sum(1)
    means = _inflated(means, float(np.mean(run.values)), run)
    lo, hi = np.nanquantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi), _over(run, images)


def _inflated(replicates: np.ndarray, centre: float, run: Scored) -> np.ndarray:
    """Replicates spread by sqrt(P / (P - 1)) about the estimate when the run has P pretraining seeds.

    A bootstrap over P resampled levels has a variance (P - 1) / P of the level component's; with
    P = 3 that is two thirds, and the percentile interval covers too rarely. The factor restores the
    variance (the larger of the two factors' corrections, P < D: conservative for the draws). It cannot
    fix the quantile of a variance estimated from 3 seeds: :func:`level_t_ci` does that for the
    difference, and a claim rests on both."""
    if run.levels is None:
        return replicates
    p = int(run.levels.max()) + 1
    return centre + math.sqrt(p / (p - 1)) * (replicates - centre)


def t_quantile(df: int, q: float) -> float:
    """The ``q`` quantile (q > 0.5) of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        upper = 0.5 * _betainc(df / 2, 0.5, df / (df + mid * mid))        # P(T > mid)
        lo, hi = (mid, hi) if 1 - upper < q else (lo, mid)
    return (lo + hi) / 2


def level_t_ci(run: Scored, base: Scored, level: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean paired difference over the pretraining seeds' mean differences
    (df = P - 1): the between-pretraining variation with an exact small-sample quantile. NaN with fewer
    than 2 pretraining seeds."""
    a, b = level_differences(run, base)
    if run.levels is None or len(a) < 2:
        return math.nan, math.nan
    d = a - b
    half = t_quantile(len(d) - 1, (1 + level) / 2) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def _over(run: Scored, images: bool) -> str:
    """What a replicate resampled: the seeds (draws), with pretraining seeds as a crossed level, and images."""
    return ("pretraining seeds+draws" if run.levels is not None else "seeds") + ("+images" if images else "")


def paired_bootstrap_ci(run: Scored, base: Scored, metric: str, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, str, float]:
    """Percentile CI of the mean paired difference run - base (same seeds, same resampled images) and its
    two-sided bootstrap p-value (module docstring); ``(low, high, over, p)``."""
    n = len(run.values)
    images = has_images(run, base)
    if n < 2 and not images:
        return math.nan, math.nan, "none", math.nan
    rng = np.random.default_rng(seed)
    a, b = _replicates([run, base], metric, n_boot, rng, images)
    w = unit_weights(run, n_boot, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = (w * (a - b)).sum(1) / w.sum(1)
    diffs = _inflated(diffs, float(np.mean(run.values - base.values)), run)
    lo, hi = np.nanquantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi), _over(run, images), bootstrap_p(diffs)


def unit_weights(run: Scored, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(B, n_units)`` bootstrap weights of a run's units: multinomial counts over the units, or with
    pretraining-seed levels the product of a level count and a draw count (the crossed design)."""
    n = len(run.values)
    if run.levels is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    n_lv, n_dr = int(run.levels.max()) + 1, int(run.draws.max()) + 1
    lv = rng.multinomial(n_lv, np.full(n_lv, 1.0 / n_lv), size=n_boot).astype(np.float64)
    dr = rng.multinomial(n_dr, np.full(n_dr, 1.0 / n_dr), size=n_boot).astype(np.float64)
    return lv[:, run.levels] * dr[:, run.draws]


def level_differences(run: Scored, base: Scored) -> tuple[np.ndarray, np.ndarray]:
    """Per pretraining seed (level), the mean over its draws of each run's values (for the paired t over levels)."""
    if run.levels is None:
        return run.values, base.values
    lv = sorted(set(run.levels.tolist()))
    return (np.array([run.values[run.levels == k].mean() for k in lv]),
            np.array([base.values[run.levels == k].mean() for k in lv]))


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided p of "no difference" from bootstrap replicates of a difference (NaN replicates ignored)."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[~np.isnan(d)]
    if not len(d):
        return math.nan
    far = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return min(1.0, 2 * (far + 1) / (len(d) + 1))


def mcnemar_per_seed(run: Scored, base: Scored) -> list[float]:
    """The exact McNemar p of each seed's image pairs (the runs' predictions on the same images)."""
    if not has_images(run, base):
        return []
    return [mcnemar_exact_p(pa == run.true, pb == base.true)[0] for pa, pb in zip(run.pred, base.pred)]


def paired_t_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Student's paired t-test (NaN for fewer than 2 pairs; 1 or 0 without spread)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return 1.0 if d.mean() == 0 else 0.0
    t = d.mean() / (sd / math.sqrt(n))
    df = n - 1
    return float(_betainc(df / 2, 0.5, df / (df + t * t)))


def mcnemar_exact_p(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, int, int]:
    """Exact two-sided McNemar p-value and the discordant counts (a right b wrong, a wrong b right)."""
    ca, cb = np.asarray(correct_a, bool).ravel(), np.asarray(correct_b, bool).ravel()
    n10, n01 = int((ca & ~cb).sum()), int((~ca & cb).sum())
    m = n10 + n01
    if m == 0:
        return 1.0, n10, n01
    k = min(n10, n01)
    # P(X <= k) for X ~ Binomial(m, 1/2), in log space so thousands of discordant pairs do not underflow
    logs = [math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) - m * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2 * tail), n10, n01


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
            last = d * c
        if abs(last - 1) < eps:
            break
    return h
