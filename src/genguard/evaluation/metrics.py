"""Classification metrics for one set of items: binary (real/fake) and multi-class.

Conventions shared by every family in genguard:

* Binary: ``label`` is 0 for real (benign, clean) and 1 for fake (forged, backdoored); **fake is the
  positive class**. ``score`` is P(fake) in [0, 1]. An item is called fake when ``score > threshold``
  (strictly greater, as in the published UnivFD/DGS-Net evaluation code, so 0.5 is "real" at 0.5).
* Multi-class: ``label`` is the class index in ``0..C-1`` and ``probs`` is an N x C matrix of class
  probabilities (rows sum to 1, i.e. after a softmax); the prediction is the arg-max.
* Undefined values are NaN, never an exception (a subset with one class has no AUC), so a caller can
  average over groups with the NaN-ignoring means of :mod:`genguard.evaluation.grouping`.

Per-group tables and unweighted means over groups live in :mod:`genguard.evaluation.grouping`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("acc", "r_acc", "f_acc", "ap", "auc", "eer", "oracle_acc")
COUNT_NAMES: tuple[str, ...] = ("n", "n_real", "n_fake")
MULTICLASS_METRIC_NAMES: tuple[str, ...] = ("acc", "balanced_acc", "macro_f1", "nll")
MULTICLASS_COUNT_NAMES: tuple[str, ...] = ("n",)
# The key value of the summary row of every per-group table (and of the mean columns of boards).
MEAN_ROW = "mean"

# Sigmoid/softmax outputs are exactly within [0, 1]; the slack only forgives float round-off of
# callers that renormalise. Anything further out is almost certainly a logit passed by mistake.
_SCORE_SLACK = 1e-6
# float32 softmax rows over hundreds of classes sum to 1 within ~1e-5; logits miss by far more.
_ROW_SUM_TOLERANCE = 1e-3
# A predicted probability of exactly 0 for the true class would make the NLL infinite; clipping at
# this floor (sklearn's historical log_loss eps) keeps it finite and still enormous.
_NLL_FLOOR = 1e-15


def sigmoid(logits: np.ndarray, dtype: type | None = np.float64) -> np.ndarray:
    """P(positive) = 1 / (1 + exp(-logit)): the one place a binary model's logits become scores.

    ``dtype`` is the precision of the arithmetic (``None``: the logits' own, e.g. float32).
    """
    values = np.asarray(logits)
    if dtype is not None:
        values = values.astype(dtype)
    return 1.0 / (1.0 + np.exp(-values))


def check_labels_scores(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten binary labels (0/1 -> int64) and scores (P(fake) -> float64)."""
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


def check_labels_probs(
    labels: Sequence[int] | np.ndarray, probs: Sequence[Sequence[float]] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate multi-class labels (class indices -> int64) and an N x C probability matrix (-> float64)."""
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be an N x C matrix with C >= 2 classes, got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"labels and probs differ in length: {y.shape[0]} vs {p.shape[0]}")
    n_classes = p.shape[1]
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be integer class indices in 0..{n_classes - 1}")
    if not np.isfinite(p).all():
        raise ValueError("probs must be finite (got NaN or inf)")
    if p.size:
        row_sums = p.sum(axis=1)
        if (p.min() < -_SCORE_SLACK or p.max() > 1 + _SCORE_SLACK
                or np.abs(row_sums - 1.0).max() > _ROW_SUM_TOLERANCE):
            raise ValueError(
                f"probs must be class probabilities (each in [0, 1], rows summing to 1), got values in "
                f"[{p.min():.4g}, {p.max():.4g}] and row sums in "
                f"[{row_sums.min():.4g}, {row_sums.max():.4g}]; "
                "apply a softmax to logits first"
            )
    return y.astype(np.int64), p


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


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The error rate where the ROC curve crosses FPR = FNR (FNR = 1 - TPR).

    Along a ROC curve FPR grows and FNR shrinks, so ``FNR - FPR`` goes from +1 to -1 exactly once;
    between the two curve points around the sign change the curve is a straight segment (that is
    what a tie of scores draws), and the crossing is interpolated linearly on it.
    """
    fnr = 1.0 - np.asarray(tpr, dtype=np.float64)
    fpr = np.asarray(fpr, dtype=np.float64)
    gap = fnr - fpr
    after = int(np.argmax(gap <= 0.0))  # first point at or past the crossing
    if gap[after] == 0.0 or after == 0:
        return float(fpr[after])
    before = after - 1
    fraction = gap[before] / (gap[before] - gap[after])
    return float(fpr[before] + fraction * (fpr[after] - fpr[before]))


def binary_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Detection metrics for one set of items, fake = positive class, score = P(fake).

    Returns a dict with

    * ``acc`` – accuracy at ``threshold`` (fake iff ``score > threshold``) over reals and fakes,
    * ``r_acc`` – accuracy on reals (true-negative rate), ``f_acc`` – accuracy on fakes (TPR),
    * ``ap`` – average precision (sklearn, fake positive), ``auc`` – ROC-AUC,
    * ``eer`` – equal error rate (FPR = FNR on the ROC curve, interpolated; lower is better),
    * ``oracle_acc`` – the best accuracy any threshold could reach on these items,
    * ``n``, ``n_real``, ``n_fake`` – counts (ints).

    ``ap``, ``auc`` and ``eer`` need both classes and are NaN with only one (sklearn would warn or
    raise); ``r_acc`` is NaN without reals and ``f_acc`` NaN without fakes; with no items at all
    every rate is NaN.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve  # import is ~1 s

    y, s = check_labels_scores(labels, scores)
    n_real = int((y == 0).sum())
    n_fake = int((y == 1).sum())
    result: dict[str, float] = {name: float("nan") for name in METRIC_NAMES}
    result.update({"n": int(y.size), "n_real": n_real, "n_fake": n_fake})
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
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        result["eer"] = equal_error_rate(fpr, tpr)
    result["oracle_acc"] = _oracle_accuracy(y, s)
    return result


def multiclass_metrics(
    labels: Sequence[int] | np.ndarray, probs: Sequence[Sequence[float]] | np.ndarray
) -> dict[str, float]:
    """Metrics of an N x C probability matrix against class indices; prediction = arg-max.

    * ``acc`` – fraction of rows whose arg-max is the label,
    * ``balanced_acc`` – unweighted mean over the classes *present in the labels* of each class's
      recall (a class nobody belongs to has no recall to average),
    * ``macro_f1`` – unweighted mean of per-class F1 over the classes present in the labels or the
      predictions (a class only ever predicted counts with F1 = 0; as sklearn's ``average="macro"``),
    * ``nll`` – mean negative log-probability of the true class (natural log, probabilities clipped
      at 1e-15 so a confident mistake stays finite),
    * ``n`` – number of rows (int).

    With no rows every rate is NaN.
    """
    y, p = check_labels_probs(labels, probs)
    result: dict[str, float] = {name: float("nan") for name in MULTICLASS_METRIC_NAMES}
    result["n"] = int(y.size)
    if y.size == 0:
        return result
    n_classes = p.shape[1]
    pred = p.argmax(axis=1)
    correct = pred == y
    true_counts = np.bincount(y, minlength=n_classes)
    predicted_counts = np.bincount(pred, minlength=n_classes)
    hits = np.bincount(y[correct], minlength=n_classes)
    present = true_counts > 0
    involved = present | (predicted_counts > 0)
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + true); non-zero denominator for involved classes.
    f1 = 2.0 * hits[involved] / (predicted_counts[involved] + true_counts[involved])
    result["acc"] = float(correct.mean())
    result["balanced_acc"] = float((hits[present] / true_counts[present]).mean())
    result["macro_f1"] = float(f1.mean())
    true_class_probs = np.clip(p[np.arange(y.size), y], _NLL_FLOOR, 1.0)
    result["nll"] = float(-np.log(true_class_probs).mean())
    return result


def metric_names(task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(rate names, count names)`` reported for ``task`` ("binary" or "multiclass")."""
    if task == "binary":
        return METRIC_NAMES, COUNT_NAMES
    if task == "multiclass":
        return MULTICLASS_METRIC_NAMES, MULTICLASS_COUNT_NAMES
    raise ValueError(f"task must be 'binary' or 'multiclass', got {task!r}")
