"""Per-group tables, unweighted means over groups and suites, and frame -> video aggregation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from genguard.evaluation.grouping import (
    aggregate_scores,
    group_table,
    infer_prob_columns,
    suite_means,
    suite_of,
    summarise,
)
from genguard.evaluation.metrics import binary_metrics


def _frame(seed: int = 0, groups: tuple[str, ...] = ("sdxl", "progan", "dalle")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for index, generator in enumerate(groups):
        shift = 0.1 + 0.15 * (index % 3)
        labels = rng.integers(0, 2, size=120)
        scores = np.clip(rng.normal(0.4 + shift * labels, 0.15), 0.0, 1.0)
        parts.append(pd.DataFrame({"generator": generator, "label": labels, "score": scores}))
    return pd.concat(parts, ignore_index=True)


# --- group tables -------------------------------------------------------------------------------------


def test_group_table_rows_and_unweighted_mean():
    frame = _frame()
    table = group_table(frame, "generator")
    assert table["generator"].tolist() == ["dalle", "progan", "sdxl", "mean"]
    for generator in ("dalle", "progan", "sdxl"):
        part = frame[frame["generator"] == generator]
        row = table.set_index("generator").loc[generator]
        assert row["ap"] == pytest.approx(average_precision_score(part["label"], part["score"]))
    mean = table.iloc[-1]
    assert mean["acc"] == pytest.approx(table["acc"].iloc[:-1].mean())
    assert mean["eer"] == pytest.approx(table["eer"].iloc[:-1].mean())
    assert mean["n"] == len(frame) and table["n"].dtype == np.int64


def test_group_table_with_two_key_columns():
    frame = pd.DataFrame({
        "kind": ["swap", "swap", "swap", "swap", "reenact", "reenact", "reenact", "reenact"],
        "dataset": ["ff", "ff", "celeb", "celeb", "ff", "ff", "ff", "ff"],
        "label": [0, 1, 0, 1, 0, 1, 1, 0],
        "score": [0.2, 0.9, 0.7, 0.6, 0.1, 0.8, 0.3, 0.4],
    })
    table = group_table(frame, ["kind", "dataset"])
    assert list(table.columns[:2]) == ["kind", "dataset"]
    keys = list(zip(table["kind"], table["dataset"], strict=True))
    assert keys == [("reenact", "ff"), ("swap", "celeb"), ("swap", "ff"), ("mean", "mean")]
    by_key = table.set_index(["kind", "dataset"])
    # swap/celeb: the real at 0.7 is called fake, the fake at 0.6 caught.
    assert by_key.loc[("swap", "celeb"), "acc"] == pytest.approx(0.5)
    assert by_key.loc[("reenact", "ff"), "acc"] == pytest.approx(0.75)  # only the fake at 0.3 missed
    assert by_key.loc[("mean", "mean"), "acc"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert by_key.loc[("mean", "mean"), "n"] == 8


def test_mean_skips_single_class_groups():
    frame = pd.concat(
        [_frame(), pd.DataFrame({"generator": "fakes_only", "label": [1, 1, 1], "score": [0.9, 0.8, 0.1]})],
        ignore_index=True,
    )
    table = group_table(frame, "generator").set_index("generator")
    assert math.isnan(table.loc["fakes_only", "ap"])
    assert table.loc["mean", "ap"] == pytest.approx(table["ap"].drop(["mean", "fakes_only"]).mean())
    assert table.loc["mean", "acc"] == pytest.approx(table["acc"].drop("mean").mean())


def test_group_named_mean_or_missing_is_refused():
    frame = _frame(groups=("a", "mean"))
    with pytest.raises(ValueError, match="summary row"):
        group_table(frame, "generator")
    frame = _frame()
    frame.loc[0, "generator"] = None
    with pytest.raises(ValueError, match="missing"):
        group_table(frame, "generator")
    with pytest.raises(ValueError, match="lacks column"):
        group_table(_frame(), "dataset")


def test_multiclass_group_table():
    frame = pd.DataFrame({
        "concept": ["nudity", "nudity", "nudity", "violence", "violence"],
        "label": [0, 1, 2, 1, 2],
        "prob_0": [0.8, 0.1, 0.2, 0.6, 0.1],
        "prob_1": [0.1, 0.8, 0.2, 0.3, 0.1],
        "prob_2": [0.1, 0.1, 0.6, 0.1, 0.8],
    })
    table = group_table(frame, "concept", task="multiclass").set_index("concept")
    assert list(table.columns) == ["acc", "balanced_acc", "macro_f1", "nll", "n"]
    assert table.loc["nudity", "acc"] == pytest.approx(1.0)
    assert table.loc["violence", "acc"] == pytest.approx(0.5)
    assert table.loc["mean", "acc"] == pytest.approx(0.75) and table.loc["mean", "n"] == 5
    assert infer_prob_columns(frame) == ["prob_0", "prob_1", "prob_2"]
    with pytest.raises(ValueError, match="prob_0"):
        infer_prob_columns(frame.drop(columns="prob_1"))


# --- aggregation to parent units ------------------------------------------------------------------------


def _frames() -> pd.DataFrame:
    # Per-video mean scores: r1 0.2, r2 0.5 (reals); f1 0.8, f2 0.3, f3 0.5 (fakes).
    rows = [("r1", 0, 0.1), ("r1", 0, 0.3),
            ("r2", 0, 0.6), ("r2", 0, 0.4), ("r2", 0, 0.5),
            ("f1", 1, 0.7), ("f1", 1, 0.9),
            ("f2", 1, 0.0), ("f2", 1, 0.6),
            ("f3", 1, 0.5), ("f3", 1, 0.5)]
    frame = pd.DataFrame(rows, columns=["video", "label", "score"])
    frame["dataset"] = "ff"
    frame["frame_index"] = range(len(frame))
    return frame


def test_video_level_auc_is_the_hand_computed_pairwise_value():
    videos = aggregate_scores(_frames(), "video")
    assert list(videos.columns) == ["video", "label", "dataset", "score", "n_items"]
    assert dict(zip(videos["video"], videos["score"], strict=True)) == pytest.approx(
        {"f1": 0.8, "f2": 0.3, "f3": 0.5, "r1": 0.2, "r2": 0.5})
    assert videos["n_items"].tolist() == [2, 2, 2, 2, 3]  # f1 f2 f3 r1 r2
    # Fake-vs-real pairs won: f1 beats both (2), f2 beats r1 only (1), f3 beats r1 (1) and ties r2
    # (1/2) -> AUC = 4.5 / 6.
    table = group_table(videos, "dataset").set_index("dataset")
    assert table.loc["ff", "auc"] == pytest.approx(0.75)
    assert table.loc["ff", "n"] == 5  # videos, not frames
    frame_level = binary_metrics(_frames()["label"], _frames()["score"])["auc"]
    assert frame_level != pytest.approx(0.75)


def test_aggregation_how_and_columns():
    frames = _frames()
    assert aggregate_scores(frames, "video", how="max").set_index("video").loc["f2", "score"] == 0.6
    median = aggregate_scores(frames, "video", how="median").set_index("video")
    assert median.loc["r2", "score"] == pytest.approx(0.5)
    # frame_index varies within a video: dropped. Two unit columns come first.
    two = aggregate_scores(frames, ["dataset", "video"])
    assert list(two.columns) == ["dataset", "video", "label", "score", "n_items"]
    with pytest.raises(ValueError, match="how"):
        aggregate_scores(frames, "video", how="sum")


def test_second_aggregation_sums_item_counts():
    clips = aggregate_scores(_frames().assign(clip=lambda f: f["video"] + "_c"), "clip")
    videos = aggregate_scores(clips.assign(video=clips["clip"].str[:2]), "video")
    assert videos["n_items"].sum() == len(_frames())


def test_aggregation_refuses_mixed_labels():
    frames = _frames()
    frames.loc[frames["video"] == "f2", "label"] = [1, 0]
    frames.loc[frames["video"] == "r1", "label"] = [0, 1]
    with pytest.raises(ValueError, match="not constant within 2 unit") as caught:
        aggregate_scores(frames, "video")
    assert "f2" in str(caught.value) and "r1" in str(caught.value)


def test_multiclass_aggregation_is_columnwise():
    frames = pd.DataFrame({"video": ["a", "a", "b"], "label": [2, 2, 0],
                           "prob_0": [0.2, 0.0, 0.9], "prob_1": [0.2, 0.2, 0.05], "prob_2": [0.6, 0.8, 0.05]})
    columns = ["prob_0", "prob_1", "prob_2"]
    videos = aggregate_scores(frames, "video", score=columns)
    np.testing.assert_allclose(videos[columns].to_numpy(), [[0.1, 0.2, 0.7], [0.9, 0.05, 0.05]])
    maxed = aggregate_scores(frames, "video", score=columns, how="max")
    # Column maxima 0.2, 0.2, 0.8 renormalised to sum 1.
    np.testing.assert_allclose(maxed[columns].to_numpy()[0], [0.2 / 1.2, 0.2 / 1.2, 0.8 / 1.2])


# --- suites and the summary -----------------------------------------------------------------------------


def test_suite_of():
    assert suite_of("UniversalFakeDetect/dalle") == "UniversalFakeDetect"
    assert suite_of("A/b/c") == "A"
    assert suite_of("celebdf") == ""


def test_suite_means_average_subsets_unweighted():
    table = pd.DataFrame({"generator": ["A/x", "A/y", "A/z", "B/u", "solo", "mean"],
                          "acc": [0.9, 0.6, np.nan, 0.5, 0.8, 0.0],
                          "n": [10, 1000, 5, 7, 3, 1025]})
    suites = suite_means(table, "generator").set_index("suite")
    assert list(suites.index) == ["A", "B", ""]
    assert suites.loc["A", "acc"] == pytest.approx(0.75)  # not the 1000-image subset's weight
    assert suites.loc["A", "n_groups"] == 3 and suites.loc["A", "n"] == 1015
    assert suites.loc["B", "acc"] == pytest.approx(0.5)
    assert suites.loc["", "acc"] == pytest.approx(0.8)


def test_summarise_is_json_serialisable_and_consistent():
    frame = _frame(3)
    summary = summarise(frame, "generator", threshold=0.5)
    text = json.dumps(summary)  # no numpy types left
    assert json.loads(text)["per_group"][-1]["generator"] == "mean"
    overall = binary_metrics(frame["label"], frame["score"])
    assert summary["acc"] == pytest.approx(overall["acc"])
    table = group_table(frame, "generator")
    assert summary["mean_acc"] == pytest.approx(table.iloc[-1]["acc"])
    assert summary["mean_ap"] == pytest.approx(table.iloc[-1]["ap"])
    assert summary["n_groups"] == 3 and "suites" not in summary
    for key in ("acc", "ap", "mean_acc", "mean_ap", "threshold"):
        assert type(summary[key]) is float


def test_summarise_reports_named_suites():
    frame = _frame(4, groups=("UFD/dalle", "UFD/glide", "GenImage/midjourney", "celebdf"))
    summary = summarise(frame, "generator")
    assert set(summary["suites"]) == {"UFD", "GenImage"}  # stand-alone groups form no suite
    table = group_table(frame, "generator").set_index("generator")
    assert summary["suites"]["UFD"]["mean_acc"] == pytest.approx(
        (table.loc["UFD/dalle", "acc"] + table.loc["UFD/glide", "acc"]) / 2)
    assert summary["suites"]["UFD"]["n_groups"] == 2
    assert summary["n_groups"] == 4


def test_summarise_multiclass():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(3), size=60)
    frame = pd.DataFrame({"concept": rng.choice(["a", "b"], 60), "label": rng.integers(0, 3, 60),
                          **{f"prob_{i}": probs[:, i] for i in range(3)}})
    summary = summarise(frame, "concept", task="multiclass")
    assert summary["task"] == "multiclass" and "threshold" not in summary
    assert {"acc", "balanced_acc", "macro_f1", "nll", "mean_balanced_acc"} <= set(summary)
    json.dumps(summary)


def test_each_manipulation_is_scored_against_its_datasets_reals():
    from genguard.evaluation.grouping import pair_with_reference

    frame = pd.DataFrame({
        "dataset": ["ff", "ff", "ff", "ff", "cdf", "cdf"],
        "forgery": ["real", "real", "deepfakes", "face2face", "real", "synthesis"],
        "label": [0, 0, 1, 1, 0, 1],
        "score": [0.1, 0.6, 0.7, 0.3, 0.2, 0.9],
    })
    paired = pair_with_reference(frame, "forgery", "real", within="dataset")
    table = group_table(paired, "group").set_index("group")
    # deepfakes (0.7) beats both ff reals (0.1, 0.6): AUC 1; face2face (0.3) beats one of two: 0.5
    assert table.loc["ff/deepfakes", "auc"] == 1.0 and table.loc["ff/face2face", "auc"] == 0.5
    assert table.loc["cdf/synthesis", "n_real"] == 1  # never the other dataset's reals
    assert set(paired["group"]) == {"ff/deepfakes", "ff/face2face", "cdf/synthesis"}
    with pytest.raises(ValueError, match="no 'real' rows in dataset 'x'"):
        pair_with_reference(frame.assign(dataset="x").query("forgery != 'real'"), "forgery", "real", within="dataset")
