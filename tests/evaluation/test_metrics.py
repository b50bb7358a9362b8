"""Metrics agree with sklearn, follow the >-threshold rule and survive single-class subsets."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from genguard.evaluation.metrics import binary_metrics, per_generator_table, summarise


@pytest.fixture
def toy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=300)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)
    return labels, scores


def _frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for generator, shift in (("sdxl", 0.1), ("progan", 0.4), ("dalle", 0.25)):
        labels = rng.integers(0, 2, size=120)
        scores = np.clip(rng.normal(0.4 + shift * labels, 0.15), 0.0, 1.0)
        parts.append(pd.DataFrame({"generator": generator, "label": labels, "score": scores}))
    return pd.concat(parts, ignore_index=True)


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


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_not_a_crash(label):
    metrics = binary_metrics([label] * 4, [0.1, 0.6, 0.7, 0.2])
    assert math.isnan(metrics["ap"]) and math.isnan(metrics["auc"])
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


def test_per_generator_table_rows_and_unweighted_mean():
    frame = _frame()
    table = per_generator_table(frame)
    assert table["generator"].tolist() == ["dalle", "progan", "sdxl", "mean"]
    for generator in ("dalle", "progan", "sdxl"):
        part = frame[frame["generator"] == generator]
        row = table.set_index("generator").loc[generator]
        assert row["ap"] == pytest.approx(average_precision_score(part["label"], part["score"]))
    mean = table.iloc[-1]
    assert mean["acc"] == pytest.approx(table["acc"].iloc[:-1].mean())
    assert mean["ap"] == pytest.approx(table["ap"].iloc[:-1].mean())
    assert mean["n"] == len(frame)


def test_mean_skips_single_class_generators():
    frame = pd.concat(
        [_frame(), pd.DataFrame({"generator": "fakes_only", "label": [1, 1, 1], "score": [0.9, 0.8, 0.1]})],
        ignore_index=True,
    )
    table = per_generator_table(frame).set_index("generator")
    assert math.isnan(table.loc["fakes_only", "ap"])
    assert table.loc["mean", "ap"] == pytest.approx(table["ap"].drop(["mean", "fakes_only"]).mean())
    assert table.loc["mean", "acc"] == pytest.approx(table["acc"].drop("mean").mean())


def test_summarise_is_json_serialisable_and_consistent():
    frame = _frame(3)
    summary = summarise(frame, threshold=0.5)
    text = json.dumps(summary)  # no numpy types left
    assert json.loads(text)["per_generator"][-1]["generator"] == "mean"
    overall = binary_metrics(frame["label"], frame["score"])
    assert summary["acc"] == pytest.approx(overall["acc"])
    table = per_generator_table(frame)
    assert summary["mean_acc"] == pytest.approx(table.iloc[-1]["acc"])
    assert summary["mean_ap"] == pytest.approx(table.iloc[-1]["ap"])
    assert summary["n_generators"] == 3
    for key in ("acc", "ap", "mean_acc", "mean_ap", "threshold"):
        assert type(summary[key]) is float
