"""engine/probe.py: the logistic-regression solver against sklearn, C selection, kNN against a
brute-force reference, and a feature cache that pairs features with images by path."""
from __future__ import annotations

import logging
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from engine import probe
from engine.knn import knn_predict


def blobs(n_per: tuple[int, ...], d: int, seed: int, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian classes (unequal sizes, so the unpenalised intercept matters), plus their centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per), d))
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per)])
    x = centres[y] + spread * rng.normal(size=(len(y), d)) + 3.0      # offset: standardisation matters
    return x, y, centres


# ---------------------------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("C", [0.01, 1.0, 30.0])
def test_fit_logreg_matches_sklearn_at_fixed_c(C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    x, y, _ = blobs((40, 25, 15, 10), 12, seed=1)
    xt, yt, _ = blobs((50, 50, 50, 50), 12, seed=1)
    ours = probe.fit_logreg(x, y, C, tol=1e-10, max_iter=5000)
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=C, solver="lbfgs", tol=1e-10, max_iter=5000).fit(scaler.transform(x), y)
    p_ours, p_ref = ours.predict_proba(xt), ref.predict_proba(scaler.transform(xt))
    assert np.abs(p_ours - p_ref).max() < 1e-5
    assert (ours.predict(xt) == ref.predict(scaler.transform(xt))).all()

    # the same objective: C * sum CE + 0.5 ||W||^2, intercept free
    def objective(W, b):
        z = scaler.transform(x) @ W + b
        logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
        return C * -logp[np.arange(len(y)), y].sum() + 0.5 * (W ** 2).sum()
    o_ours = objective(ours.theta[:-1], ours.theta[-1])
    o_ref = objective(ref.coef_.T, ref.intercept_)
    assert abs(o_ours - o_ref) <= 1e-6 * abs(o_ref)


def test_block_problems_solve_each_fold_independently():
    x, y, _ = blobs((12, 12, 12), 6, seed=2)
    held = probe.stratified_folds(y, seed=0)
    xs, stats = probe._problems(x, [~m for m in held])
    block = probe._BlockLogreg(xs, y, np.stack([~m for m in held]), 3)
    block.solve(0.5, tol=1e-10)
    for p, m in enumerate(held):
        alone = probe.fit_logreg(x[~m], y[~m], 0.5, tol=1e-10)
        W, b = block.weights(p)
        got = probe.LogReg(*stats[p], np.vstack([W, b]), np.arange(3), 0.5)
        assert np.abs(got.predict_proba(x) - alone.predict_proba(x)).max() < 1e-6


def _mean_loss_gradient(x, y, W, b, C):
    """Gradient of sklearn's objective divided by C n (mean CE + ||W||^2 / (2 C n)), numpy float64."""
    z = x @ W + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    R = (p - np.eye(W.shape[1])[y]) / len(y)
    return np.vstack([x.T @ R + W / (C * len(y)), R.sum(0)])


def test_every_problem_of_a_block_meets_the_tolerance_on_its_own():
    # two problems of very different difficulty: an easy, strongly regularised one must not stop
    # the hard one early, and the hard one must not drag the easy one past its optimum
    x, y, _ = blobs((20, 20, 20), 10, seed=11, spread=0.7)
    easy = np.zeros(len(y), bool)
    easy[::3] = True
    masks = [easy, np.ones(len(y), bool)]
    xs, stats = probe._problems(x, masks)
    block = probe._BlockLogreg(xs, y, np.stack(masks).astype(float), 3)
    tol = 1e-6
    block.solve(50.0, tol=tol, max_iter=5000)
    for p, m in enumerate(masks):
        W, b = block.weights(p)
        g = _mean_loss_gradient(xs[p][m], y[m], W, b, 50.0)
        assert np.abs(g).max() <= 10 * tol          # V_p is orthonormal: the B-space criterion bounds this


def test_a_solve_that_starts_at_the_optimum_keeps_it():
    # zero iterations (C = 1000 on the AID features often starts converged): nothing may move
    x, y, _ = blobs((15, 15), 5, seed=13)
    xs, _ = probe._problems(x, [np.ones(len(y), bool)])
    block = probe._BlockLogreg(xs, y, np.ones((1, len(y))), 2)
    block.solve(1.0, tol=1e-8)
    before = block.weights(0)
    assert block.solve(1.0, tol=1e-8) == 0
    np.testing.assert_allclose(block.weights(0)[0], before[0], rtol=1e-12, atol=1e-14)   # up to the rescaling


