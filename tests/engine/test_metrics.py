"""Metrics against a hand-computed example and against scikit-learn."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
)

from engine.metrics import classification_metrics, fmt_mean_std, format_confusion, save_confusion_png, summarize

# true 0: predicted 0,0,1,1 | true 1: 1,1,2 | true 2: 2,2,0
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 1, 2, 2, 2, 0]


def test_hand_computed_three_class_example():
    m = classification_metrics(Y_TRUE, Y_PRED, 3, ["a", "b", "c"])
    assert m["confusion"] == [[2, 2, 0], [0, 2, 1], [1, 0, 2]]
    assert m["OA"] == pytest.approx(0.6)  # 6 / 10
    assert m["per_class_acc"] == pytest.approx([0.5, 2 / 3, 2 / 3])
    assert m["AA"] == pytest.approx(0.6111111111)  # (0.5 + 2/3 + 2/3) / 3
    # rows (4, 3, 3), columns (3, 4, 3): p_e = (12 + 12 + 9) / 100 = 0.33
    assert m["kappa"] == pytest.approx(0.4029850746)  # (0.6 - 0.33) / 0.67
    # F1 = 2TP / (row + column): 4/7, 4/7, 4/6
    assert m["per_class_f1"] == pytest.approx([4 / 7, 4 / 7, 2 / 3])
    assert m["macro_f1"] == pytest.approx(0.6031746032)
    assert m["class_names"] == ["a", "b", "c"] and m["n"] == 10


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    k = 7
    y_true = rng.integers(0, k - 1, size=200)  # class 6 never in y_true
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, k, size=200))
    m = classification_metrics(y_true, y_pred, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["OA"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert m["AA"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        assert m["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
        assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert np.array_equal(np.array(m["confusion"]), confusion_matrix(y_true, y_pred, labels=range(k)))
    assert math.isnan(m["per_class_acc"][6])


def test_class_absent_everywhere_is_ignored_by_aa_and_f1():
    m = classification_metrics([0, 1, 1], [0, 1, 0], 4)
    assert m["AA"] == pytest.approx(0.75)  # (1 + 0.5) / 2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # 2*1/(2+1), 2*1/(2+1)
    assert all(math.isnan(v) for v in m["per_class_acc"][2:])


def test_kappa_is_nan_when_undefined():
    m = classification_metrics([1, 1, 1], [1, 1, 1], 3)
    assert m["OA"] == 1.0 and math.isnan(m["kappa"])


def test_bad_inputs():
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], 2)
    with pytest.raises(ValueError):
        classification_metrics([0, 2], [0, 1], 2)
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0, 1], 2, ["only one"])


def test_format_confusion_is_aligned():
    text = format_confusion([[5, 1, 0], [0, 12, 0], [0, 0, 0]], ["forest", "river", "sea"])
    assert text.splitlines() == [
        "true \\ pred  0  1  2 recall%",
        "0 forest     5  1  0   83.33",
        "1 river      0 12  0  100.00",
        "2 sea        0  0  0       -",
    ]


def test_save_confusion_png(tmp_path):
    import matplotlib.image

    path = save_confusion_png(np.array([[5, 1], [0, 12]]), ["forest", "river"], tmp_path / "fig" / "conf.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape == (600, 750, 4)  # figure 5 x 4 inches at 150 dpi


def test_summarize_and_format():
    mean, std = summarize([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(1.2909944487)  # sqrt(5/3)
    assert summarize([0.7]) == (0.7, 0.0)
    assert fmt_mean_std([0.78, 0.80], scale=100) == "79.00 +- 1.41"
    assert fmt_mean_std([0.5], digits=1) == "0.5 +- 0.0"
    with pytest.raises(ValueError):
        summarize([])
