"""The leaderboard: hand-computable means, ranking, loud failures on incomplete results, outputs.

Synthetic results for 3 detectors x 6 conditions x 4 generators follow

    acc = BASE[detector] - SLOPE[detector] * condition_index + OFFSET[generator]
    r_acc = acc + 0.05, f_acc = acc - 0.05, ap = acc + 0.04

with OFFSET summing to zero, so mean/acc = BASE - SLOPE * index and the held-out mean (without the
train family g_a, offset +0.12) is 0.04 lower. beta is best on clean images but degrades fastest,
so ranking by anything other than clean accuracy would put alpha first.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genguard.evaluation.leaderboard import (
    CONDITIONS,
    LEADERBOARD_METRICS,
    LeaderboardError,
    build_leaderboard,
    leaderboard_heatmap_png,
    leaderboard_markdown,
    leaderboard_metrics,
    leaderboard_plot_records,
)

DETECTORS = ("alpha", "beta", "gamma")
GENERATORS = ("g_a", "g_b", "g_c", "g_d")
TRAIN = ("g_a",)
BASE = {"alpha": 0.70, "beta": 0.80, "gamma": 0.60}
SLOPE = {"alpha": 0.01, "beta": 0.06, "gamma": 0.0}
OFFSET = {"g_a": 0.12, "g_b": 0.0, "g_c": -0.03, "g_d": -0.09}


def make_results() -> pd.DataFrame:
    rows = []
    for detector in DETECTORS:
        for index, condition in enumerate(CONDITIONS):
            for generator in GENERATORS:
                acc = BASE[detector] - SLOPE[detector] * index + OFFSET[generator]
                rows.append({"detector": detector, "condition": condition, "generator": generator,
                             "acc": acc, "r_acc": acc + 0.05, "f_acc": acc - 0.05, "ap": acc + 0.04,
                             "auc": 0.5, "n": 100})
            # A stale summary row with nonsense values: must be ignored, means recomputed.
            rows.append({"detector": detector, "condition": condition, "generator": "mean",
                         "acc": 0.0, "r_acc": 0.0, "f_acc": 0.0, "ap": 0.0, "auc": 0.0, "n": 400})
    # Shuffled, so the output order can only come from the detectors/conditions/generators arguments.
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def build(results: pd.DataFrame | None = None, **kwargs) -> pd.DataFrame:
    kwargs.setdefault("train_generators", TRAIN)
    return build_leaderboard(make_results() if results is None else results, DETECTORS, GENERATORS, **kwargs)


def row(board: pd.DataFrame, detector: str, condition: str) -> pd.Series:
    chosen = board[(board["detector"] == detector) & (board["condition"] == condition)]
    assert len(chosen) == 1
    return chosen.iloc[0]


def error_message(results: pd.DataFrame) -> str:
    with pytest.raises(LeaderboardError) as caught:
        build(results)
    return str(caught.value)


# --- the table ---------------------------------------------------------------------------------------


def test_columns_and_row_order():
    board = build()
    expected = ["detector", "condition"]
    expected += [f"{g}/{m}" for g in GENERATORS for m in ("acc", "r_acc", "f_acc", "ap")]
    expected += ["mean/acc", "mean/r_acc", "mean/f_acc", "mean/ap", "held_out/acc", "held_out/ap", "rank"]
    assert list(board.columns) == expected
    assert list(zip(board["detector"], board["condition"], strict=True)) == [
        (d, c) for d in DETECTORS for c in CONDITIONS
    ]


def test_means_and_held_out_are_hand_computed_values():
    board = build()
    # beta under jpeg_75 (index 2): 0.80 - 2 * 0.06 = 0.68 on average; without g_a (+0.12): 0.64.
    beta = row(board, "beta", "jpeg_75")
    assert beta["g_d/acc"] == pytest.approx(0.59)
    assert beta["mean/acc"] == pytest.approx(0.68)
    assert beta["mean/r_acc"] == pytest.approx(0.73)
    assert beta["mean/f_acc"] == pytest.approx(0.63)
    assert beta["mean/ap"] == pytest.approx(0.72)
    assert beta["held_out/acc"] == pytest.approx(0.64)
    assert beta["held_out/ap"] == pytest.approx(0.68)
    # The stale "mean" rows (all zeros) were not averaged in anywhere.
    assert board["mean/acc"].min() > 0.4
    gamma = row(board, "gamma", "resize_0.5")
    assert gamma["mean/acc"] == pytest.approx(0.60)
    assert gamma["held_out/acc"] == pytest.approx(0.56)


def test_held_out_without_train_families_is_the_mean_and_nan_when_all_trained():
    untrained = build(train_generators=())
    np.testing.assert_allclose(untrained["held_out/acc"], untrained["mean/acc"])
    np.testing.assert_allclose(untrained["held_out/ap"], untrained["mean/ap"])
    all_trained = build(train_generators=GENERATORS)
    assert all_trained["held_out/acc"].isna().all() and all_trained["held_out/ap"].isna().all()


def test_unknown_train_generator_is_rejected():
    with pytest.raises(ValueError, match="g_z"):
        build(train_generators=("g_z",))


def test_rank_follows_clean_mean_acc_and_is_shared_across_conditions():
    board = build()
    ranks = board.groupby("detector")["rank"].unique()
    assert {d: list(r) for d, r in ranks.items()} == {"beta": [1], "alpha": [2], "gamma": [3]}
    # Averaged over all conditions alpha (0.675) beats beta (0.65): the rank really is the clean one.
    averages = board.groupby("detector")["mean/acc"].mean()
    assert averages["alpha"] > averages["beta"]
    assert board["rank"].dtype == np.int64


def test_rank_ties_go_to_mean_ap_then_name():
    def tiny(ap_b: float) -> pd.DataFrame:
        rows = [{"detector": d, "condition": "clean", "generator": "g", "acc": 0.7, "r_acc": 0.7,
                 "f_acc": 0.7, "ap": ap} for d, ap in (("b_det", ap_b), ("a_det", 0.8))]
        return pd.DataFrame(rows)

    same = build_leaderboard(tiny(0.8), ["b_det", "a_det"], ["g"], conditions=["clean"])
    assert dict(zip(same["detector"], same["rank"], strict=True)) == {"a_det": 1, "b_det": 2}
    better_ap = build_leaderboard(tiny(0.9), ["b_det", "a_det"], ["g"], conditions=["clean"])
    assert dict(zip(better_ap["detector"], better_ap["rank"], strict=True)) == {"b_det": 1, "a_det": 2}


def test_subset_of_conditions_ignores_other_rows():
    board = build(conditions=("blur_1", "clean"))
    assert list(board["condition"]) == ["blur_1", "clean"] * 3
    assert row(board, "beta", "blur_1")["rank"] == 1


# --- completeness is enforced --------------------------------------------------------------------------


def test_error_is_a_value_error():
    assert issubclass(LeaderboardError, ValueError)


def test_one_missing_row_is_named():
    results = make_results()
    drop = (results["detector"] == "alpha") & (results["condition"] == "jpeg_75") & (results["generator"] == "g_c")
    message = error_message(results[~drop])
    assert "1 problem" in message
    assert "missing: detector='alpha', condition='jpeg_75', generator='g_c'" in message
    assert "rerun" in message.lower()


def test_missing_detector_is_named_once():
    results = make_results()
    message = error_message(results[results["detector"] != "gamma"])
    assert "detector 'gamma' has no results" in message
    assert "1 problem" in message  # summarised, not 24 separate combinations


def test_missing_detector_condition_pair_is_named_once():
    results = make_results()
    message = error_message(results[(results["detector"] != "alpha") | (results["condition"] != "blur_2")])
    assert "detector 'alpha' has no results under condition 'blur_2'" in message and "1 problem" in message


def test_missing_generator_is_named():
    results = make_results()
    message = error_message(results[results["generator"] != "g_d"])
    assert "generator 'g_d' has no results" in message and "1 problem" in message


@pytest.mark.parametrize("metric", ["acc", "ap"])
def test_nan_metric_is_an_error(metric):
    results = make_results()
    index = results.index[(results["detector"] == "beta") & (results["condition"] == "blur_2")
                          & (results["generator"] == "g_b")][0]
    results.loc[index, metric] = float("nan")
    message = error_message(results)
    assert f"{metric}=nan" in message and "detector='beta', condition='blur_2', generator='g_b'" in message


def test_percentages_instead_of_fractions_are_an_error():
    results = make_results()
    results.loc[results["generator"] == "g_b", "acc"] *= 100
    assert "outside [0, 1]" in error_message(results)


def test_duplicate_row_is_an_error():
    results = make_results()
    first = results[(results["detector"] == "alpha") & (results["generator"] == "g_a")].iloc[[0]]
    message = error_message(pd.concat([results, first], ignore_index=True))
    assert "duplicated (2 rows)" in message and "generator='g_a'" in message


def test_unexpected_generator_is_an_error():
    results = make_results()
    extra = results[results["generator"] == "g_a"].assign(generator="g_e")
    message = error_message(pd.concat([results, extra], ignore_index=True))
    assert "unexpected generator" in message and "g_e" in message


def test_unexpected_detector_is_an_error():
    results = make_results()
    extra = results[results["detector"] == "alpha"].assign(detector="delta")
    assert "unexpected detector" in error_message(pd.concat([results, extra], ignore_index=True))


def test_long_problem_lists_are_truncated():
    results = make_results()
    targets = results.index[results["generator"] != "mean"][:30]
    results.loc[targets, "acc"] = float("nan")
    message = error_message(results)
    assert "30 problem(s)" in message and "and 10 more" in message
    assert message.count("acc=nan") == 20


def test_missing_column_is_an_error():
    with pytest.raises(LeaderboardError, match="f_acc"):
        build(make_results().drop(columns="f_acc"))


# --- outputs ---------------------------------------------------------------------------------------------


def _tables(markdown: str) -> list[list[str]]:
    tables: list[list[str]] = []
    previous_was_table = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            if not previous_was_table:
                tables.append([])
            tables[-1].append(line)
        previous_was_table = line.startswith("|")
    return tables


def _cells(line: str) -> int:
    return len(line.replace("\\|", "").strip().strip("|").split("|"))


def test_markdown_names_everything_and_tables_are_well_formed():
    markdown = leaderboard_markdown(build(), train_generators=TRAIN)
    for name in (*DETECTORS, *GENERATORS, *CONDITIONS):
        assert name in markdown
    tables = _tables(markdown)
    assert len(tables) == 2 + (len(CONDITIONS) - 1)  # clean, robustness, one per degraded condition
    for table in tables:
        assert len(table) == 2 + len(DETECTORS)
        assert set(table[1]) <= set("|-: ")  # the separator row
        assert all(_cells(line) == _cells(table[0]) for line in table)
    clean = tables[0]
    assert "g_a (train) ACC (R/F)" in clean[0] and "g_b (train)" not in clean[0]
    # Rows in rank order; beta on g_b clean: acc 0.80, r_acc 0.85, f_acc 0.75.
    assert [line.split("|")[2].strip() for line in clean[2:]] == ["beta", "alpha", "gamma"]
    assert "80.0 (85.0/75.0)" in clean[2]
    assert "68.0 / 72.0" in markdown  # beta jpeg_75: mean ACC / mean AP in the robustness table


def test_markdown_escapes_pipes_in_names():
    results = pd.DataFrame([{"detector": "x|y", "condition": "clean", "generator": "g", "acc": 0.5,
                             "r_acc": 0.5, "f_acc": 0.5, "ap": 0.5}])
    board = build_leaderboard(results, ["x|y"], ["g"], conditions=["clean"])
    for table in _tables(leaderboard_markdown(board)):
        assert all(_cells(line) == _cells(table[0]) for line in table)


def _png_size(payload: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(payload)) as decoded:
        decoded.load()
        assert decoded.format == "PNG"
        return decoded.size


def test_heatmap_is_a_png_that_grows_with_rows():
    board = build()
    width, height = _png_size(leaderboard_heatmap_png(board))
    assert width > 100 and height > 100
    _, clean_height = _png_size(leaderboard_heatmap_png(board[board["condition"] == "clean"], metric="ap"))
    assert height > clean_height
    with pytest.raises(ValueError, match="metric"):
        leaderboard_heatmap_png(board, metric="auc")


def test_metrics_are_strict_json_with_expected_means():
    metrics = leaderboard_metrics(build(train_generators=GENERATORS))  # held-out NaN -> None
    json.dumps(metrics, allow_nan=False)
    assert set(metrics) == set(DETECTORS)
    beta = metrics["beta"]
    assert beta["rank"] == 1 and type(beta["rank"]) is int
    assert set(beta) == {*CONDITIONS, "rank"}
    assert beta["jpeg_75"]["mean_acc"] == pytest.approx(0.68) and type(beta["jpeg_75"]["mean_acc"]) is float
    assert beta["clean"]["held_out_acc"] is None
    assert set(beta["clean"]) == {*(f"mean_{m}" for m in LEADERBOARD_METRICS), "held_out_acc", "held_out_ap"}


def test_plot_records_one_per_cell_including_mean():
    records = leaderboard_plot_records(build())
    assert len(records) == len(DETECTORS) * len(CONDITIONS) * (len(GENERATORS) + 1)
    assert all(set(r) == {"detector", "condition", "generator", "acc", "ap"} for r in records)
    json.dumps(records, allow_nan=False)
    (mean,) = [r for r in records if (r["detector"], r["condition"], r["generator"]) == ("beta", "jpeg_75", "mean")]
    assert mean["acc"] == pytest.approx(0.68) and mean["ap"] == pytest.approx(0.72)
    assert not any(math.isnan(r["acc"]) for r in records)