def test_refit_warm_start_maps_weights_between_standardisations():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(30, 5)) * 3 + 1
    W, b = rng.normal(size=(5, 4)), rng.normal(size=4)
    mu1, sd1 = probe.standardize(x[:20])
    mu2, sd2 = probe.standardize(x)
    raw = probe._to_raw(W, b, mu1, sd1)
    W2, b2 = probe._from_raw(*raw, mu2, sd2)
    np.testing.assert_allclose(((x - mu1) / sd1) @ W + b, ((x - mu2) / sd2) @ W2 + b2, atol=1e-10)


def test_float32_path_agrees_with_float64():
    x, y, _ = blobs((30, 20, 10), 40, seed=3, spread=2.0)
    xt, _, _ = blobs((40, 40, 40), 40, seed=3, spread=2.0)
    for C in (0.01, 1.0, 100.0):
        hi = probe.fit_logreg(x, y, C, tol=1e-8, max_iter=5000)
        lo = probe.fit_logreg(x, y, C, dtype=torch.float32)               # the sweep's precision and tol
        if C <= 1:       # weak regularisation on separable data: a flat optimum, only decisions are pinned
            assert np.abs(lo.predict_proba(xt) - hi.predict_proba(xt)).max() < 1e-2
        assert (lo.predict(xt) == hi.predict(xt)).mean() >= 0.98


def test_row_space_basis_is_exact_when_shots_are_fewer_than_features():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(7, 20)))
    V = probe.row_space(x)
    assert V.shape == (20, 7)
    np.testing.assert_allclose((V.T @ V).numpy(), np.eye(7), atol=1e-10)
    np.testing.assert_allclose((x @ V @ V.T).numpy(), x.numpy(), atol=1e-10)    # rows lie in the span
    assert probe.row_space(torch.from_numpy(rng.normal(size=(30, 20)))).shape == (20, 20)


def test_cross_validation_scores_and_choice_match_gridsearchcv():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y, centres = blobs((10, 10, 10), 8, seed=3, spread=2.5)
    xt = centres[np.arange(3).repeat(30)] + 2.5 * np.random.default_rng(9).normal(size=(90, 8)) + 3.0
    res = probe.logreg_probe(x, y, xt, seed=4, tol=1e-9, max_iter=5000, cv_tol=1e-9)
    grid = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(tol=1e-9, max_iter=5000)),
                        {"logisticregression__C": np.logspace(-3, 3, 7)},
                        cv=StratifiedKFold(5, shuffle=True, random_state=4)).fit(x, y)
    assert list(res.scores) == pytest.approx(list(np.logspace(-3, 3, 7)))
    assert list(res.scores.values()) == pytest.approx(list(grid.cv_results_["mean_test_score"]), abs=1e-12)
    assert res.C == pytest.approx(grid.best_params_["logisticregression__C"])
    assert (res.pred == grid.predict(xt)).all()
    assert res.select_on == "shots" and res.selection_labels == 30
    assert len(set(res.scores.values())) > 1                         # the choice was not a foregone tie


def test_select_on_val_scores_every_c_on_the_slice_only():
    x, y, centres = blobs((6, 6, 6), 8, seed=5, spread=2.0)
    xv, yv, _ = blobs((5, 5, 5), 8, seed=6, spread=2.0)
    xv = centres[yv] + 2.0 * np.random.default_rng(7).normal(size=xv.shape) + 3.0
    res = probe.logreg_probe(x, y, xv, seed=0, select_on="val", x_val=xv, y_val=yv, tol=1e-9)
    for C, score in res.scores.items():
        alone = probe.fit_logreg(x, y, C, tol=1e-9)              # cold start: the warm path must not matter
        assert score == pytest.approx((alone.predict(xv) == yv).mean())
    best = max(res.scores.values())
    assert res.C == min(c for c, s in res.scores.items() if s == best)
    assert res.select_on == "val" and res.selection_labels == 15


