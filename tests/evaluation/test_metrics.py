"""Metrics agree with sklearn and with hand computation, follow the >-threshold rule, survive one class."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    roc_auc_score,
)

from genguard.evaluation.metrics import (
    METRIC_NAMES,
    MULTICLASS_METRIC_NAMES,
    binary_metrics,
    equal_error_rate,
    metric_names,
    multiclass_metrics,
)


@pytest.fixture
def toy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=300)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)
    return labels, scores


# --- binary ---------------------------------------------------------------------------------------


def test_binary_metrics_match_sklearn(toy):
    labels, scores = toy
    metrics = binary_metrics(labels, scores)
    predicted = (scores > 0.5).astype(int)
    assert metrics["acc"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["r_acc"] == pytest.approx(accuracy_score(labels[labels == 0], predicted[labels == 0]))
    assert metrics["f_acc"] == pytest.approx(accuracy_score(labels[labels == 1], predicted[labels == 1]))
    assert metrics["ap"] == pytest.approx(average_precision_score(labels, scores))
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores))
    expected_counts = (300, int((labels == 0).sum()), int(labels.sum()))
    assert (metrics["n"], metrics["n_real"], metrics["n_fake"]) == expected_counts
    assert set(metrics) == {*METRIC_NAMES, "n", "n_real", "n_fake"}


def test_oracle_accuracy_is_the_best_over_all_thresholds(toy):
    labels, scores = toy
    brute = max(np.mean((scores > t) == labels) for t in np.concatenate(([-1.0], scores)))
    metrics = binary_metrics(labels, scores)
    assert metrics["oracle_acc"] == pytest.approx(brute)
    assert metrics["oracle_acc"] >= metrics["acc"]


def test_threshold_is_strict_and_configurable():
    labels = np.array([0, 1, 1])
    scores = np.array([0.2, 0.5, 0.7])
    # 0.5 is *not* fake at threshold 0.5 (published code: score > threshold)
    assert binary_metrics(labels, scores)["f_acc"] == pytest.approx(0.5)
    assert binary_metrics(labels, scores, threshold=0.4)["f_acc"] == pytest.approx(1.0)
    assert binary_metrics(labels, scores, threshold=0.8)["acc"] == pytest.approx(1 / 3)
    # ranking metrics do not depend on the threshold
    assert binary_metrics(labels, scores, 0.1)["ap"] == binary_metrics(labels, scores, 0.9)["ap"]


def test_eer_on_a_hand_made_tie():
    # Reals score 0.1 and 0.5; fakes 0.5, 0.5, 0.9. ROC points (FPR, TPR): (0, 0), (0, 1/3) above 0.5,
    # then the tie at 0.5 jumps to (1/2, 1). On that straight segment FNR = 2/3 - (4/3) FPR meets
    # FPR at FPR = 2/7.
    metrics = binary_metrics([0, 0, 1, 1, 1], [0.5, 0.1, 0.5, 0.5, 0.9])
    assert metrics["eer"] == pytest.approx(2 / 7)


@pytest.mark.parametrize(("scores", "expected"), [
    ([0.1, 0.2, 0.8, 0.9], 0.0),   # perfectly separated
    ([0.8, 0.9, 0.1, 0.2], 1.0),   # perfectly inverted
    ([0.5, 0.5, 0.5, 0.5], 0.5),   # no information: the diagonal
    ([0.1, 0.6, 0.4, 0.9], 0.5),   # one real above one fake: FPR = FNR = 1/2 at a curve point
])
def test_eer_closed_forms(scores, expected):
    assert binary_metrics([0, 0, 1, 1], scores)["eer"] == pytest.approx(expected)


def test_equal_error_rate_interpolates_a_segment():
    # Segment from (FPR, TPR) = (0.2, 0.4) to (0.6, 1.0): FNR - FPR goes 0.4 -> -0.6, zero at 40 %.
    fpr, tpr = np.array([0.0, 0.2, 0.6, 1.0]), np.array([0.0, 0.4, 1.0, 1.0])
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.36)


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_not_a_crash(label):
    metrics = binary_metrics([label] * 4, [0.1, 0.6, 0.7, 0.2])
    assert math.isnan(metrics["ap"]) and math.isnan(metrics["auc"]) and math.isnan(metrics["eer"])
    assert metrics["acc"] == pytest.approx(0.5)
    assert math.isnan(metrics["f_acc" if label == 0 else "r_acc"])
    assert metrics["oracle_acc"] == pytest.approx(1.0)


def test_empty_input_is_all_nan():
    metrics = binary_metrics([], [])
    assert metrics["n"] == 0 and math.isnan(metrics["acc"]) and math.isnan(metrics["oracle_acc"])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="sigmoid"):
        binary_metrics([0, 1], [-2.0, 3.0])  # logits, not probabilities
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        binary_metrics([0, 1, 1], [0.1, 0.2])


# --- multi-class -------------------------------------------------------------------------------------


def _hand_made() -> tuple[np.ndarray, np.ndarray]:
    # Four classes; class 3 is predicted once but never the label. The predicted class gets 0.7,
    # every other class 0.1.
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 0, 3, 1, 0, 2])
    probs = np.full((7, 4), 0.1)
    probs[np.arange(7), predicted] = 0.7
    return labels, probs


def test_multiclass_metrics_by_hand():
    labels, probs = _hand_made()
    metrics = multiclass_metrics(labels, probs)
    assert metrics["acc"] == pytest.approx(5 / 7)
    # Recalls over the classes present in the labels: 3/4, 1/2, 1.
    assert metrics["balanced_acc"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    # F1 = 2TP / (predicted + true): 6/8, 2/3, 2/2, and 0 for class 3 (predicted, never true).
    assert metrics["macro_f1"] == pytest.approx((3 / 4 + 2 / 3 + 1 + 0) / 4)
    assert metrics["nll"] == pytest.approx(-(5 * math.log(0.7) + 2 * math.log(0.1)) / 7)
    assert metrics["n"] == 7 and type(metrics["n"]) is int
    assert set(metrics) == {*MULTICLASS_METRIC_NAMES, "n"}


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 5, size=200)
    metrics = multiclass_metrics(labels, probs)
    predicted = probs.argmax(axis=1)
    assert metrics["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics["nll"] == pytest.approx(log_loss(labels, probs, labels=range(5)))


def test_multiclass_zero_probability_gives_a_finite_nll():
    metrics = multiclass_metrics([0], [[0.0, 1.0]])
    assert math.isfinite(metrics["nll"]) and metrics["nll"] > 30


def test_multiclass_empty_is_nan():
    metrics = multiclass_metrics(np.zeros(0, dtype=int), np.zeros((0, 3)))
    assert metrics["n"] == 0 and math.isnan(metrics["acc"])


def test_multiclass_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="softmax"):
        multiclass_metrics([0, 1], [[2.0, -1.0], [0.5, 3.0]])  # logits
    with pytest.raises(ValueError, match="softmax"):
        multiclass_metrics([0, 1], [[0.2, 0.2], [0.5, 0.5]])  # rows do not sum to 1
    with pytest.raises(ValueError, match="N x C"):
        multiclass_metrics([0, 1], [0.3, 0.7])
    with pytest.raises(ValueError, match="0..1"):
        multiclass_metrics([0, 2], [[0.3, 0.7], [0.5, 0.5]])
    with pytest.raises(ValueError, match="finite"):
        multiclass_metrics([0], [[float("nan"), 1.0]])
    with pytest.raises(ValueError, match="length"):
        multiclass_metrics([0, 1, 1], [[0.3, 0.7], [0.5, 0.5]])


def test_metric_names_per_task():
    assert metric_names("binary")[0] == METRIC_NAMES
    assert metric_names("multiclass")[0] == MULTICLASS_METRIC_NAMES
    with pytest.raises(ValueError, match="task"):
        metric_names("regression")
