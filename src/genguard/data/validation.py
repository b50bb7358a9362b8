"""Validate a manifest before training: one verdict, one JSON report, an error that names the files.

The checks come from the family's :class:`~genguard.data.manifest.ManifestSchema` (names as in the
report):

    columns               every schema column is present (precondition: nothing else runs without it)
    not_empty             at least one row
    paths_exist           every ``path`` exists (file-backed schemas; relative paths: relative to the
                          working directory, which is the project root under Kedro)
    unique_paths          no path listed twice
    label_values          label is one of the schema's labels (binary: 0 or 1), never null
    split_values          split is train, val or test, never null
    <group>_present       the schema's group column (AIGI: generator) is set (null, "", "nan", "None" and
                          "<NA>" count as missing: the last three are what ``astype(str)`` makes of a null)
    image_size            width and height are numbers within [min_side, max_side] (image schemas)
    required_splits       every split in ``require_splits`` has rows
    classes_in_train      train holds every class; only when "train" is required, so a test-only
                          manifest (``require_splits=("test",)``) can be validated for evaluation
    no_split_leakage:<c>  for each of the schema's group columns (a file hash, a source photo, a video,
                          an identity): no value in two splits, i.e. nothing trained on is tested on
    bad_files             the ``BadFile``s from reading the source (see ``on_bad_file``)

With ``expectations=True`` the single-table checks (not_empty .. classes_in_train, except
paths_exist) run as one Great Expectations 1.x suite in an ephemeral context; paths_exist,
no_split_leakage and bad_files run in pandas because GX has neither a file-system nor a cross-split
uniqueness expectation. ``expectations=False`` runs every check in pandas (fast: GX costs seconds to
import); both engines give the same verdicts and offending rows (tested).

Decisions: the report is written before anything is raised, so a failed run leaves the evidence; the
bad-file list is never truncated (the user must see every file to fix or exclude it), offending rows
of the other checks are capped (50 in the report, 20 in the error message); the returned manifest is
passed through ``normalise_manifest`` (stable column order, dtypes and row order).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from genguard.data.manifest import SPLITS, BadFile, DataValidationError, ManifestSchema, normalise_manifest
from genguard.io.atomic import write_json_atomic

log = logging.getLogger(__name__)

ON_BAD_FILE_CHOICES: tuple[str, ...] = ("fail", "exclude")
REPORT_ROW_LIMIT = 50
MESSAGE_ROW_LIMIT = 20
# What ``astype(str)`` makes of missing values, plus blanks: a generator "nan" is a lost generator.
_MISSING_TEXT_REGEX = r"^\s*(?:nan|None|<NA>)?\s*$"


@dataclass
class _Settings:
    schema: ManifestSchema
    min_side: int
    max_side: int
    require_splits: tuple[str, ...]


@dataclass
class _Outcome:
    success: bool
    offending: list[dict[str, Any]] = field(default_factory=list)
    unexpected_count: int = 0
    engine: str = "pandas"


@dataclass(frozen=True)
class _Check:
    name: str
    description: str
    fix: str
    columns: tuple[str, ...]  # what an offending row shows
    pandas: Callable[[pd.DataFrame, _Settings], _Outcome]
    # Builds the GX expectations for this check; None = pandas only (no GX equivalent).
    gx: Callable[[Any, _Settings], list] | None = None


# --------------------------------------------------------------------------------------------------
# Pandas implementations (the fast path, and the only path for cross-row checks)


def _rows(frame: pd.DataFrame, mask: pd.Series, columns: Sequence[str]) -> _Outcome:
    offending = frame.loc[mask, [c for c in columns if c in frame.columns]]
    return _Outcome(success=not bool(mask.any()), offending=_records(offending),
                    unexpected_count=int(mask.sum()))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _plain(value: Any) -> Any:
    """JSON-safe scalar: numpy → Python, NaN/NA → None."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


def _label_values(s: _Settings, frame: pd.DataFrame | None = None) -> list[int] | None:
    return list(s.schema.label_values) if s.schema.label_values is not None else None


def _pd_not_empty(df: pd.DataFrame, s: _Settings) -> _Outcome:
    return _Outcome(success=len(df) > 0, offending=[] if len(df) else [{"rows": 0}],
                    unexpected_count=0 if len(df) else 1)


def _pd_paths_exist(df: pd.DataFrame, s: _Settings) -> _Outcome:
    exists = df["path"].map(lambda p: isinstance(p, str) and os.path.exists(p))
    return _rows(df, ~exists.astype(bool), ("path", "split"))