def test_one_shot_per_class_uses_c_1_and_says_so(caplog):
    x, y, _ = blobs((1, 1, 1), 4, seed=8)
    with caplog.at_level(logging.WARNING):
        res = probe.logreg_probe(x, y, x, seed=0)
    assert res.C == 1.0 and res.select_on == "none" and res.selection_labels == 0
    assert "no fold to validate C" in caplog.text
    assert (res.pred == y).all()


def test_constant_feature_is_left_unscaled():
    x, y, _ = blobs((8, 8), 3, seed=9)
    x[:, 1] = 7.0
    mean, scale = probe.standardize(x)
    assert scale[1] == 1.0 and mean[1] == 7.0
    assert np.isfinite(probe.fit_logreg(x, y, 1.0).predict_proba(x)).all()


# ---------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------

def brute_force_knn(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, num_classes: int, k: int,
                    vote: str, t: float = 0.07) -> tuple[list[int], int]:
    """One pair at a time: cosine, sort, vote; majority ties to the larger summed similarity."""
    preds, ties = [], 0
    for q in test:
        sims = []
        for j, r in enumerate(train):
            dot = sum(float(a) * float(b) for a, b in zip(q, r))
            sims.append((dot / (math.sqrt(sum(float(a) ** 2 for a in q)) * math.sqrt(sum(float(b) ** 2 for b in r))), j))
        near = sorted(sims, reverse=True)[:k]
        if vote == "weighted":
            score = [0.0] * num_classes
            for s, j in near:
                score[train_y[j]] += math.exp(s / t)
            preds.append(max(range(num_classes), key=lambda c: score[c]))
        else:
            count, simsum = [0] * num_classes, [0.0] * num_classes
            for s, j in near:
                count[train_y[j]] += 1
                simsum[train_y[j]] += s
            top = max(count)
            tied = [c for c in range(num_classes) if count[c] == top]
            ties += len(tied) > 1
            preds.append(max(tied, key=lambda c: simsum[c]))
    return preds, ties


@pytest.mark.parametrize("vote", ["weighted", "majority"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_brute_force(vote, k):
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(3, 6))
    ytr = np.repeat(np.arange(3), 5)
    tr = centres[ytr] + 0.9 * rng.normal(size=(15, 6))
    te = centres[rng.integers(0, 3, 40)] + 0.9 * rng.normal(size=(40, 6))
    got = knn_predict(torch.from_numpy(tr), torch.from_numpy(ytr), torch.from_numpy(te), 3, k=k, vote=vote, chunk=16)
    want, ties = brute_force_knn(tr, ytr, te, 3, k, vote)
    assert got.tolist() == want
    if vote == "majority" and k == 4:
        assert ties > 0                                  # the tie rule was exercised


def test_knn_votes_differ_where_they_should():
    # two far neighbours of class 1 outvote one close neighbour of class 0 only under majority vote
    tr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    ytr = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.3]])
    assert knn_predict(tr, ytr, q, 2, k=3, vote="weighted").item() == 0
    assert knn_predict(tr, ytr, q, 2, k=3, vote="majority").item() == 1


def test_knn_k_above_the_shots_is_clamped_with_a_warning(caplog):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 4)).astype(np.float32), np.repeat(np.arange(5), 2)
    with caplog.at_level(logging.WARNING):
        pred, k = probe.knn_probe(x, y, x, 5, k=20, vote="weighted")
    assert k == 10 and "--knn-k 20 exceeds the 10 shots" in caplog.text
    ref = knn_predict(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x), 5, k=10)
    assert (pred == ref.numpy()).all()


# ---------------------------------------------------------------------------------------------
# features and their cache
# ---------------------------------------------------------------------------------------------

def test_feature_table_takes_rows_by_path():
    from datasets.index import Sample
    from pathlib import Path
    paths = [f"/d/c{i % 2}/img{i}.tif" for i in range(6)]
    feats = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    table = probe.FeatureTable(paths[::-1], feats[::-1].copy())           # stored in another order
    want = [Sample(Path(paths[i]), i % 2) for i in (4, 1, 3)]
    x, y = table.take(want)
    assert x[:, 0].tolist() == [4.0, 1.0, 3.0] and y.tolist() == [0, 1, 1]
    assert not table.covers([Sample(Path("/d/c0/new.tif"), 0)])


