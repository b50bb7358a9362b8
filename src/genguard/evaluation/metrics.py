"""Binary real/fake detection metrics, overall and per generator.

Conventions (shared by every detector in genguard, see specs/aigi_clip_methods.md §1.2):

* ``label`` is 0 for real and 1 for fake; fake is the positive class.
* ``score`` is P(fake) in [0, 1]. An image is called fake when ``score > threshold`` (strictly
  greater, as in the published UnivFD/DGS-Net evaluation code, so a score of exactly 0.5 is "real").
* Suite-level numbers are the *unweighted* mean over generators (subsets), which is how the papers
  report mAcc/mAP; the pooled ("overall") numbers are reported alongside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

METRIC_NAMES: tuple[str, ...] = ("acc", "r_acc", "f_acc", "ap", "auc", "oracle_acc")
COUNT_NAMES: tuple[str, ...] = ("n", "n_real", "n_fake")
MEAN_ROW = "mean"
# Sigmoid outputs are exactly within [0, 1]; the slack only forgives float round-off of callers that
# renormalise. Anything further out is almost certainly a logit passed by mistake.
_SCORE_SLACK = 1e-6


def check_labels_scores(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten labels (0/1 -> int64) and scores (P(fake) -> float64)."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (got NaN or inf)")
    if s.size and (s.min() < -_SCORE_SLACK or s.max() > 1 + _SCORE_SLACK):
        raise ValueError(
            f"scores must be P(fake) in [0, 1], got range [{s.min():.4g}, {s.max():.4g}]; "
            "apply a sigmoid to logits first"
        )
    return y.astype(np.int64), s


def _oracle_accuracy(y: np.ndarray, s: np.ndarray) -> float:
    """Best accuracy over every threshold t with the rule ``fake iff score > t``.

    Only thresholds at the observed scores (and one below all of them, "everything fake") change
    the prediction, so evaluating those is exhaustive. Sorting + searchsorted keeps it O(n log n),
    which matters for the 10k-image subsets.
    """
    real = np.sort(s[y == 0])
    fake = np.sort(s[y == 1])
    candidates = np.concatenate(([-np.inf], np.unique(s)))
    reals_called_real = np.searchsorted(real, candidates, side="right")
    fakes_called_fake = fake.size - np.searchsorted(fake, candidates, side="right")
    return float((reals_called_real + fakes_called_fake).max() / s.size)


def binary_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Detection metrics for one set of images, fake = positive class.

    Returns a dict with

    * ``acc`` – accuracy at ``threshold`` over reals and fakes,
    * ``r_acc`` – accuracy on reals (true-negative rate), ``f_acc`` – accuracy on fakes (TPR),
    * ``ap`` – average precision (sklearn, fake positive), ``auc`` – ROC-AUC,
    * ``oracle_acc`` – the best accuracy any threshold could reach on these images,
    * ``n``, ``n_real``, ``n_fake`` – counts (ints).

    Undefined values are NaN, never an exception: ``ap`` and ``auc`` need both classes, so with
    only reals or only fakes they are NaN (sklearn would warn or raise); ``r_acc`` is NaN without
    reals and ``f_acc`` NaN without fakes; with no images at all every rate is NaN.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score  # sklearn import is ~1 s

    y, s = check_labels_scores(labels, scores)
    n_real = int((y == 0).sum())
    n_fake = int((y == 1).sum())
    nan = float("nan")
    result: dict[str, float] = {
        "acc": nan,
        "r_acc": nan,
        "f_acc": nan,
        "ap": nan,
        "auc": nan,
        "oracle_acc": nan,
        "n": int(y.size),
        "n_real": n_real,
        "n_fake": n_fake,
    }
    if y.size == 0:
        return result
    pred = (s > threshold).astype(np.int64)
    result["acc"] = float((pred == y).mean())
    if n_real:
        result["r_acc"] = float((pred[y == 0] == 0).mean())
    if n_fake:
        result["f_acc"] = float((pred[y == 1] == 1).mean())
    if n_real and n_fake:
        result["ap"] = float(average_precision_score(y, s))
        result["auc"] = float(roc_auc_score(y, s))
    result["oracle_acc"] = _oracle_accuracy(y, s)
    return result


def _nanmean(values: pd.Series) -> float:
    # Mean over the generators where the metric is defined: one single-class subset must not turn
    # the whole suite's mAP into NaN. All-NaN stays NaN (without numpy's RuntimeWarning).
    finite = values.astype(float).dropna()
    return float(finite.mean()) if len(finite) else float("nan")


def per_generator_table(frame: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """One row per generator (sorted by name) plus a final ``mean`` row.

    ``frame`` needs the columns ``generator``, ``label`` (0 real / 1 fake) and ``score`` (P(fake)).
    Output columns: ``generator``, the rates in :data:`METRIC_NAMES`, then the counts.

    The ``mean`` row holds the unweighted mean over generators of each rate (the published
    protocol), ignoring generators where that rate is NaN; its counts are the *totals* over
    generators, since a mean image count is not useful to anyone.
    """
    missing = {"generator", "label", "score"} - set(frame.columns)
    if missing:
        raise ValueError(f"frame lacks column(s) {sorted(missing)}")
    generators = sorted(frame["generator"].astype(str).unique())
    if MEAN_ROW in generators:
        raise ValueError(f"a generator may not be called {MEAN_ROW!r}: that name is the summary row")
    keys = frame["generator"].astype(str)
    rows: list[dict[str, Any]] = []
    for generator in generators:
        part = frame[keys == generator]
        rows.append({"generator": generator, **binary_metrics(part["label"], part["score"], threshold)})
    columns = ["generator", *METRIC_NAMES, *COUNT_NAMES]
    table = pd.DataFrame(rows, columns=columns)
    mean_row: dict[str, Any] = {"generator": MEAN_ROW}
    for name in METRIC_NAMES:
        mean_row[name] = _nanmean(table[name])
    for name in COUNT_NAMES:
        mean_row[name] = int(table[name].sum())
    table = pd.concat([table, pd.DataFrame([mean_row], columns=columns)], ignore_index=True)
    for name in METRIC_NAMES:
        table[name] = table[name].astype("float64")
    for name in COUNT_NAMES:
        table[name] = table[name].astype("int64")
    return table


def _plain(value: Any) -> Any:
    # numpy scalars -> Python scalars, so the summary survives json.dumps without a default hook.
    if isinstance(value, np.generic):
        return value.item()
    return value


def table_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The per-generator table as a list of plain-Python dicts (JSON-friendly)."""
    return [{key: _plain(value) for key, value in row.items()} for row in table.to_dict(orient="records")]