def _pd_unique_paths(df: pd.DataFrame, s: _Settings) -> _Outcome:
    return _rows(df, df["path"].isna() | df["path"].duplicated(keep=False), ("path", "split"))


def _pd_label_values(df: pd.DataFrame, s: _Settings) -> _Outcome:
    allowed = _label_values(s)
    labels = pd.to_numeric(df["label"], errors="coerce")
    if allowed is None:  # any class index: a non-negative integer
        bad = labels.isna() | (labels < 0) | (labels != labels.round())
    else:
        bad = ~df["label"].isin(allowed) | df["label"].isna()
    return _rows(df, bad, ("path", "label"))


def _pd_split_values(df: pd.DataFrame, s: _Settings) -> _Outcome:
    return _rows(df, ~df["split"].isin(SPLITS) | df["split"].isna(), ("path", "split"))


def _pd_group_present(df: pd.DataFrame, s: _Settings) -> _Outcome:
    column = s.schema.group_column
    missing = df[column].isna() | df[column].astype(str).str.fullmatch(_MISSING_TEXT_REGEX)
    return _rows(df, missing, ("path", column))


def _pd_image_size(df: pd.DataFrame, s: _Settings) -> _Outcome:
    bad = pd.Series(False, index=df.index)
    for column in s.schema.size_columns or ():
        values = pd.to_numeric(df[column], errors="coerce")
        bad |= values.isna() | ~values.between(s.min_side, s.max_side)
    return _rows(df, bad, ("path", *(s.schema.size_columns or ())))


def _pd_required_splits(df: pd.DataFrame, s: _Settings) -> _Outcome:
    present = set(df["split"].dropna())
    missing = [split for split in s.require_splits if split not in present]
    return _Outcome(success=not missing, offending=[{"split": m} for m in missing],
                    unexpected_count=len(missing))


def _pd_classes_in_train(df: pd.DataFrame, s: _Settings) -> _Outcome:
    present = set(df.loc[df["split"] == "train", "label"].dropna())
    missing = [label for label in _label_values(s) if label not in present]
    return _Outcome(success=not missing, offending=[{"split": "train", "label": m} for m in missing],
                    unexpected_count=len(missing))


def _pd_label_follows_group(group: str, negative: str) -> Callable[[pd.DataFrame, _Settings], _Outcome]:
    def check(df: pd.DataFrame, s: _Settings) -> _Outcome:
        expected = (df[group].astype(str) != negative).astype("int64")
        mask = df["label"].notna() & (df["label"] != expected)
        shown = [c for c in ("path", group, "label") if c in df.columns]
        return _Outcome(success=not mask.any(), offending=_records(df.loc[mask, shown]),
                        unexpected_count=int(mask.sum()))

    return check


def _pd_no_split_leakage(column: str) -> Callable[[pd.DataFrame, _Settings], _Outcome]:
    def check(df: pd.DataFrame, s: _Settings) -> _Outcome:
        if column not in df.columns:
            return _Outcome(success=True)
        values = df[column]
        keyed = df[values.notna() & ~values.astype(str).str.fullmatch(_MISSING_TEXT_REGEX)]
        splits_per_value = keyed.groupby(column)["split"].nunique()
        leaked = set(splits_per_value[splits_per_value > 1].index)
        mask = df[column].isin(leaked)
        # Sorted by the group so the members of one group sit next to each other in the report.
        shown = [c for c in (column, "split", "path") if c in df.columns]
        offending = df.loc[mask, shown].sort_values(shown)
        return _Outcome(success=not leaked, offending=_records(offending), unexpected_count=int(mask.sum()))

    return check


# --------------------------------------------------------------------------------------------------
# Great Expectations builders (``gxe`` is ``great_expectations.expectations``, imported lazily)


def _gx_not_empty(gxe, s):
    return [gxe.ExpectTableRowCountToBeBetween(min_value=1)]


def _gx_unique_paths(gxe, s):
    return [gxe.ExpectColumnValuesToNotBeNull(column="path"), gxe.ExpectColumnValuesToBeUnique(column="path")]


def _gx_label_values(gxe, s):
    # Column-map expectations skip nulls, so null labels need their own expectation.
    allowed = _label_values(s)
    if allowed is None:
        return [gxe.ExpectColumnValuesToNotBeNull(column="label"),
                gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0)]
    return [gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=allowed)]


def _gx_split_values(gxe, s):
    return [gxe.ExpectColumnValuesToNotBeNull(column="split"),
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))]


def _gx_group_present(gxe, s):
    column = s.schema.group_column
    return [gxe.ExpectColumnValuesToNotBeNull(column=column),
            gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=_MISSING_TEXT_REGEX)]


