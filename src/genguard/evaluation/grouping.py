"""Metrics per group, unweighted means over groups and suites, and score aggregation to parent units.

Every family reports the same shape of result: metrics per *group* of test items (per generator,
per forgery kind x test dataset, per concept, ...), followed by the **unweighted mean over groups** -
the way papers report mAcc/mAP, so a group with many test items counts as much as a small one - next
to the pooled metrics over all items.

Conventions (see :mod:`genguard.evaluation.metrics`): ``label`` 1 = fake is the positive class and
``score`` = P(fake), called fake iff ``score > threshold``; multi-class frames carry the class index
in ``label`` and one probability column per class (``prob_0`` .. ``prob_{C-1}``).

Suites: a group named ``<suite>/<subset>`` (``UniversalFakeDetect/dalle``) belongs to the suite before
the first separator. Papers average per suite, so :func:`suite_means` averages each suite's subsets
unweighted. A group without a separator belongs to the suite ``""`` ("no suite"): :func:`suite_means`
reports it so that every group is accounted for, but :func:`summarise` (and the leaderboard) report
only named suites, because a mean over unrelated stand-alone test sets is a number nobody publishes -
those groups are reported one by one anyway.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from genguard.evaluation.metrics import (
    MEAN_ROW,
    binary_metrics,
    metric_names,
    multiclass_metrics,
)
from genguard.io.jsonsafe import plain

AGGREGATIONS: tuple[str, ...] = ("mean", "median", "max")
NO_SUITE = ""
SUITE_SEPARATOR = "/"
_PROB_COLUMN = re.compile(r"prob_(\d+)")
_MAX_LISTED = 5


def _as_columns(value: str | Sequence[str], what: str) -> list[str]:
    columns = [value] if isinstance(value, str) else [str(column) for column in value]
    if not columns:
        raise ValueError(f"{what} names no column")
    if len(set(columns)) != len(columns):
        raise ValueError(f"{what} lists a column twice: {columns}")
    return columns


def _require(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; has {list(frame.columns)}")


def _refuse_missing_keys(frame: pd.DataFrame, keys: list[str]) -> None:
    # groupby drops rows whose key is NaN: they would vanish from every metric without a word.
    empty = [key for key in keys if frame[key].isna().any()]
    if empty:
        raise ValueError(f"key column(s) {empty} contain missing values; every row needs a group")


def _unit_names(index: pd.Index, limit: int = _MAX_LISTED) -> str:
    shown = [str(value) for value in index[:limit]]
    more = f" and {len(index) - limit} more" if len(index) > limit else ""
    return ", ".join(shown) + more


def unweighted_mean(values: pd.Series | Sequence[float]) -> float:
    """Mean over the groups where the value is defined (NaN skipped); NaN when none is.

    One single-class subset (AP undefined) must not turn the whole suite's mAP into NaN. All-NaN stays
    NaN without numpy's RuntimeWarning.
    """
    finite = pd.Series(values, dtype="float64").dropna()
    return float(finite.mean()) if len(finite) else float("nan")


# ------------------------------------------------------------------------------------ aggregation


def aggregate_scores(
    frame: pd.DataFrame,
    unit: str | Sequence[str],
    *,
    score: str | Sequence[str] = "score",
    how: str = "mean",
) -> pd.DataFrame:
    """Collapse item rows to one row per parent ``unit`` (frames -> videos) before any metric.

    * ``unit``: the column(s) naming the parent (``"video"``, or ``["dataset", "video"]``).
    * ``label`` must be constant within each unit (a video is real or fake, not both); otherwise a
      ValueError names the first offending units.
    * ``score``: the score column (binary P(fake)), or a list of probability columns for multi-class
      frames (``prob_0`` .. ``prob_{C-1}``), aggregated column by column with ``how`` ("mean",
      "median" or "max"). Mean probability vectors still sum to 1; for "median"/"max" each unit's
      vector is renormalised so it stays a probability vector the metrics accept.
    * Other columns constant within every unit (``generator``, ``dataset``, ``method``) are kept; the
      rest (frame index, path) are dropped, since no single value describes the unit.
    * ``n_items``: how many rows each unit had (summed, when the frame was already aggregated once).

    Output rows are sorted by unit; columns: unit(s), ``label``, kept columns, score(s), ``n_items``.
    """
    units = _as_columns(unit, "unit")
    scores = _as_columns(score, "score")
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
    _require(frame, [*units, "label", *scores])
    overlap = sorted(set(units) & {"label", *scores})
    if overlap:
        raise ValueError(f"column(s) {overlap} cannot be both the unit and the label/score")
    _refuse_missing_keys(frame, units)

    grouped = frame.groupby(units, sort=True, dropna=False)
    mixed = grouped["label"].nunique(dropna=False)
    mixed = mixed[mixed > 1]
    if len(mixed):
        raise ValueError(
            f"label is not constant within {len(mixed)} unit(s) of {units}: {_unit_names(mixed.index)}; "
            "a unit (video, clip) must be all real or all fake - check the unit column"
        )
    others = [c for c in frame.columns if c not in {*units, "label", *scores, "n_items"}]
    constant = [c for c in others if (grouped[c].nunique(dropna=False) <= 1).all()]

    out = grouped[["label", *constant]].first()
    aggregated = grouped[scores].agg(how)
    if len(scores) > 1 and how != "mean":
        aggregated = aggregated.div(aggregated.sum(axis=1), axis=0)
    out = out.join(aggregated)
    out["n_items"] = grouped["n_items"].sum() if "n_items" in frame.columns else grouped.size()
    out = out.reset_index()
    out["n_items"] = out["n_items"].astype("int64")
    return out[[*units, "label", *constant, *scores, "n_items"]]


# ------------------------------------------------------------------------------------ group tables


def infer_prob_columns(frame: pd.DataFrame) -> list[str]:
    """The ``prob_0`` .. ``prob_{C-1}`` columns of a multi-class frame, in class order."""
    indices = sorted(int(m.group(1)) for c in frame.columns if (m := _PROB_COLUMN.fullmatch(str(c))))
    if len(indices) < 2 or indices != list(range(len(indices))):
        raise ValueError(
            f"multi-class frames need probability columns prob_0 .. prob_<C-1> (C >= 2), found "
            f"{[f'prob_{i}' for i in indices]}; or pass prob_columns"
        )
    return [f"prob_{index}" for index in indices]


def _metrics_of(part: pd.DataFrame, task: str, threshold: float, prob_columns: list[str]) -> dict[str, Any]:
    if task == "binary":
        return binary_metrics(part["label"].to_numpy(), part["score"].to_numpy(), threshold)
    return multiclass_metrics(part["label"].to_numpy(), part[prob_columns].to_numpy())


def _score_columns(frame: pd.DataFrame, task: str, prob_columns: Sequence[str] | None) -> list[str]:
    metric_names(task)  # validates task
    if task == "binary":
        return ["score"]
    return list(prob_columns) if prob_columns is not None else infer_prob_columns(frame)


def group_table(
    frame: pd.DataFrame,
    by: str | Sequence[str],
    *,
    task: str = "binary",
    threshold: float = 0.5,
    prob_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per group (sorted by key) plus a final summary row, whose key column(s) read ``mean``.

    ``frame`` has the key column(s) ``by``, ``label`` and either ``score`` (``task="binary"``,
    P(fake)) or the class-probability columns (``task="multiclass"``; ``prob_columns`` or the
    ``prob_<i>`` columns). Columns: the key column(s) (as strings), the task's rates
    (:data:`~genguard.evaluation.metrics.METRIC_NAMES` or ``MULTICLASS_METRIC_NAMES``), its counts.

    The summary row holds the **unweighted mean over groups** of each rate, ignoring groups where it
    is NaN (a single-class subset has no AP), and the *summed* counts. A group literally named
    ``mean`` is refused: it would be indistinguishable from the summary row.
    """
    keys = _as_columns(by, "by")
    rates, counts = metric_names(task)
    score_columns = _score_columns(frame, task, prob_columns)
    _require(frame, [*keys, "label", *score_columns])
    _refuse_missing_keys(frame, keys)
    key_frame = frame[keys].astype(str)
    reserved = [key for key in keys if (key_frame[key] == MEAN_ROW).any()]
    if reserved:
        raise ValueError(f"a group in column(s) {reserved} is called {MEAN_ROW!r}: "
                         "that name is the summary row")

    rows: list[dict[str, Any]] = []
    for values, part in frame.groupby([key_frame[key] for key in keys], sort=True):
        rows.append({**dict(zip(keys, values, strict=True)),
                     **_metrics_of(part, task, threshold, score_columns)})
    columns = [*keys, *rates, *counts]
    table = pd.DataFrame(rows, columns=columns)
    summary: dict[str, Any] = dict.fromkeys(keys, MEAN_ROW)
    summary.update({name: unweighted_mean(table[name]) for name in rates})
    summary.update({name: int(table[name].sum()) for name in counts})
    table = pd.concat([table, pd.DataFrame([summary], columns=columns)], ignore_index=True)
    return table.astype({**dict.fromkeys(rates, "float64"), **dict.fromkeys(counts, "int64")})