def summarise(frame: pd.DataFrame, threshold: float = 0.5) -> dict[str, Any]:
    """Everything one evaluation reports, as a flat JSON-friendly dict.

    Keys: the pooled metrics over all images (:func:`binary_metrics`), ``mean_<metric>`` for each
    rate in :data:`METRIC_NAMES` (unweighted over generators, so ``mean_acc``/``mean_ap`` are the
    papers' mAcc/mAP), ``n_generators``, ``threshold`` and ``per_generator`` (the table from
    :func:`per_generator_table` as records, ``mean`` row last).

    Rates are Python floats and may be NaN where undefined; ``json.dumps`` accepts that by default,
    strict-JSON writers should map NaN to null (``log_evaluation`` does).
    """
    table = per_generator_table(frame, threshold)
    summary: dict[str, Any] = dict(binary_metrics(frame["label"], frame["score"], threshold))
    mean_row = table.iloc[-1]
    for name in METRIC_NAMES:
        summary[f"mean_{name}"] = float(mean_row[name])
    summary["n_generators"] = int(len(table) - 1)
    summary["threshold"] = float(threshold)
    summary["per_generator"] = table_records(table)
    return summary


def nan_to_none(obj: Any) -> Any:
    """Recursively replace NaN/inf floats by None, for strict JSON (browsers reject ``NaN``)."""
    if isinstance(obj, dict):
        return {key: nan_to_none(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(value) for value in obj]
    obj = _plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
