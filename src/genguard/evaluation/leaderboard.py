"""Leaderboard of systems x conditions x groups, for every family.

The benchmark protocol (as in the published UnivFD/AIGIBench, DeeperForensics and robustness
evaluations): every *system* (detector, classifier, defended model) is tested on every *group* of test
data (generator, forgery dataset, concept, ...) under every *condition* (``clean`` plus test-time
degradations from :mod:`genguard.evaluation.conditions`, or attacks). A system's headline numbers are
the **unweighted means over groups** of the per-group rates (e.g. acc, r_acc = accuracy on reals,
f_acc = accuracy on fakes, ap from :func:`genguard.evaluation.grouping.group_table`), so a group with
many test items counts as much as a small one. ``held_out`` averages only the groups the system was
not trained on - the generalisation number - and groups named ``<suite>/<subset>`` get per-suite
means as well, which is how papers average (per suite, never across suites pooled).

Incomplete results fail loudly with :class:`LeaderboardError` instead of being averaged over what is
there: a system whose run crashed, or a group that silently produced no test items, would otherwise
drop out of a mean - and dropping the hardest group flatters every system that lacks it, so the
ranking would compare numbers over different sets of groups without anyone noticing. Means are
always recomputed here from the per-group rows (incoming ``mean`` rows are ignored) for the same reason.

Outputs: :func:`build_leaderboard` (the wide table, the full record: CSV and plots),
:func:`leaderboard_markdown` (a report), :func:`leaderboard_heatmap_png` (a figure),
:func:`leaderboard_metrics` (a *small* JSON for ``dvc metrics show``) and
:func:`leaderboard_plot_records` (long JSON records for ``dvc plots``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from genguard.evaluation.conditions import CLEAN, resolve_conditions
from genguard.evaluation.grouping import NO_SUITE, has_suites, suite_of
from genguard.evaluation.metrics import MEAN_ROW
from genguard.evaluation.plots import figure_png, new_figure
from genguard.io.jsonsafe import nan_to_none

DEFAULT_METRICS: tuple[str, ...] = ("acc", "r_acc", "f_acc", "ap")
DEFAULT_RANK_BY: tuple[str, ...] = ("acc", "ap")
HELD_OUT = "held_out"
SUITE_PREFIX = "suite:"
# Rates where smaller is better; every other leaderboard metric ranks higher-first. A level prefix
# keeps the direction: ``frame_eer`` (frame-level EER beside the video-level ``eer``) is lower-better too.
LOWER_IS_BETTER: frozenset[str] = frozenset({"eer"})


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.rsplit("_", 1)[-1] in LOWER_IS_BETTER
# Enough to see the pattern of a failure (one system? one group? one condition?) without burying
# the advice at the end of the message under hundreds of lines.
_MAX_LISTED = 20


class LeaderboardError(ValueError):
    """The results are incomplete or inconsistent with the expected protocol."""


@dataclass(frozen=True)
class _Protocol:
    """What the caller expects, and the column names the results use (for messages)."""

    systems: list[str]
    groups: list[str]
    conditions: list[str]
    metrics: list[str]
    system_label: str
    group_label: str

    def combo(self, system: str, condition: str, group: str) -> str:
        return f"{self.system_label}={system!r}, condition={condition!r}, {self.group_label}={group!r}"

    def advice(self) -> str:
        return (
            f"The leaderboard needs every {self.system_label} x condition x {self.group_label} exactly once "
            f"with finite metrics in [0, 1]: a {self.system_label} failed or a {self.group_label} has no "
            f"test items (or only one class). Rerun the evaluation of the listed "
            f"{self.system_label}/condition pairs, or change the expected "
            f"{self.system_label}s/{self.group_label}s explicitly if the protocol really changed."
        )


# --------------------------------------------------------------------------------------------------
# building the table
# --------------------------------------------------------------------------------------------------


def _names(values: Sequence[str] | None, what: str) -> list[str]:
    if values is None or isinstance(values, str):
        raise TypeError(f"{what} must be a list of names, got {values!r}")
    names = [str(value) for value in values]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"{what} listed more than once: {duplicated}")
    return names


def rank_condition(conditions: Sequence[str]) -> str:
    """``clean`` when present (the protocol's headline), else the first condition asked for."""
    return CLEAN if CLEAN in conditions else conditions[0]


def _raise_problems(problems: list[str], protocol: _Protocol) -> None:
    listed = problems[:_MAX_LISTED]
    lines = [f"  - {problem}" for problem in listed]
    if len(problems) > len(listed):
        lines.append(f"  ... and {len(problems) - len(listed)} more")
    raise LeaderboardError(
        f"incomplete or inconsistent leaderboard results ({len(problems)} problem(s)):\n"
        + "\n".join(lines) + "\n" + protocol.advice()
    )


def _summarise_missing(missing: set[tuple[str, str, str]], p: _Protocol) -> list[str]:
    """Whole systems, then whole groups, then whole conditions, then system/condition pairs, then cells.

    "system 'x' has no results" says more than 24 missing combinations, and points at the run that failed.
    """
    problems: list[str] = []
    live_systems = []
    for system in p.systems:
        keys = {(system, c, g) for c in p.conditions for g in p.groups}
        if keys <= missing:
            problems.append(f"{p.system_label} {system!r} has no results at all "
                            "(its run failed or was not collected)")
            missing -= keys
        else:
            live_systems.append(system)
    live_groups = []
    for group in p.groups:
        keys = {(s, c, group) for s in live_systems for c in p.conditions}
        if keys and keys <= missing:
            problems.append(f"{p.group_label} {group!r} has no results for any {p.system_label} or condition "
                            f"(no test items for this {p.group_label}?)")
            missing -= keys
        else:
            live_groups.append(group)
    for condition in p.conditions:
        keys = {(s, condition, g) for s in live_systems for g in live_groups}
        if keys and keys <= missing:
            problems.append(f"condition {condition!r} has no results for any {p.system_label}")
            missing -= keys
    # The usual failure: one system's evaluation under one condition crashed.
    for system in live_systems:
        for condition in p.conditions:
            keys = {(system, condition, g) for g in live_groups}
            if keys and keys <= missing:
                problems.append(f"{p.system_label} {system!r} has no results under condition {condition!r}")
                missing -= keys
    expected = [(s, c, g) for s in p.systems for c in p.conditions for g in p.groups]
    problems.extend(f"missing: {p.combo(*key)}" for key in expected if key in missing)
    return problems


def _check_complete(frame: pd.DataFrame, p: _Protocol) -> None:
    problems: list[str] = []
    unexpected_systems = sorted(set(frame["system"]) - set(p.systems))
    if unexpected_systems:
        problems.append(f"unexpected {p.system_label}(s) {unexpected_systems}, expected {p.systems}")
    unexpected_groups = sorted(set(frame["group"]) - set(p.groups))
    if unexpected_groups:
        # A new group in the results means the test protocol changed: averaging it in silently would
        # make the new means incomparable to every older leaderboard.
        problems.append(f"unexpected {p.group_label}(s) {unexpected_groups}, expected {p.groups} "
                        "(the test protocol changed?)")

    counts = frame.groupby(["system", "condition", "group"], sort=False).size()
    expected = {(s, c, g) for s in p.systems for c in p.conditions for g in p.groups}
    problems += _summarise_missing(expected - set(counts.index), p)
    for key, count in counts.items():
        if count > 1 and key in expected:
            problems.append(f"duplicated ({count} rows): {p.combo(*key)}")

    # Only rows of the expected protocol: rows of an unexpected system/group are reported above.
    in_protocol = frame["system"].isin(p.systems) & frame["group"].isin(p.groups)
    for row in frame.loc[in_protocol].to_dict(orient="records"):
        bad = [f"{name}={row[name]!r}" for name in p.metrics
               if not (math.isfinite(row[name]) and 0.0 <= row[name] <= 1.0)]
        if bad:
            problems.append(f"non-finite or outside [0, 1] ({', '.join(bad)}): "
                            f"{p.combo(row['system'], row['condition'], row['group'])}")
    if problems:
        _raise_problems(problems, p)


def _rank(board: pd.DataFrame, conditions: list[str], rank_by: list[str]) -> dict[str, int]:
    ranking = board[board["condition"] == rank_condition(conditions)]

    def key(row: dict[str, Any]) -> tuple:
        values = [row[f"{MEAN_ROW}/{m}"] * (1 if lower_is_better(m) else -1) for m in rank_by]
        return (*values, row["system"])

    ordered = sorted(ranking.to_dict(orient="records"), key=key)
    return {row["system"]: position for position, row in enumerate(ordered, start=1)}


def build_leaderboard(
    results: pd.DataFrame,
    *,
    systems: Sequence[str],
    groups: Sequence[str],
    conditions: Sequence[str] | str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    held_out: Sequence[str] | None = None,
    rank_by: Sequence[str] = DEFAULT_RANK_BY,
    system_column: str = "system",
    group_column: str = "group",
) -> pd.DataFrame:
    """The wide leaderboard: one row per (system, condition), systems then conditions in given order.

    ``results`` is long: one row per (system, condition, group) with the columns ``system_column``,
    ``condition``, ``group_column`` and the ``metrics`` (rates in [0, 1]). Other columns (``auc``,
    ``n``...) are ignored, and so are rows whose group is ``mean`` (means are recomputed here) and rows
    of conditions not asked for (a board of a subset of conditions is legitimate). Everything else
    must match the expected protocol exactly, or :class:`LeaderboardError` lists what is missing,
    duplicated, non-finite or unexpected. ``conditions`` is a list of names (any strings, e.g. attack
    names) or a suite name of :mod:`~genguard.evaluation.conditions`.

    Columns: ``system``, ``condition``; ``<group>/<metric>`` for each group (given order) and metric;
    ``mean/<metric>`` (unweighted mean over groups); ``held_out/<metric>`` (mean over the ``held_out``
    groups - those the system was not trained on; all groups when None; NaN when empty);
    ``suite:<suite>/<metric>`` for each named suite when groups are ``<suite>/<subset>``; ``rank``
    (1 = best ``mean/<rank_by[0]>`` on ``clean`` - or on the first condition if ``clean`` is not asked
    for - shared by all conditions of a system; ties go to the next ``rank_by`` metric, then to the
    name; higher is better except for :func:`lower_is_better`). ``board.attrs["rank_by"]`` remembers
    ``rank_by`` for the readers below.
    """
    systems = _names(systems, "systems")
    groups = _names(groups, "groups")
    if isinstance(conditions, str):
        conditions = resolve_conditions(conditions)
    conditions = _names(conditions, "conditions")
    metrics = _names(metrics, "metrics")
    rank_by = _names(rank_by, "rank_by")
    held = groups if held_out is None else _names(held_out, "held_out")
    for what, names in (("systems", systems), ("groups", groups), ("conditions", conditions),
                        ("metrics", metrics), ("rank_by", rank_by)):
        if not names:
            raise ValueError(f"no {what} given")
    reserved = [g for g in groups if g in (MEAN_ROW, HELD_OUT) or g.startswith(SUITE_PREFIX)]
    if reserved:
        raise ValueError(f"group name(s) {reserved} are reserved for summary columns")
    if any("/" in m for m in metrics):
        raise ValueError(f"metric names may not contain '/': {metrics}")
    for what, names, known in (("rank_by", rank_by, metrics), ("held_out", held, groups)):
        unknown = sorted(set(names) - set(known))
        if unknown:
            # Most likely a typo; a held-out mean would silently include a train group.
            raise ValueError(f"{what} {unknown} are not among the {known}")
    if len({system_column, "condition", group_column}) != 3:
        raise ValueError("system_column, 'condition' and group_column must be three different columns")

    absent = sorted({system_column, "condition", group_column, *metrics} - set(results.columns))
    if absent:
        raise LeaderboardError(f"results lack column(s) {absent}; got {list(results.columns)}")
    frame = results.loc[:, [system_column, "condition", group_column, *metrics]].copy()
    frame.columns = ["system", "condition", "group", *metrics]
    for key in ("system", "condition", "group"):
        frame[key] = frame[key].astype(str)
    for name in metrics:
        # Non-numbers become NaN and are reported with the NaNs, instead of a TypeError mid-way.
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    frame = frame[(frame["group"] != MEAN_ROW) & frame["condition"].isin(conditions)]
    _check_complete(frame, _Protocol(systems, groups, conditions, metrics, system_column, group_column))

    # Complete and unique now, so the pivot has exactly one value per cell and no NaN.
    wide = frame.set_index(["system", "condition", "group"])[metrics].unstack("group")
    wide = wide.reindex(pd.MultiIndex.from_product([systems, conditions], names=["system", "condition"]))
    columns: dict[str, Any] = {"system": wide.index.get_level_values("system"),
                               "condition": wide.index.get_level_values("condition")}
    for group in groups:
        for name in metrics:
            columns[f"{group}/{name}"] = wide[(name, group)].to_numpy()

    def mean_over(members: list[str], name: str) -> np.ndarray:
        return wide[name][members].mean(axis=1).to_numpy() if members else np.full(len(wide), np.nan)

    for name in metrics:
        columns[f"{MEAN_ROW}/{name}"] = mean_over(groups, name)
    for name in metrics:
        columns[f"{HELD_OUT}/{name}"] = mean_over(held, name)
    if has_suites(groups):
        suites = dict.fromkeys(suite_of(g) for g in groups if suite_of(g) != NO_SUITE)
        for suite in suites:
            members = [g for g in groups if suite_of(g) == suite]
            for name in metrics:
                columns[f"{SUITE_PREFIX}{suite}/{name}"] = mean_over(members, name)
    board = pd.DataFrame(columns)
    board["rank"] = board["system"].map(_rank(board, conditions, rank_by)).astype("int64")
    board.attrs["rank_by"] = list(rank_by)
    return board


# --------------------------------------------------------------------------------------------------
# reading a built board back
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    groups: list[str]
    metrics: list[str]
    suites: list[str]
    conditions: list[str]
    rank_by: list[str]


def _layout(board: pd.DataFrame, rank_by: Sequence[str] | None = None) -> _Layout:
    missing = sorted({"system", "condition", "rank"} - set(board.columns))
    if missing:
        raise ValueError(f"not a leaderboard from build_leaderboard: lacks column(s) {missing}")
    metrics = [c.split("/", 1)[1] for c in board.columns if c.startswith(f"{MEAN_ROW}/")]
    if not metrics:
        raise ValueError("not a leaderboard from build_leaderboard: no mean/<metric> columns")
    # rsplit: the metric is the last path element, so a group name may itself contain "/" (suites).
    groups = [c.rsplit("/", 1)[0] for c in board.columns if c.endswith(f"/{metrics[0]}")]
    groups = [g for g in groups if g not in (MEAN_ROW, HELD_OUT) and not g.startswith(SUITE_PREFIX)]
    suites = [c.rsplit("/", 1)[0][len(SUITE_PREFIX):] for c in board.columns
              if c.startswith(SUITE_PREFIX) and c.endswith(f"/{metrics[0]}")]
    if rank_by is None:
        # attrs survive pandas operations but not a CSV round trip: fall back to the defaults present.
        rank_by = board.attrs.get("rank_by") or [m for m in DEFAULT_RANK_BY if m in metrics] or metrics[:1]
    unknown = sorted(set(rank_by) - set(metrics))
    if unknown:
        raise ValueError(f"rank_by {unknown} are not among the board's metrics {metrics}")
    conditions = list(dict.fromkeys(board["condition"].astype(str)))
    return _Layout(groups, metrics, suites, conditions, list(rank_by))


def _ranked_systems(board: pd.DataFrame) -> list[str]:
    first = board.drop_duplicates("system")
    return [str(s) for s in first.sort_values(["rank", "system"], kind="stable")["system"]]


def _row(board: pd.DataFrame, system: str, condition: str) -> pd.Series:
    return board[(board["system"] == system) & (board["condition"] == condition)].iloc[0]


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


def leaderboard_markdown(
    board: pd.DataFrame,
    *,
    title: str = "Leaderboard",
    train_groups: Sequence[str] = (),
    group_label: str = "group",
    system_label: str = "system",
) -> str:
    """A Markdown report of a board from :func:`build_leaderboard`, values in percent.

    Sections: the headline table on the rank condition (systems by rank; per group the first metric -
    written ``ACC (R/F)`` when the board also has ``r_acc``/``f_acc`` - with ``train_groups`` marked
    ``(train)``; then the mean of each rank metric, the held-out mean and the per-suite means of the
    first metric), a robustness table (mean of the rank metrics per condition) and, per other
    condition, the first metric per group.
    """
    layout = _layout(board)
    groups, metrics, rank_by = layout.groups, layout.metrics, layout.rank_by
    primary = metrics[0]
    train = [str(g) for g in train_groups]
    unknown_train = sorted(set(train) - set(groups))
    if unknown_train:
        raise ValueError(f"train_groups {unknown_train} are not among the board's {group_label}s {groups}")
    headline = rank_condition(layout.conditions)
    systems = _ranked_systems(board)
    with_rates = primary == "acc" and {"r_acc", "f_acc"} <= set(metrics)
    label = primary.upper()

    def marked(group: str) -> str:
        return f"{group} (train)" if group in train else group

    lines = [f"# {title}", ""]
    if train:
        lines.append("Trained on: " + ", ".join(f"`{g}`" for g in train)
                     + f"; tested on all {len(groups)} {group_label}s. Means are unweighted over "
                     f"{group_label}s; held-out = mean over the {group_label}s not trained on.")
    else:
        lines.append(f"Train {group_label}s: not given. Means are unweighted over {group_label}s.")
    rank_text = f"{headline} mean {rank_by[0].upper()}"
    if len(rank_by) > 1:
        rank_text += " (ties: " + ", then ".join(f"mean {m.upper()}" for m in rank_by[1:]) + ")"
    lines += ["", f"Values in percent; rank by {rank_text}.", "", f"## {headline.capitalize()}", ""]

    header = ["rank", system_label]
    header += [f"{marked(g)} {label} (R/F)" if with_rates else f"{marked(g)} {label}" for g in groups]
    header += [f"mean {m.upper()}" for m in rank_by] + [f"held-out {label}"]
    header += [f"{suite} {label}" for suite in layout.suites]
    rows = []
    for system in systems:
        row = _row(board, system, headline)
        cells = [str(int(row["rank"])), system]
        for g in groups:
            rates = f" ({_pct(row[f'{g}/r_acc'])}/{_pct(row[f'{g}/f_acc'])})" if with_rates else ""
            cells.append(_pct(row[f"{g}/{primary}"]) + rates)
        cells += [_pct(row[f"{MEAN_ROW}/{m}"]) for m in rank_by] + [_pct(row[f"{HELD_OUT}/{primary}"])]
        cells += [_pct(row[f"{SUITE_PREFIX}{suite}/{primary}"]) for suite in layout.suites]
        rows.append(cells)
    lines += _table(header, rows, ["---:", ":---"] + ["---:"] * (len(header) - 2))

    shown = " / ".join(f"mean {m.upper()}" for m in rank_by)
    lines += ["", f"## Robustness: {shown} per condition", ""]
    rows = [[system] + [" / ".join(_pct(_row(board, system, c)[f"{MEAN_ROW}/{m}"]) for m in rank_by)
                        for c in layout.conditions]
            for system in systems]
    lines += _table([system_label, *layout.conditions], rows, [":---"] + ["---:"] * len(layout.conditions))

    for condition in layout.conditions:
        if condition == headline:
            continue  # already in full above
        lines += ["", f"## {label} per {group_label} under `{condition}`", ""]
        header = [system_label, *(marked(g) for g in groups), "mean"]
        rows = [[system] + [_pct(_row(board, system, condition)[f"{g}/{primary}"]) for g in groups]
                + [_pct(_row(board, system, condition)[f"{MEAN_ROW}/{primary}"])]
                for system in systems]
        lines += _table(header, rows, [":---"] + ["---:"] * (len(header) - 1))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# heatmap
# --------------------------------------------------------------------------------------------------


def leaderboard_heatmap_figure(board: pd.DataFrame, metric: str = "acc",
                               group_label: str = "group") -> Figure:
    """Heatmap of ``metric`` per (system · condition) row and group column, plus ``mean``.

    Colours span 0..1 on viridis (perceptually uniform, readable in greyscale) so boards of different
    runs are visually comparable; every cell carries its value in percent. The figure grows with the
    number of rows and columns so the annotations stay legible.
    """
    layout = _layout(board)
    if metric not in layout.metrics:
        raise ValueError(f"metric must be one of the board's metrics {layout.metrics}, got {metric!r}")
    columns = [*layout.groups, MEAN_ROW]
    values = board[[f"{g}/{metric}" for g in columns]].to_numpy(dtype=float)
    labels = [f"{s} · {c}" for s, c in zip(board["system"].astype(str), board["condition"].astype(str),
                                           strict=True)]
    n_rows, n_cols = values.shape
    label_width = 0.075 * max(len(label) for label in labels)  # inches of tick labels on the left
    figure = new_figure(max(5.0, 2.2 + label_width + 0.85 * n_cols), max(3.0, 1.4 + 0.32 * n_rows))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            value = values[i, j]
            if math.isfinite(value):
                # viridis is dark at the low end and light at the top: switch text colour for contrast.
                axes.text(j, i, f"{100.0 * value:.1f}", ha="center", va="center", fontsize=8,
                          color="black" if value > 0.5 else "white",
                          fontweight="bold" if columns[j] == MEAN_ROW else "normal")
    # Lines between systems and before the mean column: the blocks are what one compares.
    system_column = board["system"].astype(str).to_numpy()
    for i in range(1, n_rows):
        if system_column[i] != system_column[i - 1]:
            axes.axhline(i - 0.5, color="white", linewidth=2.0)
    axes.axvline(n_cols - 1.5, color="white", linewidth=2.0)
    axes.set_xticks(np.arange(n_cols), labels=columns, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(np.arange(n_rows), labels=labels, fontsize=8)
    axes.set(title=f"{metric.upper()} per {group_label} (%)", xlabel=f"test {group_label}")
    figure.colorbar(image, ax=axes, shrink=0.9, label=metric)
    return figure


def leaderboard_heatmap_png(board: pd.DataFrame, metric: str = "acc", group_label: str = "group") -> bytes:
    return figure_png(leaderboard_heatmap_figure(board, metric, group_label))


# --------------------------------------------------------------------------------------------------
# DVC metrics and plots
# --------------------------------------------------------------------------------------------------


def leaderboard_metrics(board: pd.DataFrame, rank_by: Sequence[str] | None = None) -> dict[str, Any]:
    """The few numbers ``dvc metrics show`` should print: per system ``rank``, ``mean_<m>`` and
    ``held_out_<m>`` for each rank metric ``m``, on the rank condition (``clean``, else the first).

    E.g. ``{"beta": {"rank": 1, "mean_acc": .., "mean_ap": .., "held_out_acc": .., "held_out_ap": ..}}``;
    plain Python numbers, NaN as None (strict JSON). The full board belongs in the CSV and plots.
    """
    layout = _layout(board, rank_by)
    headline = rank_condition(layout.conditions)
    summary: dict[str, Any] = {}
    for system in _ranked_systems(board):
        row = _row(board, system, headline)
        entry: dict[str, Any] = {"rank": int(row["rank"])}
        entry.update({f"mean_{m}": _float(row[f"{MEAN_ROW}/{m}"]) for m in layout.rank_by})
        entry.update({f"held_out_{m}": _float(row[f"{HELD_OUT}/{m}"]) for m in layout.rank_by})
        summary[system] = entry
    return nan_to_none(summary)


def leaderboard_plot_records(board: pd.DataFrame) -> list[dict[str, Any]]:
    """Long records for ``dvc plots``: one ``{system, condition, group, <metric>...}`` per cell, the
    ``mean`` pseudo-group included, in board order; NaN as None."""
    layout = _layout(board)
    records = [
        {"system": str(row["system"]), "condition": str(row["condition"]), "group": group,
         **{m: _float(row[f"{group}/{m}"]) for m in layout.metrics}}
        for row in board.to_dict(orient="records")
        for group in [*layout.groups, MEAN_ROW]
    ]
    return nan_to_none(records)