def table_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as a list of plain-Python dicts (JSON-friendly; NaN stays NaN)."""
    return [{key: plain(value) for key, value in row.items()} for row in table.to_dict(orient="records")]


def pair_with_reference(frame: pd.DataFrame, group_column: str, reference: str, *, within: str | None = None,
                        separator: str = SUITE_SEPARATOR, output: str = "group") -> pd.DataFrame:
    """Each group of positives against the shared reference rows, as its own group.

    Face-forgery sets keep one pool of pristine videos per dataset (``forgery == "real"``) and one group
    per manipulation: a manipulation's AUC compares its fakes with those reals. The result repeats the
    reference rows once per other group: column ``output`` = ``<within value>/<group>`` (or ``<group>``
    without ``within``), so :func:`group_table` then gives per-manipulation metrics and
    :func:`suite_means` per-dataset means. A group of ``within`` with no reference rows is an error.
    """
    _require(frame, [group_column, *([within] if within else [])])
    parts = []
    scopes = frame.groupby(frame[within].astype(str), sort=True) if within else [(None, frame)]
    for scope, rows in scopes:
        groups = rows[group_column].astype(str)
        references = rows[groups == reference]
        if references.empty:
            raise ValueError(f"no {reference!r} rows{f' in {within} {scope!r}' if within else ''}: "
                             f"groups {sorted(set(groups))} have nothing to be compared with")
        for name in sorted(set(groups) - {reference}):
            label = f"{scope}{separator}{name}" if within else name
            parts.append(pd.concat([rows[groups == name], references]).assign(**{output: label}))
    if not parts:
        raise ValueError(f"only {reference!r} rows: there is no group to compare with them")
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------------ suites


def suite_of(group: str, separator: str = SUITE_SEPARATOR) -> str:
    """``"UniversalFakeDetect/dalle"`` -> ``"UniversalFakeDetect"``; no separator -> ``""`` (no suite)."""
    text = str(group)
    return text.split(separator, 1)[0] if separator in text else NO_SUITE


def has_suites(groups: Sequence[str], separator: str = SUITE_SEPARATOR) -> bool:
    return any(suite_of(group, separator) != NO_SUITE for group in groups)


def suite_means(table: pd.DataFrame, group_column: str, separator: str = SUITE_SEPARATOR) -> pd.DataFrame:
    """Per-suite unweighted means over the suite's subsets, from a :func:`group_table`.

    One row per suite in order of first appearance (the suite ``""`` collects the groups without a
    separator); columns ``suite``, ``n_groups``, the rates (NaN-ignoring unweighted means over the
    suite's groups) and the counts (summed). The table's ``mean`` row is ignored; other key columns
    and non-numeric columns are dropped.
    """
    _require(table, [group_column])
    groups = table[table[group_column].astype(str) != MEAN_ROW]
    suites = groups[group_column].astype(str).map(lambda group: suite_of(group, separator))
    count_names = {"n", "n_real", "n_fake", "n_items"}
    numeric = [c for c in groups.columns if c != group_column and pd.api.types.is_numeric_dtype(groups[c])]
    rows = []
    for suite in dict.fromkeys(suites):
        members = groups[suites == suite]
        row: dict[str, Any] = {"suite": suite, "n_groups": len(members)}
        for column in numeric:
            values = members[column]
            row[column] = int(values.sum()) if column in count_names else unweighted_mean(values)
        rows.append(row)
    return pd.DataFrame(rows, columns=["suite", "n_groups", *numeric])


# ------------------------------------------------------------------------------------ summary


def summarise(
    frame: pd.DataFrame,
    by: str | Sequence[str],
    *,
    task: str = "binary",
    threshold: float = 0.5,
    prob_columns: Sequence[str] | None = None,
    separator: str = SUITE_SEPARATOR,
) -> dict[str, Any]:
    """Everything one evaluation reports, as a JSON-friendly dict.

    Keys: ``task``; the pooled metrics over all rows (:func:`~genguard.evaluation.metrics.binary_metrics`
    or ``multiclass_metrics``); ``mean_<rate>`` - the unweighted mean over groups (``mean_acc`` and
    ``mean_ap`` are the papers' mAcc/mAP); ``suites`` - ``{suite: {n_groups, mean_<rate>...}}`` for the
    named suites, present only when ``by`` is one column and some group is ``<suite>/<subset>``;
    ``n_groups``; ``threshold`` (binary only); ``per_group`` - the :func:`group_table` as records,
    ``mean`` row last.

    Rates are Python floats and may be NaN where undefined; ``json.dumps`` accepts that by default,
    strict-JSON writers map NaN to null with :func:`genguard.io.jsonsafe.nan_to_none`.
    """
    rates, _ = metric_names(task)
    table = group_table(frame, by, task=task, threshold=threshold, prob_columns=prob_columns)
    score_columns = _score_columns(frame, task, prob_columns)
    summary: dict[str, Any] = {"task": task, **_metrics_of(frame, task, threshold, score_columns)}
    mean_row = table.iloc[-1]
    summary.update({f"mean_{name}": float(mean_row[name]) for name in rates})
    keys = _as_columns(by, "by")
    if len(keys) == 1 and has_suites(table[keys[0]].iloc[:-1].tolist(), separator):
        per_suite = suite_means(table, keys[0], separator)
        summary["suites"] = {
            str(row["suite"]): {"n_groups": int(row["n_groups"]),
                                **{f"mean_{name}": float(row[name]) for name in rates}}
            for _, row in per_suite.iterrows()
            if row["suite"] != NO_SUITE
        }
    summary["n_groups"] = int(len(table) - 1)
    if task == "binary":
        summary["threshold"] = float(threshold)
    summary["per_group"] = table_records(table)
    return {key: plain(value) for key, value in summary.items()}
