"""Evaluation figures rendered straight to PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, never
through ``pyplot``: pyplot keeps a global registry of open figures (a leak in long Kedro sessions)
and picks a GUI backend from the environment. Going through the object API needs no display, no
``matplotlib.use`` call that would change the backend for the whole process, and leaves nothing
open behind; each function still drops its figure explicitly once the bytes exist.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from genguard.evaluation.metrics import MEAN_ROW, check_labels_scores

_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def _to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=_DPI)
    finally:
        figure.clear()  # release artists now rather than at garbage collection
    return buffer.getvalue()


def _roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    from sklearn.metrics import roc_auc_score, roc_curve

    if np.unique(labels).size < 2:
        return None  # ROC needs both classes
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr, float(roc_auc_score(labels, scores))


def roc_curve_png(frame: pd.DataFrame) -> bytes:
    """ROC curve per generator plus the pooled curve; the AUC of each is in the legend.

    ``frame`` has columns ``generator``, ``label`` (1 = fake) and ``score`` (P(fake)). Generators
    with a single class have no ROC curve and are listed in the legend as ``n/a``.
    """
    generators = sorted(frame["generator"].astype(str).unique())
    keys = frame["generator"].astype(str)
    # With the ~50 subsets of the open-world benchmark the legend goes outside, in small type.
    many = len(generators) > 10
    figure = _new_figure(12.0 if many else 7.5, 6.0)
    axes = figure.add_subplot()
    for generator in generators:
        part = frame[keys == generator]
        labels, scores = check_labels_scores(part["label"], part["score"])
        points = _roc_points(labels, scores)
        if points is None:
            axes.plot([], [], linestyle="none", label=f"{generator} (AUC n/a)")
            continue
        fpr, tpr, auc = points
        axes.plot(fpr, tpr, linewidth=1.0, alpha=0.8, label=f"{generator} (AUC {auc:.3f})")
    labels, scores = check_labels_scores(frame["label"], frame["score"])
    overall = _roc_points(labels, scores)
    if overall is not None:
        fpr, tpr, auc = overall
        axes.plot(fpr, tpr, color="black", linewidth=2.2, label=f"overall (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (reals called fake)",
             ylabel="true positive rate (fakes caught)", title="ROC per generator")
    if many:
        columns = 2 if len(generators) > 30 else 1
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6, ncols=columns)
    else:
        axes.legend(loc="lower right", fontsize=8)
    return _to_png(figure)


def score_histogram_png(frame: pd.DataFrame, bins: int = 50) -> bytes:
    """Distributions of P(fake) for reals and fakes (all generators pooled), as densities."""
    labels, scores = check_labels_scores(frame["label"], frame["score"])
    figure = _new_figure(7.0, 4.5)
    axes = figure.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for value, name, color in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        chosen = scores[labels == value]
        if chosen.size:
            label = f"{name} (n={chosen.size})"
            axes.hist(chosen, bins=edges, density=True, alpha=0.55, color=color, label=label)
    axes.axvline(0.5, color="black", linestyle="--", linewidth=0.8, label="threshold 0.5")
    axes.set(xlim=(0, 1), xlabel="score = P(fake)", ylabel="density", title="Score distribution")
    axes.legend(fontsize=8)
    return _to_png(figure)


def confusion_matrix_png(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
) -> bytes:
    """2x2 confusion matrix at ``threshold`` (fake iff score > threshold), counts and row rates."""
    y, s = check_labels_scores(labels, scores)
    pred = (s > threshold).astype(np.int64)
    counts = np.array([[np.sum((y == t) & (pred == p)) for p in (0, 1)] for t in (0, 1)], dtype=np.int64)
    row_totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)
    figure = _new_figure(4.8, 4.2)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for t in (0, 1):
        for p in (0, 1):
            colour = "white" if rates[t, p] > 0.6 else "black"
            axes.text(p, t, f"{counts[t, p]}\n{rates[t, p]:.1%}", ha="center", va="center", color=colour)
    axes.set_xticks([0, 1], labels=["real", "fake"])
    axes.set_yticks([0, 1], labels=["real", "fake"])
    axes.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (threshold {threshold:g})")
    figure.colorbar(image, ax=axes, shrink=0.85, label="fraction of true class")
    return _to_png(figure)


def per_generator_bar_png(table: pd.DataFrame, metrics: Sequence[str] = ("acc", "ap")) -> bytes:
    """Grouped bars of ``metrics`` per generator, from :func:`per_generator_table`.

    The ``mean`` row (if present) is drawn last, hatched, so the suite average stands out. NaN
    values are drawn as missing bars.
    """
    names = table["generator"].astype(str).tolist()
    positions = np.arange(len(names))
    width = 0.8 / max(1, len(metrics))
    figure = _new_figure(max(6.0, 0.35 * len(names) * len(metrics) + 2.0), 4.8)
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
    axes.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)  # chance level for balanced subsets
    axes.set_xticks(positions, labels=names, rotation=60, ha="right", fontsize=8)
    axes.set(ylim=(0, 1.02), ylabel="value", title="Per-generator metrics")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never hides a bar
    return _to_png(figure)