def _probe_job(root, cache, *extra):
    from engine import finetune
    from engine.cli import base_parser
    args = finetune.add_args(base_parser("", "cls")).parse_args(
        ["--ds", "demo", "--data-root", str(root), "--cache-dir", str(cache), "--mode", "11", "--netnum", "090000",
         "--input_size", "32", "--workers", "0", "--probe", "logreg", "--no-progress", *extra])
    return args, finetune.prepare(args)


def _features(root, cache, caplog):
    from engine.runtime import init_runtime
    args, job = _probe_job(root, cache)
    rt = init_runtime(None, None, args)
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            table = probe.probe_features(args, job, rt)
    finally:
        rt.close()
    return table, (args, job), caplog.text


def _direct(args, job, samples) -> np.ndarray:
    """Each image through the backbone on its own (the model probe_features builds)."""
    from datasets.folder import make_dataset
    from datasets.transforms import plain
    from engine.finetune import build_classifier
    from engine.runtime import reseed
    reseed(args.seed, 0, 0)
    backbone = build_classifier(args, job).backbone.eval()
    ds = make_dataset(job.opt, samples, lambda o: plain(o.input_size, o.mean, o.std))
    with torch.no_grad():
        return np.stack([backbone(ds[i][0][None])[0].numpy() for i in range(len(samples))])


def test_changed_file_list_misses_the_cache_and_keeps_pairs(demo_root, tmp_path, caplog):
    torch.set_num_threads(1)
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    cache = tmp_path / "cache"
    first, (_, job1), _ = _features(root, cache, caplog)
    again, _, text = _features(root, cache, caplog)
    assert "frozen features from cache" in text
    assert np.array_equal(again.feats, first.feats) and again.paths == first.paths
    # remove the first training image: every later position shifts by one
    gone = sorted(job1.index.train, key=lambda s: s.path.as_posix())[0].path
    gone.unlink()
    changed, (args2, job2), text = _features(root, cache, caplog)
    assert "from cache" not in text and "frozen features of" in text
    assert len(list((cache / job2.opt.cache_key / "features").glob("*.npz"))) == 2
    assert gone.as_posix() not in changed.row and len(changed.paths) == len(first.paths) - 1
    # each image keeps its own features: compare with the images run one by one
    check = sorted(job2.index.train + job2.index.test, key=lambda s: s.path.as_posix())[:3]
    x, _ = changed.take(check)
    np.testing.assert_allclose(x, _direct(args2, job2, check), rtol=1e-4, atol=1e-5)


def test_cache_entry_for_other_inputs_is_not_used(tmp_path, caplog):
    from datasets.index import Sample
    from pathlib import Path
    path = tmp_path / "f.npz"
    table = probe.FeatureTable(["/a.tif", "/b.tif"], np.ones((2, 3), np.float32))
    probe.save_cache(path, {"format": probe.FEATURE_FORMAT, "weights": "x"}, table)
    samples = [Sample(Path("/a.tif"), 0), Sample(Path("/b.tif"), 1)]
    assert probe.load_cache(path, {"format": probe.FEATURE_FORMAT, "weights": "x"}, samples) is not None
    with caplog.at_level(logging.WARNING):
        assert probe.load_cache(path, {"format": probe.FEATURE_FORMAT, "weights": "y"}, samples) is None
        assert probe.load_cache(path, {"format": probe.FEATURE_FORMAT, "weights": "x"},
                                samples + [Sample(Path("/c.tif"), 0)]) is None
    assert not list(tmp_path.glob(".*tmp"))                          # no temporary file left behind


def test_cache_key_names_what_the_features_depend_on(demo_root, tmp_path):
    base_args, job = _probe_job(demo_root, tmp_path)
    base = probe.feature_identity(base_args, job)
    for extra, field in [(["--seed", "3"], "weights"), (["--input_size", "24"], "input_size"),
                         (["--dtype", "RGB"], "bands"), (["--netnum", "000000"], "netnum")]:
        args, job2 = _probe_job(demo_root, tmp_path, *extra)
        ident = probe.feature_identity(args, job2)
        assert ident[field] != base[field], extra
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert base["train_files"] == probe.samples_digest(list(reversed(job.index.train)))   # order-free