def _gx_image_size(gxe, s):
    out = []
    for column in s.schema.size_columns or ():
        out += [gxe.ExpectColumnValuesToNotBeNull(column=column),
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=s.min_side, max_value=s.max_side)]
    return out


def _gx_required_splits(gxe, s):
    return [gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(s.require_splits))]


def _gx_classes_in_train(gxe, s):
    # Condition objects, not the pandas query string that GX deprecated in 1.9.
    from great_expectations.expectations.row_conditions import Column

    return [gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=_label_values(s),
                                                       row_condition=Column("split") == "train")]


# --------------------------------------------------------------------------------------------------
# The checks of a schema, in report order


def _checks_for(settings: _Settings) -> list[_Check]:
    schema = settings.schema
    group = schema.group_column
    checks = [_Check("not_empty", "the manifest has at least one row",
                     "the data source held no usable example; check data.source= and the bad-file list",
                     ("rows",), _pd_not_empty, _gx_not_empty)]
    if schema.file_column:
        checks += [
            _Check("paths_exist", "every path exists on disk",
                   "restore the missing files (`dvc pull`?) or rebuild the manifest from the folder",
                   ("path", "split"), _pd_paths_exist),
            _Check("unique_paths", "no path is listed twice (or missing)",
                   "rebuild the manifest; a file must appear once", ("path", "split"), _pd_unique_paths,
                   _gx_unique_paths)]
    allowed = "a non-negative class index" if schema.label_values is None else f"one of {list(schema.label_values)}"
    checks += [
        _Check("label_values", f"label is {allowed}",
               "labels come from the class folder names (e.g. 0_real/1_fake, nature/ai, real/fake) or the "
               "source's label list; fix the folder or the manifest rows", ("path", "label"), _pd_label_values,
               _gx_label_values),
        _Check("split_values", f"split is one of {list(SPLITS)}",
               "fix the split column (split folders must be named train, val or test)",
               ("path", "split"), _pd_split_values, _gx_split_values),
        _Check(f"{group}_present", f"every row names its {group}",
               f"set the {group} column (it comes from the data source's folder or list)",
               ("path", group), _pd_group_present, _gx_group_present)]
    if schema.size_columns:
        checks.append(_Check("image_size", "width and height lie within [min_side, max_side]",
                             "resize or remove these images, or change the size limits (min_side / max_side)",
                             ("path", *schema.size_columns), _pd_image_size, _gx_image_size))
    checks.append(_Check("required_splits", "every required split has rows",
                         "add the missing split folder, give that split a share in data.split_fractions, or "
                         "change require_splits", ("split",), _pd_required_splits, _gx_required_splits))
    if schema.label_values is not None and "train" in settings.require_splits:
        checks.append(_Check("classes_in_train", f"train holds every class {list(schema.label_values)}",
                             "add the missing class (e.g. 0_real/1_fake, nature/ai, real/fake) to the training "
                             "data", ("split", "label"), _pd_classes_in_train, _gx_classes_in_train))
    if schema.negative_group is not None:
        negative = schema.negative_group
        checks.append(_Check(f"label_follows_{group}", f"label is 0 where {group} is {negative!r} and 1 elsewhere",
                             f"a {negative} row must be label 0 and every other {group} label 1: fix the source's "
                             f"labels or its {group} column", ("path", group, "label"),
                             _pd_label_follows_group(group, negative)))
    for column in schema.leakage_groups:
        what = "image (sha256)" if column == "sha256" else f"{column} group"
        checks.append(_Check(f"no_split_leakage:{column}", f"no {what} appears in two splits",
                             f"keep every row of one {column} in one split (delete duplicate copies, or move "
                             "them together)", (column, "split", "path"), _pd_no_split_leakage(column)))
    return checks


def _run_pandas(frame: pd.DataFrame, checks: list[_Check], settings: _Settings) -> dict[str, _Outcome]:
    return {check.name: check.pandas(frame, settings) for check in checks}


def _gx_errors(exception_info: Any) -> list[str]:
    """Exception messages from a GX result; GX nests them per metric in 1.x."""
    if not exception_info:
        return []
    if isinstance(exception_info, dict) and exception_info.get("raised_exception"):
        return [str(exception_info.get("exception_message"))]
    if isinstance(exception_info, dict):
        return [str(v.get("exception_message")) for v in exception_info.values()
                if isinstance(v, dict) and v.get("raised_exception")]
    return []


