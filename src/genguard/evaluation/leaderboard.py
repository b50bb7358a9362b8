"""Cross-generator, cross-condition leaderboard of AIGI detectors.

The benchmark protocol (as in the published UnivFD and AIGIBench evaluations): every detector is
trained on images of *one* generator family and tested on *every* family, on clean test images and
under each test-time degradation of :mod:`genguard.evaluation.perturbations` (a "condition"). A
detector's headline numbers are the *unweighted* means over generator families of the
per-family rates from :func:`genguard.evaluation.metrics.per_generator_table` (acc, r_acc = accuracy
on reals, f_acc = accuracy on fakes, ap), so a family with many test images counts as much as a small
one. ``held_out`` averages only the families the detector was not trained on, which is the
generalisation number the protocol is about; the train family is usually the easiest column.

Incomplete results fail loudly with :class:`LeaderboardError` instead of being averaged over what is
there: a detector whose run crashed, or a generator family that silently produced no test images,
would otherwise drop out of a mean - and dropping the hardest family flatters every detector that
lacks it, so the ranking would compare numbers over different sets of families without anyone
noticing. Means are always recomputed here from the per-family rows (incoming ``mean`` rows are
ignored) for the same reason.

Outputs: :func:`build_leaderboard` (the wide table), :func:`leaderboard_markdown` (a report),
:func:`leaderboard_heatmap_png` (a figure), :func:`leaderboard_metrics` and
:func:`leaderboard_plot_records` (JSON for ``dvc metrics`` / ``dvc plots``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from genguard.evaluation.metrics import MEAN_ROW, nan_to_none
from genguard.evaluation.plots import _new_figure, _to_png

CONDITIONS: tuple[str, ...] = ("clean", "jpeg_95", "jpeg_75", "blur_1", "blur_2", "resize_0.5")
LEADERBOARD_METRICS: tuple[str, ...] = ("acc", "r_acc", "f_acc", "ap")

HELD_OUT = "held_out"
HELD_OUT_METRICS: tuple[str, ...] = ("acc", "ap")
RANK_CONDITION = "clean"
_KEYS: tuple[str, ...] = ("detector", "condition", "generator")
# Enough to see the pattern of a failure (one detector? one family? one condition?) without
# burying the advice at the end of the message under hundreds of lines.
_MAX_LISTED = 20
_ADVICE = (
    "The leaderboard needs every detector x condition x generator exactly once with finite metrics: "
    "a detector failed or a generator family has no test images (or only one class). Rerun the "
    "evaluation of the listed detector/condition pairs, or change the expected detectors/generators "
    "explicitly if the protocol really changed."
)


class LeaderboardError(ValueError):
    """The results are incomplete or inconsistent with the expected protocol."""


# --------------------------------------------------------------------------------------------------
# building the table
# --------------------------------------------------------------------------------------------------


def _names(values: Sequence[str], what: str) -> list[str]:
    names = [str(value) for value in values]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"{what} listed more than once: {duplicated}")
    return names


def _rank_condition(conditions: Sequence[str]) -> str:
    # The ranking is by clean accuracy (the protocol's headline); a board built for degradations
    # only still needs *some* order, and the first condition asked for is the least surprising.
    return RANK_CONDITION if RANK_CONDITION in conditions else conditions[0]


def _combo(detector: str, condition: str, generator: str) -> str:
    return f"detector={detector!r}, condition={condition!r}, generator={generator!r}"


def _raise_problems(problems: list[str]) -> None:
    listed = problems[:_MAX_LISTED]
    lines = [f"  - {problem}" for problem in listed]
    if len(problems) > len(listed):
        lines.append(f"  ... and {len(problems) - len(listed)} more")
    raise LeaderboardError(
        f"incomplete or inconsistent leaderboard results ({len(problems)} problem(s)):\n"
        + "\n".join(lines)
        + "\n"
        + _ADVICE
    )


def _check_complete(
    results: pd.DataFrame, detectors: list[str], generators: list[str], conditions: list[str]
) -> None:
    problems: list[str] = []

    unexpected_detectors = sorted(set(results["detector"]) - set(detectors))
    if unexpected_detectors:
        problems.append(f"unexpected detector(s) {unexpected_detectors}, expected {detectors}")
    unexpected_generators = sorted(set(results["generator"]) - set(generators))
    if unexpected_generators:
        # A new family in the results means the test protocol changed: averaging it in silently
        # would make the new means incomparable to every older leaderboard.
        problems.append(
            f"unexpected generator(s) {unexpected_generators}, expected {generators} "
            "(the test protocol changed?)"
        )

    counts = results.groupby(list(_KEYS), sort=False).size()
    present = set(counts.index)
    expected = [(d, c, g) for d in detectors for c in conditions for g in generators]
    missing = {key for key in expected if key not in present}
    # Summarise whole detectors, then whole generators, then whole conditions: "detector 'x' has no
    # results" says more than 24 missing combinations, and points at the run that failed.
    live_detectors = []
    for detector in detectors:
        keys = {(detector, c, g) for c in conditions for g in generators}
        if keys <= missing:
            problems.append(f"detector {detector!r} has no results at all (its run failed or was not collected)")
            missing -= keys
        else:
            live_detectors.append(detector)
    live_generators = []
    for generator in generators:
        keys = {(d, c, generator) for d in live_detectors for c in conditions}
        if keys and keys <= missing:
            problems.append(
                f"generator {generator!r} has no results for any detector or condition "
                "(no test images for this family?)"
            )
            missing -= keys
        else:
            live_generators.append(generator)
    for condition in conditions:
        keys = {(d, condition, g) for d in live_detectors for g in live_generators}
        if keys and keys <= missing:
            problems.append(f"condition {condition!r} has no results for any detector")
            missing -= keys
    # The usual failure: one detector's evaluation under one degradation crashed.
    for detector in live_detectors:
        for condition in conditions:
            keys = {(detector, condition, g) for g in live_generators}
            if keys and keys <= missing:
                problems.append(f"detector {detector!r} has no results under condition {condition!r}")
                missing -= keys
    problems.extend(f"missing: {_combo(*key)}" for key in expected if key in missing)

    expected_set = set(expected)
    for key, count in counts.items():
        if count > 1 and key in expected_set:
            problems.append(f"duplicated ({count} rows): {_combo(*key)}")

    # Only rows of the expected protocol: rows of an unexpected detector/generator are reported above.
    in_protocol = results["detector"].isin(detectors) & results["generator"].isin(generators)
    for row in results.loc[in_protocol, [*_KEYS, *LEADERBOARD_METRICS]].itertuples(index=False):
        bad = [
            f"{name}={getattr(row, name)!r}"
            for name in LEADERBOARD_METRICS
            if not (math.isfinite(getattr(row, name)) and 0.0 <= getattr(row, name) <= 1.0)
        ]
        if bad:
            problems.append(
                f"non-finite or outside [0, 1] ({', '.join(bad)}): "
                f"{_combo(row.detector, row.condition, row.generator)}"
            )
    if problems:
        _raise_problems(problems)


def build_leaderboard(
    results: pd.DataFrame,
    detectors: Sequence[str],
    generators: Sequence[str],
    conditions: Sequence[str] = CONDITIONS,
    train_generators: Sequence[str] = (),
) -> pd.DataFrame:
    """The wide leaderboard: one row per (detector, condition), detector order then condition order.

    ``results`` is long: one row per (detector, condition, generator) with at least the columns
    ``detector``, ``condition``, ``generator`` and the rates in :data:`LEADERBOARD_METRICS` (in
    [0, 1]). Other columns (``auc``, ``n``, ...) are ignored, and so are rows whose generator is
    ``mean`` (means are recomputed here) and rows of conditions not asked for (a board of a subset
    of conditions is legitimate). Everything else must match the expected protocol exactly, or
    :class:`LeaderboardError` lists what is missing, duplicated, non-finite or unexpected.

    Columns: ``detector``, ``condition``; ``<g>/<metric>`` for each generator ``g`` (given order)
    and metric; ``mean/<metric>`` (unweighted mean over generators); ``held_out/acc`` and
    ``held_out/ap`` (mean over the generators not in ``train_generators``; the plain mean when none
    are given, NaN when every generator was trained on); ``rank`` (1 = best ``mean/acc`` on clean
    images - or on the first condition if ``clean`` is not asked for - shared by all conditions of
    a detector; ties go to the higher ``mean/ap``, then to the detector name).
    """
    detectors = _names(detectors, "detectors")
    generators = _names(generators, "generators")
    conditions = _names(conditions, "conditions")
    train = _names(train_generators, "train_generators")
    for what, names in (("detectors", detectors), ("generators", generators), ("conditions", conditions)):
        if not names:
            raise ValueError(f"no {what} given")
    reserved = {MEAN_ROW, HELD_OUT} & set(generators)
    if reserved:
        raise ValueError(f"generator name(s) {sorted(reserved)} are reserved for summary columns")
    if "rank" in conditions:
        raise ValueError("a condition may not be called 'rank': leaderboard_metrics uses that key")
    unknown_train = sorted(set(train) - set(generators))
    if unknown_train:
        # Most likely a typo; held-out means would silently include the real train family.
        raise ValueError(f"train_generators {unknown_train} are not among the generators {generators}")

    absent = sorted({*_KEYS, *LEADERBOARD_METRICS} - set(results.columns))
    if absent:
        raise LeaderboardError(f"results lack column(s) {absent}; got {list(results.columns)}")
    frame = results.loc[:, [*_KEYS, *LEADERBOARD_METRICS]].copy()
    for key in _KEYS:
        frame[key] = frame[key].astype(str)
    for name in LEADERBOARD_METRICS:
        # Non-numbers become NaN and are reported with the NaNs, instead of a TypeError mid-way.
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    frame = frame[(frame["generator"] != MEAN_ROW) & frame["condition"].isin(conditions)]
    _check_complete(frame, detectors, generators, conditions)

    # Complete and unique now, so the pivot has exactly one value per cell and no NaN.
    wide = frame.set_index(list(_KEYS))[list(LEADERBOARD_METRICS)].unstack("generator")
    wide = wide.reindex(pd.MultiIndex.from_product([detectors, conditions], names=["detector", "condition"]))
    columns: dict[str, Any] = {
        "detector": wide.index.get_level_values("detector"),
        "condition": wide.index.get_level_values("condition"),
    }
    for generator in generators:
        for name in LEADERBOARD_METRICS:
            columns[f"{generator}/{name}"] = wide[(name, generator)].to_numpy()
    for name in LEADERBOARD_METRICS:
        columns[f"{MEAN_ROW}/{name}"] = wide[name][generators].mean(axis=1).to_numpy()
    held_out = [g for g in generators if g not in train]
    for name in HELD_OUT_METRICS:
        columns[f"{HELD_OUT}/{name}"] = (
            wide[name][held_out].mean(axis=1).to_numpy() if held_out else np.full(len(wide), np.nan)
        )
    board = pd.DataFrame(columns)

    ranking = board[board["condition"] == _rank_condition(conditions)]
    order = sorted(
        zip(ranking["detector"], ranking[f"{MEAN_ROW}/acc"], ranking[f"{MEAN_ROW}/ap"], strict=True),
        key=lambda item: (-item[1], -item[2], item[0]),
    )
    rank = {detector: position for position, (detector, _, _) in enumerate(order, start=1)}
    board["rank"] = board["detector"].map(rank).astype("int64")
    return board


# --------------------------------------------------------------------------------------------------
# reading a built board back
# --------------------------------------------------------------------------------------------------


def _board_generators(board: pd.DataFrame) -> list[str]:
    missing = sorted({"detector", "condition", "rank"} - set(board.columns))
    if missing:
        raise ValueError(f"not a leaderboard from build_leaderboard: lacks column(s) {missing}")
    # rsplit: the metric is the last path element, so a generator name may itself contain "/".
    generators = [
        column.rsplit("/", 1)[0]
        for column in board.columns
        if column.endswith("/acc") and column.rsplit("/", 1)[0] not in (MEAN_ROW, HELD_OUT)
    ]
    if not generators:
        raise ValueError("not a leaderboard from build_leaderboard: no <generator>/acc columns")
    return generators


def _unique(values: pd.Series) -> list[str]:
    return list(dict.fromkeys(values.astype(str)))


def _ranked_detectors(board: pd.DataFrame) -> list[str]:
    first = board.drop_duplicates("detector")
    return [str(d) for d in first.sort_values(["rank", "detector"], kind="stable")["detector"]]


def _row(board: pd.DataFrame, detector: str, condition: str) -> pd.Series:
    chosen = board[(board["detector"] == detector) & (board["condition"] == condition)]
    return chosen.iloc[0]


def _float(value: Any) -> float:
    return float(value) if value is not None else float("nan")


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _pct(value: Any) -> str:
    number = _float(value)
    return f"{100.0 * number:.1f}" if math.isfinite(number) else "n/a"


def _cell(text: str) -> str:
    # A "|" in a name would split the cell and break the table's column count.
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def leaderboard_markdown(board: pd.DataFrame, train_generators: Sequence[str] = ()) -> str:
    """A Markdown report of a board from :func:`build_leaderboard`.

    Sections: the clean table (detectors by rank; per generator ``ACC (R_ACC/F_ACC)`` in percent,
    train families marked ``(train)``, then mean ACC, mean AP and held-out ACC), a robustness table
    (``mean ACC / mean AP`` per condition) and, per degraded condition, per-generator ACC.
    """
    generators = _board_generators(board)
    conditions = _unique(board["condition"])
    detectors = _ranked_detectors(board)
    train = [str(g) for g in train_generators]
    unknown_train = sorted(set(train) - set(generators))
    if unknown_train:
        raise ValueError(f"train_generators {unknown_train} are not among the board's generators {generators}")
    headline = _rank_condition(conditions)

    lines = ["# AIGI detection leaderboard", ""]
    if train:
        lines.append(
            "Trained on: " + ", ".join(f"`{g}`" for g in train)
            + f"; tested on all {len(generators)} generator families. "
            "Means are unweighted over families; held-out = mean over the families not trained on."
        )
    else:
        lines.append(
            f"Train families: not given (held-out = mean over all {len(generators)} families). "
            "Means are unweighted over families."
        )
    lines += ["", f"Values in percent; rank by {headline} mean ACC (ties: mean AP).", ""]

    lines += [f"## {headline.capitalize()} images", ""]
    header = ["rank", "detector"]
    for generator in generators:
        marker = " (train)" if generator in train else ""
        header.append(f"{generator}{marker} ACC (R/F)")
    header += ["mean ACC", "mean AP", "held-out ACC"]
    rows = []
    for detector in detectors:
        row = _row(board, detector, headline)
        cells = [str(int(row["rank"])), detector]
        for generator in generators:
            cells.append(
                f"{_pct(row[f'{generator}/acc'])} "
                f"({_pct(row[f'{generator}/r_acc'])}/{_pct(row[f'{generator}/f_acc'])})"
            )
        cells += [_pct(row[f"{MEAN_ROW}/acc"]), _pct(row[f"{MEAN_ROW}/ap"]), _pct(row[f"{HELD_OUT}/acc"])]
        rows.append(cells)
    lines += _table(header, rows, ["---:", ":---"] + ["---:"] * (len(header) - 2))

    lines += ["", "## Robustness: mean ACC / mean AP per condition", ""]
    rows = [
        [detector]
        + [
            f"{_pct(_row(board, detector, c)[f'{MEAN_ROW}/acc'])} / {_pct(_row(board, detector, c)[f'{MEAN_ROW}/ap'])}"
            for c in conditions
        ]
        for detector in detectors
    ]
    lines += _table(["detector", *conditions], rows, [":---"] + ["---:"] * len(conditions))

    for condition in conditions:
        if condition == RANK_CONDITION:
            continue  # already in full above
        lines += ["", f"## ACC per generator under `{condition}`", ""]
        header = ["detector", *(f"{g} (train)" if g in train else g for g in generators), "mean"]
        rows = [
            [detector]
            + [_pct(_row(board, detector, condition)[f"{g}/acc"]) for g in generators]
            + [_pct(_row(board, detector, condition)[f"{MEAN_ROW}/acc"])]
            for detector in detectors
        ]
        lines += _table(header, rows, [":---"] + ["---:"] * (len(header) - 1))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# heatmap
# --------------------------------------------------------------------------------------------------


def leaderboard_heatmap_png(board: pd.DataFrame, metric: str = "acc") -> bytes:
    """Heatmap of ``metric`` per (detector · condition) row and generator column, plus ``mean``.

    Colours span 0..1 on viridis (perceptually uniform, readable in greyscale) so boards of
    different runs are visually comparable; every cell carries its value in percent. The figure
    grows with the number of rows and columns so the annotations stay legible.
    """
    if metric not in LEADERBOARD_METRICS:
        raise ValueError(f"metric must be one of {LEADERBOARD_METRICS}, got {metric!r}")
    generators = _board_generators(board)
    columns = [*generators, MEAN_ROW]
    values = board[[f"{g}/{metric}" for g in columns]].to_numpy(dtype=float)
    labels = [f"{d} · {c}" for d, c in zip(board["detector"].astype(str), board["condition"].astype(str),
                                             strict=True)]
    n_rows, n_cols = values.shape
    label_width = 0.075 * max(len(label) for label in labels)  # inches of tick labels on the left
    figure = _new_figure(max(5.0, 2.2 + label_width + 0.85 * n_cols), max(3.0, 1.4 + 0.32 * n_rows))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            value = values[i, j]
            if not math.isfinite(value):
                continue
            # viridis is dark at the low end and light at the top: switch text colour for contrast.
            colour = "black" if value > 0.5 else "white"
            weight = "bold" if columns[j] == MEAN_ROW else "normal"
            axes.text(j, i, f"{100.0 * value:.1f}", ha="center", va="center", fontsize=8, color=colour,
                      fontweight=weight)
    # Lines between detectors and before the mean column: the blocks are what one compares.
    detector_column = board["detector"].astype(str).to_numpy()
    for i in range(1, n_rows):
        if detector_column[i] != detector_column[i - 1]:
            axes.axhline(i - 0.5, color="white", linewidth=2.0)
    axes.axvline(n_cols - 1.5, color="white", linewidth=2.0)
    axes.set_xticks(np.arange(n_cols), labels=columns, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(np.arange(n_rows), labels=labels, fontsize=8)
    axes.set(title=f"{metric.upper()} per generator (%)", xlabel="test generator")
    figure.colorbar(image, ax=axes, shrink=0.9, label=metric)
    return _to_png(figure)


# --------------------------------------------------------------------------------------------------
# DVC metrics and plots
# --------------------------------------------------------------------------------------------------


def leaderboard_metrics(board: pd.DataFrame) -> dict[str, Any]:
    """``{detector: {condition: {mean_acc, mean_r_acc, mean_f_acc, mean_ap, held_out_acc,
    held_out_ap}, "rank": int}}`` with plain Python floats and NaN as None (strict JSON)."""
    _board_generators(board)
    summary: dict[str, Any] = {}
    for row in board.to_dict(orient="records"):
        entry = summary.setdefault(str(row["detector"]), {})
        entry[str(row["condition"])] = {
            **{f"mean_{name}": _float(row[f"{MEAN_ROW}/{name}"]) for name in LEADERBOARD_METRICS},
            **{f"held_out_{name}": _float(row[f"{HELD_OUT}/{name}"]) for name in HELD_OUT_METRICS},
        }
        entry["rank"] = int(row["rank"])
    return nan_to_none(summary)


def leaderboard_plot_records(board: pd.DataFrame) -> list[dict[str, Any]]:
    """Long records for ``dvc plots``: one ``{detector, condition, generator, acc, ap}`` per cell,
    the ``mean`` pseudo-generator included, in board order."""
    generators = [*_board_generators(board), MEAN_ROW]
    records = [
        {
            "detector": str(row["detector"]),
            "condition": str(row["condition"]),
            "generator": generator,
            "acc": _float(row[f"{generator}/acc"]),
            "ap": _float(row[f"{generator}/ap"]),
        }
        for row in board.to_dict(orient="records")
        for generator in generators
    ]
    return nan_to_none(records)
