"""The logistic-regression probe's solver: C chosen by cross-validation on the shots, then the refit.

The protocol of Kolesnikov et al. 2019 / Corley et al. 2023: features standardised with the
statistics of the shots, multinomial logistic regression minimising
``C * sum(cross-entropy) + 0.5 * ||W||^2`` (intercept not penalised; sklearn's objective), C from
``C_GRID`` chosen by stratified 5-fold cross-validation on the shots only (the label rule: a
5-shot row used 5 labels per class), or on the validation slice with ``--select-on val``. Ties go
to the smallest C, as GridSearchCV does. The CV folds are solved side by side, each its own L-BFGS
(float32, in the row space of its fitting rows, diagonally preconditioned) batched over folds,
along the C grid from strong to weak regularisation with warm starts (secant steps in log C), and
stopped by sklearn's criterion (max |gradient| of the mean-loss objective) at 1e-3: the fold
models only rank C. The refit on all shots runs once, at the chosen C, warm-started from the
folds' mean model, to sklearn's 1e-4. bench/probe.py measures it against the GridSearchCV path it
replaces; tests/engine/test_logreg.py against sklearn.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from config.errors import UserError

log = logging.getLogger(__name__)

C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 3, 7))
CV_FOLDS = 5
TOL = 1e-4                 # sklearn's default tol for lbfgs: max |gradient| of the mean-loss objective
CV_TOL = 1e-3              # the fold fits that only rank C, at C <= 1 (cv_tolerance; bench/probe.py measures it)
MAX_ITER = 2000            # per C, as the sklearn path it replaces (max_iter=2000)


def standardize(x_fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of the fitting rows (population std; 1 where a feature is constant, as sklearn)."""
    mean = x_fit.mean(0)
    scale = x_fit.std(0)
    scale[scale < 10 * np.finfo(scale.dtype).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean, scale


def row_space(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d, r) of the span of the rows of ``x`` (n, d), float64.

    With n >= d it is a complete basis of R^d (eigenvectors of x^T x, all kept); with n < d,
    the right singular vectors of the directions whose eigenvalue of x x^T is above 1e-12 of
    the largest. Eigendecompositions of the smaller Gram matrix in torch: on a busy 2-core
    machine numpy's threaded SVD of a 600 x 512 matrix took 11 s, this 0.4 s.
    """
    n, d = x.shape
    if n >= d:
        return torch.linalg.eigh(x.T @ x)[1]
    lam, U = torch.linalg.eigh(x @ x.T)
    keep = lam > lam.max().clamp_min(1e-300) * 1e-12
    return (x.T @ U[:, keep]) / lam[keep].sqrt()


class _BlockLogreg:
    """P multinomial logistic regressions on one set of rows, solved side by side.

    Problem p fits the rows with ``w[p] == 1`` of its own standardised copy ``x[p]`` and minimises
    ``mean CE + ||W_p||^2 / (2 C n_p)``: sklearn's ``C * sum CE + 0.5 ||W_p||^2`` divided by
    ``C n_p``, intercept not penalised. The problems are independent; each gets its own L-BFGS
    (history, step length, stopping) in one batched loop, so one problem's curvature never
    steers another's steps and a converged problem stops costing anything.

    Variables: ``W_p`` lies in the row space of its fitting rows (a component outside it
    changes no logit and only adds penalty), spanned by the right singular vectors ``V_p`` of
    those rows, so ``W_p = V_p B_p``; the columns of ``X_p V_p`` are orthogonal, which makes a
    diagonal preconditioner good: each entry of ``B_p`` (direction i, class k) and of the
    intercept is divided by the square root of the objective's curvature along it at the warm
    start, ``sum_rows p_k (1 - p_k) proj_i^2 / n_p + 1 / (C n_p)``. ``B_p`` carries warm starts
    across C. Only fitting rows enter the iterations; ``logits()`` scores every row. The
    gradients run in ``dtype`` (float32 is 2-3x faster on CPU than float64; the
    sklearn-equivalence test uses float64).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, num_classes: int,
                 dtype: torch.dtype = torch.float64):
        P, n, _ = x.shape
        self.dtype = dtype
        fit = [np.flatnonzero(w[p] > 0) for p in range(P)]
        self.V = [row_space(torch.from_numpy(x[p][fit[p]])) for p in range(P)]   # (d, r_p) each
        r = max(1, max(v.shape[1] for v in self.V))
        m = max(1, max(len(f) for f in fit))
        onehot = torch.nn.functional.one_hot(torch.from_numpy(y), num_classes).to(dtype)
        self.proj = torch.zeros(P, n, r, dtype=dtype)                       # padding columns stay 0
        self.fit_proj = torch.zeros(P, m, r, dtype=dtype)                   # the fitting rows, zero-padded
        self.fit_onehot = torch.zeros(P, m, num_classes, dtype=dtype)
        self.fit_w = torch.zeros(P, m, 1, dtype=dtype)                      # 1 / n_p on fitting rows, 0 on padding
        for p, V in enumerate(self.V):
            self.proj[p, :, :V.shape[1]] = (torch.from_numpy(x[p]) @ V).to(dtype)
            self.fit_proj[p, :len(fit[p])] = self.proj[p, fit[p]]
            self.fit_onehot[p, :len(fit[p])] = onehot[fit[p]]
            self.fit_w[p, :len(fit[p])] = 1.0 / len(fit[p])
        self.n = torch.tensor([float(len(f)) for f in fit], dtype=dtype)
        self.B = torch.zeros(P, r, num_classes, dtype=dtype)
        self.b = torch.zeros(P, num_classes, dtype=dtype)

    def logits(self) -> torch.Tensor:
        """(P, n, K) logits of every row (fitting and held-out) under the current solution."""
        return torch.baddbmm(self.b[:, None, :], self.proj, self.B)

    def weights(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """``W_p`` (d, K) in the standardised feature space and the intercept ``b_p``."""
        r = self.V[p].shape[1]
        return (self.V[p] @ self.B[p, :r].double()).numpy(), self.b[p].double().numpy()

    def set_weights(self, p: int, W: np.ndarray, b: np.ndarray) -> None:
        """Warm start of problem p from ``W`` (d, K) in its standardised space and intercept ``b``."""
        r = self.V[p].shape[1]
        self.B[p] = 0
        self.B[p, :r] = (self.V[p].T @ torch.from_numpy(np.asarray(W, np.float64))).to(self.dtype)
        self.b[p] = torch.from_numpy(np.asarray(b, np.float64)).to(self.dtype)

    def path(self, Cs: Sequence[float], tol: float | Callable[[float], float] = TOL,
             max_iter: int = MAX_ITER) -> Iterator[float]:
        """Solves at every C of ``Cs`` in order, yielding each C once its solution is in place.

        From the third C on, the warm start is the secant step through the two previous
        solutions (linear in log C on C_GRID's even spacing): on random-init ResNet-18 features
        of the AID subset at 600 x 512 this halves the iterations after C = 0.01.
        """
        previous: list[tuple[torch.Tensor, torch.Tensor]] = []
        for C in Cs:
            if len(previous) == 2:
                (B0, b0), (B1, b1) = previous
                self.B, self.b = 2 * B1 - B0, 2 * b1 - b0
            self.solve(float(C), tol(float(C)) if callable(tol) else tol, max_iter)
            previous = previous[-1:] + [(self.B, self.b)]
            yield float(C)

    def solve(self, C: float, tol: float = TOL, max_iter: int = MAX_ITER, history: int = 10) -> int:
        """Minimise every problem at ``C``, warm-started from the current solutions.

        Stops a problem when every entry of its gradient (mean-loss objective, in the
        variables ``B_p``, ``b_p``) is <= ``tol``: sklearn's criterion for lbfgs, or when a step
        no longer decreases its objective beyond rounding. Returns the iterations of the
        slowest problem.
        """
        reg = (1.0 / (C * self.n))[:, None, None]                          # (P, 1, 1)
        with torch.no_grad():                                               # curvature at the warm start
            pr = torch.baddbmm(self.b[:, None, :], self.fit_proj, self.B).softmax(-1)
            h = pr * (1 - pr) * self.fit_w
            D = torch.cat([(torch.bmm(self.fit_proj.transpose(1, 2) ** 2, h) + reg).rsqrt(),
                           h.sum(1, keepdim=True).clamp_min(1e-12).rsqrt()], 1)   # (P, r + 1, K)
        theta = torch.cat([self.B, self.b[:, None, :]], 1) / D             # scaled variables
        iters = _lbfgs(_LogregObjective(self, reg, D), theta, tol, max_iter, history)
        theta = theta * D
        self.B, self.b = theta[:, :-1].contiguous(), theta[:, -1].contiguous()
        return iters


class _LogregObjective:
    """Objective and gradient of a subset of a block's problems, in scaled variables."""

    def __init__(self, block: _BlockLogreg, reg: torch.Tensor, D: torch.Tensor):
        self.block, self.reg, self.D = block, reg, D
        self.select(torch.arange(len(reg)))

    def select(self, idx: torch.Tensor) -> None:
        """Restrict to the problems ``idx`` (copies their rows once, not at every evaluation)."""
        b = self.block
        full = len(idx) == len(self.reg)
        pick = (lambda t: t) if full else (lambda t: t.index_select(0, idx))
        self.proj, self.onehot, self.w = pick(b.fit_proj), pick(b.fit_onehot), pick(b.fit_w)
        self.projT = self.proj.transpose(1, 2)
        self.r, self.Ds = pick(self.reg), pick(self.D)

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objective (A,), gradient in the scaled variables and in the natural ones (A, r + 1, K)."""
        W = theta * self.Ds
        B, b = W[:, :-1], W[:, -1:]
        logp = torch.baddbmm(b, self.proj, B).log_softmax(-1)
        f = -(logp * self.onehot * self.w).sum((1, 2)) + 0.5 * (self.r * B * B).sum((1, 2))
        R = (logp.exp() - self.onehot) * self.w
        g = torch.cat([torch.baddbmm(self.r * B, self.projT, R), R.sum(1, keepdim=True)], 1)
        return f, g * self.Ds, g


def _lbfgs(fg: _LogregObjective, theta: torch.Tensor, tol: float, max_iter: int, history: int) -> int:
    """Independent L-BFGS minimisations of the problems of ``theta`` (P, ...), updated in place.

    Every problem keeps its own curvature pairs, step length (Armijo backtracking from 1, the
    step the preconditioned variables are built for) and stopping rule; problems leave the
    batch as they converge. Two-loop recursion batched over problems.
    """
    shape = theta.shape[1:]
    eps = torch.finfo(theta.dtype).eps
    active = torch.arange(len(theta))
    x = theta.flatten(1).clone()                                        # theta is written back at the end
    f, g, gn = fg(x.view(-1, *shape))
    g = g.flatten(1)
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    rho: list[torch.Tensor] = []
    it = 0
    while True:
        done = gn.flatten(1).abs().amax(1) <= tol
        if it >= max_iter or bool(done.all()):
            break
        if bool(done.any()):                                                # retire converged problems
            keep = torch.nonzero(~done).flatten()
            theta[active] = x.view(-1, *shape)
            active = active[keep]
            fg.select(active)
            x, f, g = x[keep], f[keep], g[keep]
            S, Y, rho = [s[keep] for s in S], [y[keep] for y in Y], [p[keep] for p in rho]
        it += 1
        q = -g
        alpha = []
        for s, y, p in zip(reversed(S), reversed(Y), reversed(rho)):
            a = p * (s * q).sum(1, keepdim=True)
            q = q - a * y
            alpha.append(a)
        if S:
            q = q * ((S[-1] * Y[-1]).sum(1, keepdim=True) / (Y[-1] * Y[-1]).sum(1, keepdim=True))
        for s, y, p, a in zip(S, Y, rho, reversed(alpha)):
            q = q + (a - p * (y * q).sum(1, keepdim=True)) * s
        gtd = (g * q).sum(1)
        t = torch.ones_like(f)
        slack = 8 * eps * f.abs()                                           # rounding of the objective
        for _ in range(30):                                                 # Armijo backtracking, per problem
            x_new = x + t[:, None] * q
            f_new, g_new, gn_new = fg(x_new.view(-1, *shape))
            ok = f_new <= f + 1e-4 * t * gtd + slack
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        g_new = g_new.flatten(1)
        s, y = x_new - x, g_new - g
        sy, ss = (s * y).sum(1, keepdim=True), (s * s).sum(1, keepdim=True)
        # strictly convex: s.y > 0 up to rounding; a pair that lost it to rounding is replaced by
        # one that leaves the current scaling unchanged
        bad = sy <= eps * ss
        stalled = (f_new >= f - slack) & bad.squeeze(1)
        y = torch.where(bad, s, y)
        sy = torch.where(bad, ss, sy)
        S.append(s), Y.append(y), rho.append(1.0 / sy.clamp_min(torch.finfo(sy.dtype).tiny))
        if len(S) > history:
            S.pop(0), Y.pop(0), rho.pop(0)
        x, f, g, gn = x_new, f_new, g_new, gn_new
        if bool(stalled.any()):                                             # no progress left to make
            gn = torch.where(stalled.view(-1, *[1] * (gn.dim() - 1)), torch.zeros_like(gn), gn)
    theta[active] = x.view(-1, *shape)
    return it


@dataclass
class LogReg:
    """A fitted probe: standardisation of its shots and the linear map."""

    mean: np.ndarray
    scale: np.ndarray
    theta: np.ndarray           # (d + 1, K): weights, last row the intercept
    classes: np.ndarray         # the labels of the K columns
    C: float

    def decision(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return z @ self.theta[:-1] + self.theta[-1]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.decision(x)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[self.decision(x).argmax(1)]


def _problems(x: np.ndarray, fit_masks: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """One standardised copy of ``x`` per problem, with that problem's fitting rows' statistics."""
    stats = [standardize(x[m]) for m in fit_masks]
    return np.stack([(x - mu) / sd for mu, sd in stats]), stats


def fit_logreg(x: np.ndarray, y: np.ndarray, C: float, tol: float = TOL, max_iter: int = MAX_ITER,
               dtype: torch.dtype = torch.float64) -> LogReg:
    """Standardise ``x`` with its own statistics and fit at one ``C`` (sklearn's objective)."""
    return fit_logreg_path(x, y, [C], tol, max_iter, dtype)[0]


def fit_logreg_path(x: np.ndarray, y: np.ndarray, Cs: Sequence[float], tol: float = TOL,
                    max_iter: int = MAX_ITER, dtype: torch.dtype = torch.float64) -> list[LogReg]:
    """Fits at every C of ``Cs`` (in that order, each warm-started from the previous)."""
    x = np.asarray(x, np.float64)
    classes, yi = np.unique(y, return_inverse=True)
    xs, ((mu, sd),) = _problems(x, [np.ones(len(x), bool)])
    block = _BlockLogreg(xs, yi, np.ones((1, len(x))), len(classes), dtype)
    out = []
    for C in block.path(Cs, tol, max_iter):
        W, b = block.weights(0)
        out.append(LogReg(mu, sd, np.vstack([W, b]), classes, C))
    return out


@dataclass
class LogregResult:
    pred: np.ndarray            # predicted labels of the test features
    C: float
    select_on: str              # "shots", "val" or "none" (one shot per class with --select-on shots)
    selection_labels: int       # labels the choice of C read
    scores: dict[float, float]  # selection accuracy per C


def cv_tolerance(C: float, cv_tol: float = CV_TOL) -> float:
    """Gradient tolerance of the fold fits at ``C``: ``cv_tol`` up to C = 1, ``cv_tol / C`` above.

    The penalty's curvature is 1 / (C n), so at one gradient tolerance a fold model at C = 1000 may
    lie 1000x farther from its optimum than at C = 1; with fewer shots than features (the fits near
    separation) that moved held-out predictions, and so the C chosen: at 10 shots x 30 classes of
    random-init ResNet-18 features of the AID subset, one of 5 draws chose C = 100 over the exact
    optimum's 0.1 (3.7 points of accuracy). Scaled, every C's fold models are as close to their optimum
    as at C = 1 (tests/engine/test_logreg.py); it costs about twice the fold fitting time.
    """
    return cv_tol * min(1.0, 1.0 / C)


def stratified_folds(y: np.ndarray, seed: int) -> list[np.ndarray]:
    """Held-out masks of stratified k-fold CV (k = min(5, smallest class)); the folds GridSearchCV used."""
    from sklearn.model_selection import StratifiedKFold
    k = min(CV_FOLDS, int(np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    if k < 2:
        return []
    out = []
    for _, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        m = np.zeros(len(y), bool)
        m[held] = True
        out.append(m)
    return out


def logreg_probe(x_shots: np.ndarray, y_shots: np.ndarray, x_test: np.ndarray, seed: int,
                 select_on: str = "shots", x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                 Cs: Sequence[float] = C_GRID, tol: float = TOL, max_iter: int = MAX_ITER,
                 dtype: torch.dtype = torch.float32, cv_tol: float = CV_TOL) -> LogregResult:
    """Choose C (CV on the shots, or the validation slice), refit on all shots, predict ``x_test``.

    Shots: the CV folds form one block solved along ``Cs`` (ascending: strong to weak
    regularisation, warm starts) to :func:`cv_tolerance` (``cv_tol``, divided by C above C = 1);
    then the refit on all shots at the chosen C, to ``tol`` (sklearn's), warm-started from the
    mean of the folds' models at that C. The fold models only rank C by held-out accuracy, which
    a 10x looser gradient tolerance than sklearn's does not change at C <= 1 (bench/probe.py
    compares the C chosen and the accuracy with GridSearchCV's). Val: the refit alone along
    ``Cs``, each solution scored on ``x_val``. Ties go to the smallest C.
    """
    x = np.asarray(x_shots, np.float64)
    classes, yi = np.unique(y_shots, return_inverse=True)
    Cs = sorted(float(c) for c in Cs)
    if select_on == "val":
        if x_val is None or y_val is None or len(y_val) == 0:
            raise UserError("--select-on val needs a validation slice; this dataset's split has none")
        held_masks = []
    elif select_on == "shots":
        held_masks = stratified_folds(y_shots, seed)
    else:
        raise ValueError(f"select_on must be 'shots' or 'val', not {select_on!r}")
    if select_on == "shots" and not held_masks:
        log.warning("one shot per class leaves no fold to validate C on: C = 1 (fixed); "
                    "--select-on val chooses C on the validation slice instead")
        model = fit_logreg(x, y_shots, 1.0, tol, max_iter, dtype)
        return LogregResult(model.predict(x_test), 1.0, "none", 0, {})
    if select_on == "val":                       # the refit alone along Cs, each scored on the slice
        scores, refits = {}, {}
        for C, model in zip(Cs, fit_logreg_path(x, y_shots, Cs, tol, max_iter, dtype)):
            refits[C] = model
            scores[C] = float((model.predict(x_val) == y_val).mean())
        best = max(scores.values())
        C = min(c for c, s in scores.items() if s == best)
        return LogregResult(refits[C].predict(x_test), C, "val", len(y_val), scores)
    fit_masks = [~m for m in held_masks]
    xs, stats = _problems(x, fit_masks)
    block = _BlockLogreg(xs, yi, np.stack(fit_masks), len(classes), dtype)
    scores, solutions = {}, {}
    for C in block.path(Cs, lambda c: cv_tolerance(c, cv_tol), max_iter):
        pred = block.logits().argmax(-1).numpy()                            # every fold's model, every row
        scores[C] = float(np.mean([(pred[p][held] == yi[held]).mean() for p, held in enumerate(held_masks)]))
        solutions[C] = block.B, block.b                                     # each solve makes new tensors
    best = max(scores.values())
    C = min(c for c, s in scores.items() if s == best)
    # the refit on all shots, at the chosen C only, warm-started from the folds' mean model
    block.B, block.b = solutions[C]
    raw = [_to_raw(*block.weights(p), *stats[p]) for p in range(len(held_masks))]
    xs, ((mu, sd),) = _problems(x, [np.ones(len(x), bool)])
    refit = _BlockLogreg(xs, yi, np.ones((1, len(x))), len(classes), dtype)
    refit.set_weights(0, *_from_raw(np.mean([w for w, _ in raw], 0), np.mean([b for _, b in raw], 0), mu, sd))
    refit.solve(C, tol, max_iter)
    W, b = refit.weights(0)
    model = LogReg(mu, sd, np.vstack([W, b]), classes, C)
    return LogregResult(model.predict(x_test), C, "shots", len(y_shots), scores)


def _to_raw(W: np.ndarray, b: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights on standardised features -> the same linear map on raw features."""
    return W / sd[:, None], b - (mu / sd) @ W


def _from_raw(W: np.ndarray, b: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``_to_raw`` for another standardisation."""
    return W * sd[:, None], b + mu @ W