def _run_great_expectations(frame: pd.DataFrame, checks: list[_Check],
                            settings: _Settings) -> dict[str, _Outcome]:
    # GX phones home by default; the research machines are offline and runs must not wait on it.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx  # seconds to import; only paid when asked for
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no bars in Kedro's logs
    batch_definition = (context.data_sources.add_pandas("genguard")
                        .add_dataframe_asset("manifest").add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(gx.ExpectationSuite(name="genguard_manifest"))
    gx_checks = [c for c in checks if c.gx is not None]
    for check in gx_checks:
        for expectation in check.gx(gxe, settings):
            expectation.meta = {**(expectation.meta or {}), "check": check.name}
            suite.add_expectation(expectation)
    # A unique index so GX's unexpected_index_list points at exactly one row each.
    data = frame.reset_index(drop=True)
    result = batch_definition.get_batch(batch_parameters={"dataframe": data}).validate(
        suite, result_format={"result_format": "COMPLETE"})

    verdicts: dict[str, bool] = {c.name: True for c in gx_checks}
    row_index: dict[str, set[int]] = {c.name: set() for c in gx_checks}
    extra: dict[str, list[dict[str, Any]]] = {c.name: [] for c in gx_checks}
    for item in result.results:
        name = item.expectation_config.meta["check"]
        config = item.expectation_config
        verdicts[name] &= bool(item.success)
        if item.success:
            continue
        details = item.result or {}
        errors = _gx_errors(item.exception_info)
        if errors:
            extra[name] += [{"error": f"{config.type}: {e}"} for e in errors]
        elif "unexpected_index_list" in details:
            row_index[name] |= set(details["unexpected_index_list"] or [])
        elif "partial_missing_list" in details:  # distinct-values expectations report what is absent
            # GX reports the missing values in set order; follow the expectation's own order instead.
            reported = {_plain(m) for m in details["partial_missing_list"]}
            missing = [v for v in config.kwargs["value_set"] if v in reported]
            if name == "classes_in_train":
                extra[name] += [{"split": "train", "label": m} for m in missing]
            else:
                extra[name] += [{config.kwargs["column"]: m} for m in missing]
        elif config.type == "expect_table_row_count_to_be_between":
            extra[name].append({"rows": _plain(details.get("observed_value"))})
        else:
            extra[name].append({"error": f"{config.type} failed without details"})

    outcomes: dict[str, _Outcome] = {}
    for check in gx_checks:
        indices = sorted(row_index[check.name])
        offending = (_records(data.loc[indices, list(check.columns)]) if indices else []) + extra[check.name]
        outcomes[check.name] = _Outcome(success=verdicts[check.name], offending=offending,
                                        unexpected_count=len(offending), engine="great_expectations")
    pandas_only = [c for c in checks if c.gx is None]
    outcomes.update(_run_pandas(frame, pandas_only, settings))
    return {c.name: outcomes[c.name] for c in checks}


# --------------------------------------------------------------------------------------------------
# Report and messages


def _counts(frame: pd.DataFrame, group: str) -> dict[str, Any]:
    if not {"split", group, "label"} <= set(frame.columns):
        return {"rows": len(frame)}

    def count(columns: list[str]) -> dict[str, int]:
        grouped = frame.groupby(columns, dropna=False).size()
        return {"/".join(str(k) for k in (key if isinstance(key, tuple) else (key,))): int(v)
                for key, v in grouped.items()}

    return {"rows": len(frame), "by_split": count(["split"]), f"by_{group}": count([group]),
            "by_label": count(["label"]), f"by_split_{group}_label": count(["split", group, "label"])}


def _format_row(row: dict[str, Any]) -> str:
    # A 12-character hash prefix is enough to pair up the copies of one image in a message.
    row = {k: (f"{v[:12]}…" if k == "sha256" and isinstance(v, str) else v) for k, v in row.items()}
    if "path" in row:
        rest = ", ".join(f"{k}={v}" for k, v in row.items() if k != "path")
        return f"{row['path']} ({rest})" if rest else str(row["path"])
    return ", ".join(f"{k}={v}" for k, v in row.items())


def _error_message(failed: list[dict[str, Any]], bad_files: list[BadFile], on_bad_file: str,
                   report_path: Path, n_checks: int) -> str:
    lines = []
    parts = []
    if failed:
        parts.append(f"{len(failed)} of {n_checks} checks failed")
    if bad_files and on_bad_file == "fail":
        parts.append(f"{len(bad_files)} bad file(s)")
    lines.append(f"data validation failed: {', '.join(parts)}")
    for check in failed:
        lines.append(f"- {check['name']}: expected {check['description']}; "
                     f"{check['unexpected_count']} offending:")
        shown = check["offending"][:MESSAGE_ROW_LIMIT]
        lines += [f"    {_format_row(row)}" for row in shown]
        if check["unexpected_count"] > len(shown):
            lines.append(f"    ... and {check['unexpected_count'] - len(shown)} more (see the report)")
        lines.append(f"  fix: {check['fix']}")
    if bad_files and on_bad_file == "fail":
        lines.append(f"- bad files ({len(bad_files)}), not usable as images:")
        lines += [f"    {bad}" for bad in bad_files]
        lines.append("  fix: replace or delete these files, or set on_bad_file=exclude (e.g. "
                     "data.on_bad_file=exclude) to go on without them")
    lines.append(f"full report: {report_path}")
    return "\n".join(lines)


def validate_manifest(
    manifest: pd.DataFrame,
    bad_files: list[BadFile],
    *,
    schema: ManifestSchema,
    report_path: Path,
    on_bad_file: str = "fail",
    min_side: int = 32,
    max_side: int = 8192,
    require_splits: Sequence[str] = ("train", "test"),
    expectations: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Check ``manifest`` (and the reader's ``bad_files``), write a JSON report, raise on failure.

    ``on_bad_file="fail"`` raises listing every bad file; ``"exclude"`` logs them as a WARNING and drops
    any manifest row with their path. Returns ``(validated manifest, report dict)``.
    """
    if on_bad_file not in ON_BAD_FILE_CHOICES:
        raise ValueError(f"on_bad_file must be one of {list(ON_BAD_FILE_CHOICES)}, got {on_bad_file!r}")
    unknown_splits = [s for s in require_splits if s not in SPLITS]
    if unknown_splits:
        raise ValueError(f"require_splits has unknown splits {unknown_splits}; use names from {list(SPLITS)}")
    report_path = Path(report_path)
    settings = _Settings(schema=schema, min_side=min_side, max_side=max_side, require_splits=tuple(require_splits))
    bad_files = sorted(bad_files, key=lambda b: b.path)

    frame = manifest
    if on_bad_file == "exclude" and bad_files and "path" in frame.columns:
        frame = frame[~frame["path"].isin({b.path for b in bad_files})]

    missing_columns = [c for c in schema.column_names if c not in frame.columns]
    if missing_columns:
        outcomes = {"columns": _Outcome(success=False,
                                        offending=[{"missing_column": c} for c in missing_columns],
                                        unexpected_count=len(missing_columns))}
        checks = [_Check("columns", f"the manifest has the columns {list(schema.column_names)}",
                         "rebuild the manifest from its data source", ("missing_column",),
                         lambda df, s: outcomes["columns"])]
        engine = "pandas"
    else:
        checks = _checks_for(settings)
        engine = "great_expectations" if expectations else "pandas"
        outcomes = (_run_great_expectations if expectations else _run_pandas)(frame, checks, settings)

    check_reports = [{
        "name": check.name, "description": check.description, "success": outcomes[check.name].success,
        "engine": outcomes[check.name].engine, "unexpected_count": outcomes[check.name].unexpected_count,
        "offending": outcomes[check.name].offending[:REPORT_ROW_LIMIT], "fix": check.fix,
    } for check in checks]
    failed = [c for c in check_reports if not c["success"]]
    bad_files_block = bool(bad_files) and on_bad_file == "fail"
    success = not failed and not bad_files_block
    report = {
        "success": success,
        "engine": engine,
        "settings": {"on_bad_file": on_bad_file, "min_side": min_side, "max_side": max_side,
                     "require_splits": list(require_splits)},
        "checks": check_reports,
        "bad_files": {"count": len(bad_files), "policy": on_bad_file,
                      "files": [{"path": b.path, "reason": b.reason} for b in bad_files]},
        "schema": schema.name,
        "counts": _counts(frame, schema.group_column),
        "report_path": str(report_path),
    }
    # The report is the evidence of a failed run, so it is written before anything is raised.
    write_json_atomic(report_path, report)

    if bad_files and on_bad_file == "exclude":
        log.warning("excluding %d bad file(s) from the manifest (on_bad_file=exclude):\n%s", len(bad_files),
                    "\n".join(f"  {b}" for b in bad_files))
    if not success:
        raise DataValidationError(_error_message(failed, bad_files, on_bad_file, report_path, len(checks)))
    log.info("manifest valid (%s): %d rows, per split %s; report %s", engine, len(frame),
             report["counts"].get("by_split"), report_path)
    return normalise_manifest(frame, schema), report
