"""The leaderboard: hand-computable means, ranking, loud failures on incomplete results, outputs.

Synthetic results for 3 systems x 6 conditions x 4 groups follow

    acc = BASE[system] - SLOPE[system] * condition_index + OFFSET[group]
    r_acc = acc + 0.05, f_acc = acc - 0.05, ap = acc + 0.04

with OFFSET summing to zero, so mean/acc = BASE - SLOPE * index and the held-out mean (without the
train group g_a, offset +0.12) is 0.04 lower. beta is best on clean images but degrades fastest,
so ranking by anything other than clean accuracy would put alpha first. The results use the AIGI
column names (detector, generator) to exercise system_column/group_column.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genguard.evaluation.conditions import CONDITION_SUITES
from genguard.evaluation.leaderboard import (
    LeaderboardError,
    build_leaderboard,
    leaderboard_heatmap_figure,
    leaderboard_heatmap_png,
    leaderboard_markdown,
    leaderboard_metrics,
    leaderboard_plot_records,
)

CONDITIONS = tuple(CONDITION_SUITES["aigi_robustness"])
METRICS = ("acc", "r_acc", "f_acc", "ap")
SYSTEMS = ("alpha", "beta", "gamma")
GROUPS = ("g_a", "g_b", "g_c", "g_d")
HELD_OUT = ("g_b", "g_c", "g_d")  # trained on g_a
BASE = {"alpha": 0.70, "beta": 0.80, "gamma": 0.60}
SLOPE = {"alpha": 0.01, "beta": 0.06, "gamma": 0.0}
OFFSET = {"g_a": 0.12, "g_b": 0.0, "g_c": -0.03, "g_d": -0.09}


def make_results(offset: dict[str, float] = OFFSET) -> pd.DataFrame:
    rows = []
    for system in SYSTEMS:
        for index, condition in enumerate(CONDITIONS):
            for group, shift in offset.items():
                acc = BASE[system] - SLOPE[system] * index + shift
                rows.append({"detector": system, "condition": condition, "generator": group,
                             "acc": acc, "r_acc": acc + 0.05, "f_acc": acc - 0.05, "ap": acc + 0.04,
                             "auc": 0.5, "n": 100})
            # A stale summary row with nonsense values: must be ignored, means recomputed.
            rows.append({"detector": system, "condition": condition, "generator": "mean",
                         "acc": 0.0, "r_acc": 0.0, "f_acc": 0.0, "ap": 0.0, "auc": 0.0, "n": 400})
    # Shuffled, so the output order can only come from the systems/conditions/groups arguments.
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def build(results: pd.DataFrame | None = None, **kwargs) -> pd.DataFrame:
    kwargs.setdefault("held_out", HELD_OUT)
    kwargs.setdefault("conditions", CONDITIONS)
    kwargs.setdefault("groups", GROUPS)
    return build_leaderboard(make_results() if results is None else results, systems=SYSTEMS,
                             system_column="detector", group_column="generator", **kwargs)


def row(board: pd.DataFrame, system: str, condition: str) -> pd.Series:
    chosen = board[(board["system"] == system) & (board["condition"] == condition)]
    assert len(chosen) == 1
    return chosen.iloc[0]


def error_message(results: pd.DataFrame) -> str:
    with pytest.raises(LeaderboardError) as caught:
        build(results)
    return str(caught.value)


# --- the table ---------------------------------------------------------------------------------------


def test_columns_and_row_order():
    board = build()
    expected = ["system", "condition"]
    expected += [f"{g}/{m}" for g in GROUPS for m in METRICS]
    expected += [f"mean/{m}" for m in METRICS] + [f"held_out/{m}" for m in METRICS] + ["rank"]
    assert list(board.columns) == expected
    expected_rows = [(s, c) for s in SYSTEMS for c in CONDITIONS]
    assert list(zip(board["system"], board["condition"], strict=True)) == expected_rows


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
    assert beta["held_out/f_acc"] == pytest.approx(0.59)
    # The stale "mean" rows (all zeros) were not averaged in anywhere.
    assert board["mean/acc"].min() > 0.4
    gamma = row(board, "gamma", "resize_0.5")
    assert gamma["mean/acc"] == pytest.approx(0.60)
    assert gamma["held_out/acc"] == pytest.approx(0.56)


def test_held_out_none_is_the_mean_and_empty_is_nan():
    everything = build(held_out=None)
    np.testing.assert_allclose(everything["held_out/acc"], everything["mean/acc"])
    np.testing.assert_allclose(everything["held_out/ap"], everything["mean/ap"])
    nothing = build(held_out=())
    assert nothing["held_out/acc"].isna().all() and nothing["held_out/ap"].isna().all()


def test_unknown_held_out_group_is_rejected():
    with pytest.raises(ValueError, match="g_z"):
        build(held_out=("g_z",))


def test_suite_columns_average_per_suite():
    offset = {"UFD/dalle": 0.10, "UFD/glide": 0.0, "GenImage/mj": -0.20, "celebdf": 0.10}
    board = build(make_results(offset), groups=list(offset), held_out=None)
    suites = [c for c in board.columns if c.startswith("suite:")]
    assert suites == [f"suite:{s}/{m}" for s in ("UFD", "GenImage") for m in METRICS]  # no suite ""
    beta = row(board, "beta", "clean")
    assert beta["suite:UFD/acc"] == pytest.approx(0.85)
    assert beta["suite:GenImage/acc"] == pytest.approx(0.60)
    assert beta["mean/acc"] == pytest.approx(0.80)  # plain mean over the four groups
    assert beta["UFD/dalle/acc"] == pytest.approx(0.90)
    markdown = leaderboard_markdown(board)
    assert "UFD ACC" in markdown and "85.0" in markdown
    records = leaderboard_plot_records(board)
    assert {r["group"] for r in records} == {*offset, "mean"}


def test_rank_follows_clean_mean_acc_and_is_shared_across_conditions():
    board = build()
    ranks = board.groupby("system")["rank"].unique()
    assert {s: list(r) for s, r in ranks.items()} == {"beta": [1], "alpha": [2], "gamma": [3]}
    # Averaged over all conditions alpha (0.675) beats beta (0.65): the rank really is the clean one.
    averages = board.groupby("system")["mean/acc"].mean()
    assert averages["alpha"] > averages["beta"]
    assert board["rank"].dtype == np.int64


def _tiny(values: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"system": s, "condition": "clean", "group": "g", **v} for s, v in values.items()])


TINY = {"systems": ["b_sys", "a_sys"], "groups": ["g"], "conditions": ["clean"], "metrics": ["acc", "ap"]}


def test_rank_ties_go_to_the_next_rank_metric_then_name():
    same = build_leaderboard(_tiny({"b_sys": {"acc": 0.7, "ap": 0.8}, "a_sys": {"acc": 0.7, "ap": 0.8}}),
                             **TINY)
    assert dict(zip(same["system"], same["rank"], strict=True)) == {"a_sys": 1, "b_sys": 2}
    better_ap = build_leaderboard(_tiny({"b_sys": {"acc": 0.7, "ap": 0.9}, "a_sys": {"acc": 0.7, "ap": 0.8}}),
                                  **TINY)
    assert dict(zip(better_ap["system"], better_ap["rank"], strict=True)) == {"b_sys": 1, "a_sys": 2}


def test_lower_is_better_metrics_rank_ascending():
    results = _tiny({"x": {"auc": 0.9, "eer": 0.2}, "y": {"auc": 0.8, "eer": 0.1}})
    board = build_leaderboard(results, systems=["x", "y"], groups=["g"], conditions=["clean"],
                              metrics=["auc", "eer"], rank_by=["eer"])
    assert dict(zip(board["system"], board["rank"], strict=True)) == {"y": 1, "x": 2}
    assert leaderboard_metrics(board) == {"y": {"rank": 1, "mean_eer": 0.1, "held_out_eer": 0.1},
                                          "x": {"rank": 2, "mean_eer": 0.2, "held_out_eer": 0.2}}


def test_a_level_prefixed_eer_ranks_ascending_too():
    """Face boards carry video- and frame-level rates (``eer``, ``frame_eer``): both lower-better."""
    results = _tiny({"x": {"frame_eer": 0.3}, "y": {"frame_eer": 0.1}})
    board = build_leaderboard(results, systems=["x", "y"], groups=["g"], conditions=["clean"],
                              metrics=["frame_eer"], rank_by=["frame_eer"])
    assert dict(zip(board["system"], board["rank"], strict=True)) == {"y": 1, "x": 2}


def test_subset_of_conditions_ignores_other_rows_and_ranks_on_the_first():
    board = build(conditions=("blur_1", "jpeg_75"))
    assert list(board["condition"]) == ["blur_1", "jpeg_75"] * 3
    # Without clean the first condition ranks: on blur_1 alpha (0.67) beats beta (0.80 - 3 * 0.06 = 0.62).
    assert dict(zip(board["system"], board["rank"], strict=True)) == {"alpha": 1, "beta": 2, "gamma": 3}
    assert list(build(conditions="aigi_robustness")["condition"]) == list(CONDITIONS) * 3  # a suite name


def test_argument_errors():
    with pytest.raises(ValueError, match="reserved"):
        build_leaderboard(make_results(), systems=SYSTEMS, groups=["g_a", "mean"], conditions=CONDITIONS)
    with pytest.raises(ValueError, match="rank_by"):
        build(rank_by=("auc",))
    with pytest.raises(ValueError, match="more than once"):
        build(groups=("g_a", "g_a"))
    with pytest.raises(TypeError, match="list of names"):
        build(groups="g_a")


# --- completeness is enforced --------------------------------------------------------------------------


def test_error_is_a_value_error():
    assert issubclass(LeaderboardError, ValueError)


def test_one_missing_row_is_named_with_the_callers_column_names():
    results = make_results()
    drop = ((results["detector"] == "alpha") & (results["condition"] == "jpeg_75")
            & (results["generator"] == "g_c"))
    message = error_message(results[~drop])
    assert "1 problem" in message
    assert "missing: detector='alpha', condition='jpeg_75', generator='g_c'" in message
    assert "rerun" in message.lower()


def test_missing_system_is_named_once():
    message = error_message(make_results().query("detector != 'gamma'"))
    assert "detector 'gamma' has no results" in message
    assert "1 problem" in message  # summarised, not 24 separate combinations


def test_missing_system_condition_pair_is_named_once():
    results = make_results()
    message = error_message(results[(results["detector"] != "alpha") | (results["condition"] != "blur_2")])
    assert "detector 'alpha' has no results under condition 'blur_2'" in message and "1 problem" in message


def test_missing_group_and_condition_are_named():
    results = make_results()
    message = error_message(results[results["generator"] != "g_d"])
    assert "generator 'g_d' has no results" in message and "1 problem" in message
    message = error_message(results[results["condition"] != "jpeg_95"])
    assert "condition 'jpeg_95' has no results for any detector" in message and "1 problem" in message


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


def test_unexpected_group_and_system_are_errors():
    results = make_results()
    extra = results[results["generator"] == "g_a"].assign(generator="g_e")
    message = error_message(pd.concat([results, extra], ignore_index=True))
    assert "unexpected generator" in message and "g_e" in message
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
    markdown = leaderboard_markdown(build(), title="AIGI detection leaderboard", train_groups=("g_a",),
                                    group_label="generator", system_label="detector")
    assert markdown.startswith("# AIGI detection leaderboard")
    for name in (*SYSTEMS, *GROUPS, *CONDITIONS):
        assert name in markdown
    tables = _tables(markdown)
    assert len(tables) == 2 + (len(CONDITIONS) - 1)  # clean, robustness, one per degraded condition
    for table in tables:
        assert len(table) == 2 + len(SYSTEMS)
        assert set(table[1]) <= set("|-: ")  # the separator row
        assert all(_cells(line) == _cells(table[0]) for line in table)
    clean = tables[0]
    assert "| rank | detector |" in clean[0]
    assert "g_a (train) ACC (R/F)" in clean[0] and "g_b (train)" not in clean[0]
    # Rows in rank order; beta on g_b clean: acc 0.80, r_acc 0.85, f_acc 0.75.
    assert [line.split("|")[2].strip() for line in clean[2:]] == ["beta", "alpha", "gamma"]
    assert "80.0 (85.0/75.0)" in clean[2]
    assert "68.0 / 72.0" in markdown  # beta jpeg_75: mean ACC / mean AP in the robustness table
    with pytest.raises(ValueError, match="g_z"):
        leaderboard_markdown(build(), train_groups=("g_z",))


def test_markdown_escapes_pipes_in_names():
    results = pd.DataFrame([{"system": "x|y", "condition": "clean", "group": "g", "acc": 0.5,
                             "r_acc": 0.5, "f_acc": 0.5, "ap": 0.5}])
    board = build_leaderboard(results, systems=["x|y"], groups=["g"], conditions=["clean"])
    for table in _tables(leaderboard_markdown(board)):
        assert all(_cells(line) == _cells(table[0]) for line in table)


def test_heatmap_has_one_cell_per_row_and_group_plus_mean():
    board = build()
    figure = leaderboard_heatmap_figure(board, "ap")
    (image,) = figure.axes[0].get_images()
    assert image.get_array().shape == (len(SYSTEMS) * len(CONDITIONS), len(GROUPS) + 1)
    assert image.get_array()[0, -1] == pytest.approx(row(board, "alpha", "clean")["mean/ap"])
    with Image.open(io.BytesIO(leaderboard_heatmap_png(board))) as decoded:
        assert decoded.format == "PNG" and decoded.width > 100
    with pytest.raises(ValueError, match="metric"):
        leaderboard_heatmap_png(board, metric="auc")


def test_metrics_are_small_strict_json_on_the_clean_condition():
    metrics = leaderboard_metrics(build(held_out=()))  # held-out NaN -> None
    json.dumps(metrics, allow_nan=False)
    assert list(metrics) == ["beta", "alpha", "gamma"]  # rank order
    beta = metrics["beta"]
    assert beta == {"rank": 1, "mean_acc": pytest.approx(0.80), "mean_ap": pytest.approx(0.84),
                    "held_out_acc": None, "held_out_ap": None}
    assert type(beta["rank"]) is int and type(beta["mean_acc"]) is float
    # A board read back from CSV has lost attrs: the defaults are used.
    csv = pd.read_csv(io.StringIO(build().to_csv(index=False)))
    assert set(leaderboard_metrics(csv)["alpha"]) == {"rank", "mean_acc", "mean_ap", "held_out_acc",
                                                      "held_out_ap"}
    assert leaderboard_metrics(csv, rank_by=["f_acc"])["alpha"]["mean_f_acc"] == pytest.approx(0.65)


def test_plot_records_one_per_cell_including_mean():
    records = leaderboard_plot_records(build())
    assert len(records) == len(SYSTEMS) * len(CONDITIONS) * (len(GROUPS) + 1)
    assert all(set(r) == {"system", "condition", "group", *METRICS} for r in records)
    json.dumps(records, allow_nan=False)
    (mean,) = [r for r in records if (r["system"], r["condition"], r["group"]) == ("beta", "jpeg_75", "mean")]
    assert mean["acc"] == pytest.approx(0.68) and mean["ap"] == pytest.approx(0.72)
    assert not any(math.isnan(r["acc"]) for r in records)
