"""Figures: content checked on the Figure before encoding where cheap; every PNG decodes."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from genguard.evaluation import plots
from genguard.evaluation.grouping import group_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    parts = []
    for generator in ("ldm_200", "glide_100_10", "guided"):
        labels = rng.integers(0, 2, size=80)
        parts.append(pd.DataFrame({"generator": generator, "label": labels,
                                   "score": np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)}))
    parts.append(pd.DataFrame({"generator": "fakes_only", "label": [1, 1], "score": [0.7, 0.4]}))
    return pd.concat(parts, ignore_index=True)


def _assert_png(payload: bytes) -> None:
    assert payload.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(payload)) as decoded:
        decoded.load()
        assert decoded.format == "PNG" and decoded.width > 100 and decoded.height > 100


def test_roc_points_by_hand():
    # Scores: real 0.1, 0.6; fake 0.4, 0.9. Thresholds from the top: 0.9 catches one fake, 0.6 lets
    # one real through, 0.4 catches the other fake, 0.1 everything.
    fpr, tpr, auc = plots.roc_points([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert list(zip(fpr, tpr, strict=True)) == [(0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1)]
    assert auc == pytest.approx(0.75)
    assert plots.roc_points([1, 1], [0.2, 0.3]) is None


def test_roc_figure_draws_one_curve_per_group_plus_overall(frame):
    figure = plots.roc_curve_figure(frame, "generator")
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert sum(label.startswith("overall (AUC") for label in labels) == 1
    assert "fakes_only (AUC n/a)" in labels
    assert len([label for label in labels if "(AUC " in label]) == 4 + 1
    _assert_png(plots.roc_curve_png(frame, "generator"))
    pooled = plots.roc_curve_figure(frame)
    assert [line.get_label() for line in pooled.axes[0].get_lines()][0].startswith("overall")


def test_roc_curve_png_many_groups():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"dataset": [f"g{i % 12}" for i in range(240)],
                          "label": rng.integers(0, 2, 240), "score": rng.random(240)})
    _assert_png(plots.roc_curve_png(frame, "dataset"))


def test_score_histogram_marks_the_threshold(frame):
    figure = plots.score_histogram_figure(frame, threshold=0.3)
    assert any(line.get_label() == "threshold 0.3" for line in figure.axes[0].get_lines())
    _assert_png(plots.score_histogram_png(frame))


def test_confusion_counts_by_hand():
    counts = plots.confusion_counts(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_confusion_matrix_png(frame):
    figure = plots.confusion_matrix_figure([0, 0, 1, 1, 1], [0.2, 0.7, 0.9, 0.6, 0.1])
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == ["1\n50.0%", "1\n50.0%", "1\n33.3%", "2\n66.7%"]  # [real->real, real->fake, fake->...]
    _assert_png(plots.confusion_matrix_png(frame["label"], frame["score"], threshold=0.5))
    _assert_png(plots.confusion_matrix_png([1, 1], [0.9, 0.2]))  # no reals: empty row, no division error


def test_multiclass_confusion_matrix():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    figure = plots.multiclass_confusion_matrix_figure(labels, probs, ["cat", "dog", "eel"])
    (image,) = figure.axes[0].get_images()
    np.testing.assert_allclose(image.get_array(), [[1, 0, 0], [0, 0, 1], [0, 0.5, 0.5]])
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["cat", "dog", "eel"]
    _assert_png(plots.multiclass_confusion_matrix_png(labels, probs))
    many = np.eye(20)[np.arange(40) % 20]
    crowded = plots.multiclass_confusion_matrix_figure(np.arange(40) % 20, many)
    assert not crowded.axes[0].texts  # too many classes to annotate
    with pytest.raises(ValueError, match="class names"):
        plots.multiclass_confusion_matrix_figure(labels, probs, ["cat"])


def test_group_bars_one_per_group_and_metric(frame):
    table = group_table(frame, "generator")  # 4 groups + mean; fakes_only has NaN AP
    figure = plots.group_bar_figure(table, "generator", metrics=("acc", "ap", "auc"))
    containers = [c for c in figure.axes[0].containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in containers] == ["acc", "ap", "auc"]
    assert all(len(c.patches) == len(table) == 5 for c in containers)
    ap_bars = dict(zip(table["generator"], containers[1].patches, strict=True))
    assert not ap_bars["fakes_only"].get_visible()
    assert ap_bars["mean"].get_hatch() == "//"
    assert ap_bars["guided"].get_height() == pytest.approx(table.set_index("generator").loc["guided", "ap"])
    _assert_png(plots.group_bar_png(table, "generator"))


def test_png_encoding_clears_the_figure_and_pyplot_stays_empty(frame):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    figure = plots.score_histogram_figure(frame)
    plots.figure_png(figure)
    assert not figure.axes
    plots.roc_curve_png(frame, "generator")
    assert len(plt.get_fignums()) == before
