"""Each plot renders to a decodable PNG, including awkward inputs (one-class generators, NaN)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genguard.evaluation import plots
from genguard.evaluation.metrics import per_generator_table

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


def test_roc_curve_png(frame):
    _assert_png(plots.roc_curve_png(frame))


def test_roc_curve_png_many_generators():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"generator": [f"g{i % 12}" for i in range(240)],
                          "label": rng.integers(0, 2, 240), "score": rng.random(240)})
    _assert_png(plots.roc_curve_png(frame))


def test_score_histogram_png(frame):
    _assert_png(plots.score_histogram_png(frame))


def test_confusion_matrix_png(frame):
    _assert_png(plots.confusion_matrix_png(frame["label"], frame["score"], threshold=0.5))
    _assert_png(plots.confusion_matrix_png([1, 1], [0.9, 0.2]))  # no reals: empty row, no division error


def test_per_generator_bar_png(frame):
    _assert_png(plots.per_generator_bar_png(per_generator_table(frame)))  # includes a NaN AP


def test_no_pyplot_figures_left_open(frame):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plots.roc_curve_png(frame)
    plots.score_histogram_png(frame)
    assert len(plt.get_fignums()) == before
