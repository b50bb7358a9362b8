"""Evaluation figures: each built as a ``Figure`` by a ``*_figure`` function, encoded by ``*_png``.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, never
through ``pyplot``: pyplot keeps a global registry of open figures (a leak in long Kedro sessions)
and picks a GUI backend from the environment. Going through the object API needs no display, no
``matplotlib.use`` call that would change the backend for the whole process, and leaves nothing
open behind. The split into ``*_figure`` (inspectable: tests count bars and lines) and ``*_png``
(bytes, figure cleared right after encoding) keeps both testable and cheap.

Conventions as in :mod:`genguard.evaluation.metrics`: label 1 = fake (positive), score = P(fake),
fake iff ``score > threshold``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from genguard.evaluation.metrics import MEAN_ROW, check_labels_probs, check_labels_scores

_DPI = 100
# Above this many classes the per-cell numbers of a confusion matrix are unreadable (and slow).
_MAX_ANNOTATED_CLASSES = 15


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with an Agg canvas attached."""
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def figure_png(figure: Figure) -> bytes:
    """Encode ``figure`` as PNG and clear it (releases its artists now, not at garbage collection)."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=_DPI)
    finally:
        figure.clear()
    return buffer.getvalue()


def roc_points(labels: Sequence[int] | np.ndarray,
               scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``(fpr, tpr, auc)`` of the ROC curve (fake positive), or None with a single class."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = check_labels_scores(labels, scores)
    if np.unique(y).size < 2:
        return None
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr, float(roc_auc_score(y, s))


# ------------------------------------------------------------------------------------ ROC


def roc_curve_figure(frame: pd.DataFrame, group_column: str | None = None) -> Figure:
    """ROC curve per group (when ``group_column`` is given) plus the pooled curve, AUC in the legend.

    ``frame`` has ``label`` and ``score`` columns. Single-class groups have no curve and are listed
    in the legend as ``n/a``.
    """
    groups = sorted(frame[group_column].astype(str).unique()) if group_column else []
    # With the ~50 subsets of an open-world benchmark the legend goes outside, in small type.
    many = len(groups) > 10
    figure = new_figure(12.0 if many else 7.5, 6.0)
    axes = figure.add_subplot()
    keys = frame[group_column].astype(str) if group_column else None
    for group in groups:
        part = frame[keys == group]
        points = roc_points(part["label"], part["score"])
        if points is None:
            axes.plot([], [], linestyle="none", label=f"{group} (AUC n/a)")
            continue
        fpr, tpr, auc = points
        axes.plot(fpr, tpr, linewidth=1.0, alpha=0.8, label=f"{group} (AUC {auc:.3f})")
    overall = roc_points(frame["label"], frame["score"])
    if overall is not None:
        fpr, tpr, auc = overall
        axes.plot(fpr, tpr, color="black", linewidth=2.2, label=f"overall (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    title = f"ROC per {group_column}" if group_column else "ROC"
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (reals called fake)",
             ylabel="true positive rate (fakes caught)", title=title)
    if many:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6,
                    ncols=2 if len(groups) > 30 else 1)
    else:
        axes.legend(loc="lower right", fontsize=8)
    return figure


def roc_curve_png(frame: pd.DataFrame, group_column: str | None = None) -> bytes:
    return figure_png(roc_curve_figure(frame, group_column))


# ------------------------------------------------------------------------------------ scores


def score_histogram_figure(frame: pd.DataFrame, threshold: float = 0.5, bins: int = 50) -> Figure:
    """Distributions of P(fake) for reals and fakes (all groups pooled), as densities."""
    labels, scores = check_labels_scores(frame["label"], frame["score"])
    figure = new_figure(7.0, 4.5)
    axes = figure.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for value, name, color in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        chosen = scores[labels == value]
        if chosen.size:
            axes.hist(chosen, bins=edges, density=True, alpha=0.55, color=color,
                      label=f"{name} (n={chosen.size})")
    axes.axvline(threshold, color="black", linestyle="--", linewidth=0.8, label=f"threshold {threshold:g}")
    axes.set(xlim=(0, 1), xlabel="score = P(fake)", ylabel="density", title="Score distribution")
    axes.legend(fontsize=8)
    return figure


def score_histogram_png(frame: pd.DataFrame, threshold: float = 0.5, bins: int = 50) -> bytes:
    return figure_png(score_histogram_figure(frame, threshold, bins))


# ------------------------------------------------------------------------------------ confusion


def _confusion_figure(counts: np.ndarray, names: Sequence[str], title: str) -> Figure:
    # Colours are row rates (fraction of the true class), so classes of very different sizes compare.
    row_totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)
    size = len(names)
    side = max(4.2, 2.5 + 0.45 * size)
    figure = new_figure(side + 0.6, side)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    if size <= _MAX_ANNOTATED_CLASSES:
        for t in range(size):
            for p in range(size):
                colour = "white" if rates[t, p] > 0.6 else "black"
                axes.text(p, t, f"{counts[t, p]}\n{rates[t, p]:.1%}", ha="center", va="center", color=colour,
                          fontsize=9 if size <= 4 else 7)
    ticks = np.arange(size)
    axes.set_xticks(ticks, labels=names, rotation=45 if size > 4 else 0, ha="right" if size > 4 else "center")
    axes.set_yticks(ticks, labels=names)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axes, shrink=0.85, label="fraction of true class")
    return figure


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """``counts[true, predicted]`` as an int64 ``n_classes x n_classes`` matrix."""
    flat = np.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def confusion_matrix_figure(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                            threshold: float = 0.5) -> Figure:
    """2x2 binary confusion matrix at ``threshold`` (fake iff score > threshold), counts and row rates."""
    y, s = check_labels_scores(labels, scores)
    counts = confusion_counts(y, (s > threshold).astype(np.int64), 2)
    return _confusion_figure(counts, ["real", "fake"], f"Confusion matrix (threshold {threshold:g})")


def confusion_matrix_png(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                         threshold: float = 0.5) -> bytes:
    return figure_png(confusion_matrix_figure(labels, scores, threshold))


def multiclass_confusion_matrix_figure(labels: Sequence[int] | np.ndarray, probs: np.ndarray,
                                       class_names: Sequence[str] | None = None) -> Figure:
    """C x C confusion matrix of arg-max predictions; cells annotated up to 15 classes."""
    y, p = check_labels_probs(labels, probs)
    n_classes = p.shape[1]
    names = [str(name) for name in (class_names if class_names is not None else range(n_classes))]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} probability columns")
    counts = confusion_counts(y, p.argmax(axis=1), n_classes)
    return _confusion_figure(counts, names, "Confusion matrix (arg-max)")


def multiclass_confusion_matrix_png(labels: Sequence[int] | np.ndarray, probs: np.ndarray,
                                    class_names: Sequence[str] | None = None) -> bytes:
    return figure_png(multiclass_confusion_matrix_figure(labels, probs, class_names))


# ------------------------------------------------------------------------------------ per group


def group_bar_figure(table: pd.DataFrame, group_column: str,
                     metrics: Sequence[str] = ("acc", "ap")) -> Figure:
    """Grouped bars of ``metrics`` per group, from :func:`genguard.evaluation.grouping.group_table`.

    One bar per group and metric (one ``BarContainer`` per metric on the axes). The ``mean`` row (if
    present) is drawn last, hatched, so the unweighted average stands out; NaN values are hidden bars.
    """
    names = table[group_column].astype(str).tolist()
    positions = np.arange(len(names))
    width = 0.8 / max(1, len(metrics))
    figure = new_figure(max(6.0, 0.35 * len(names) * len(metrics) + 2.0), 4.8)
    axes = figure.add_subplot()
    for index, metric in enumerate(metrics):
        values = table[metric].astype(float).to_numpy()
        bars = axes.bar(positions + (index - (len(metrics) - 1) / 2) * width, np.nan_to_num(values, nan=0.0),
                        width=width, label=metric)
        for bar, value, name in zip(bars, values, names, strict=True):
            if np.isnan(value):
                bar.set_visible(False)
            elif name == MEAN_ROW:
                bar.set_hatch("//")
                bar.set_edgecolor("black")
    axes.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)  # chance level for balanced binary subsets
    axes.set_xticks(positions, labels=names, rotation=60, ha="right", fontsize=8)
    axes.set(ylim=(0, 1.02), ylabel="value", title=f"Metrics per {group_column}")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never hides a bar
    return figure


def group_bar_png(table: pd.DataFrame, group_column: str, metrics: Sequence[str] = ("acc", "ap")) -> bytes:
    return figure_png(group_bar_figure(table, group_column, metrics))
