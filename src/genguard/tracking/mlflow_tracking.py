"""Thin helpers over plain MLflow, shared by every family's training, evaluation and benchmark nodes.

Backend: always SQLite (``sqlite:///<root>/mlruns/mlflow.db``). MLflow 3.13+ refuses the plain
``./mlruns`` file store, and the model registry needs a database anyway. Artifacts live next to
the database under ``<root>/mlruns/artifacts``.

Every logging helper writes into the *active* run and refuses to run without one: MLflow's fluent
API would otherwise silently start a run that nobody ends. Use :func:`active_or_new_run` to get
one; under ``kedro run`` kedro-mlflow has already opened it.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from genguard.io.jsonsafe import nan_to_none

DB_RELATIVE = Path("mlruns") / "mlflow.db"
ARTIFACTS_RELATIVE = Path("mlruns") / "artifacts"


# --------------------------------------------------------------------------- backend / experiments


def default_tracking_uri(project_root: str | Path) -> str:
    """``sqlite:///<abs root>/mlruns/mlflow.db``; creates ``<root>/mlruns`` (SQLite needs the folder).

    The path is made absolute so the URI means the same from any working directory (Kedro,
    DVC and notebooks each start in a different one).
    """
    db_path = Path(project_root).resolve() / DB_RELATIVE
    db_path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db_path.as_posix()}"


def default_artifact_root(project_root: str | Path) -> Path:
    """``<abs root>/mlruns/artifacts``: where :func:`ensure_experiment` should put artifacts."""
    return Path(project_root).resolve() / ARTIFACTS_RELATIVE


def ensure_experiment(name: str, artifact_root: str | Path | None = None) -> str:
    """Return the id of experiment ``name`` in the current tracking backend, creating it if needed.

    A new experiment gets ``artifact_root`` (a local folder or a URI) as its artifact location;
    runs then store artifacts under ``<artifact_root>/<run_id>/artifacts``. An existing experiment
    keeps the location it was created with (MLflow cannot move it). A soft-deleted experiment of
    that name is restored rather than failing, since its name stays reserved until purged.
    """
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if artifact_root is not None:
        root = str(artifact_root)
        # A bare path becomes a file:// URI so MLflow does not resolve it against the cwd later.
        location = root if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", root) else Path(root).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def active_or_new_run(experiment: str | None = None, run_name: str | None = None) -> Iterator[Run]:
    """Yield the active MLflow run if there is one, else start one and end it on exit.

    Reusing the active run is what makes nodes work both under ``kedro run`` (kedro-mlflow opens a
    run per pipeline run, and ending it here would break the following nodes) and standalone. A
    run started here is ended with status FAILED if the body raises. ``experiment`` (created if
    missing) and ``run_name`` only matter for a new run; ``experiment=None`` uses MLflow's current one.
    """
    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    experiment_id = ensure_experiment(experiment) if experiment else None
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        yield run


def _require_active_run() -> Run:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: wrap the call in genguard.tracking.active_or_new_run(...)")
    return run


# --------------------------------------------------------------------------- names


_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_./ -]")


def safe_metric_name(name: str) -> str:
    """Map any string onto MLflow's metric/param name alphabet ``[A-Za-z0-9_./ -]``.

    Invalid characters become ``_``; empty, ``.`` and ``..`` path segments (which MLflow rejects as
    non-unique paths) are dropped or replaced, so generator folder names can go straight in.
    """
    cleaned = _INVALID_NAME_CHARS.sub("_", str(name))
    segments = []
    for segment in cleaned.split("/"):
        if segment in ("", "."):
            continue
        segments.append("__" if segment == ".." else segment)
    return "/".join(segments) or "_"


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part and part.strip("/"))


# --------------------------------------------------------------------------- params


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; non-dict leaves (lists included) are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name))
        else:
            flat[name] = value
    return flat


def log_params_flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Log nested ``params`` as dotted keys (``train.lr``) into the active run.

    Keys already logged with the same value are skipped, so a node can re-log its config on a
    resumed run. A key already logged with a *different* value raises ValueError before anything
    is written (MLflow would refuse it half-way through a batch); nothing is truncated, so a value
    over MLflow's length limit fails loudly too. Returns the params actually sent, as strings.
    """
    run = _require_active_run()
    flat = {key: str(value) for key, value in flatten_params(params, prefix).items()}
    existing = MlflowClient().get_run(run.info.run_id).data.params
    conflicts = {
        key: (existing[key], value)
        for key, value in flat.items()
        if key in existing and existing[key] != value
    }
    if conflicts:
        shown = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(conflicts.items()))
        raise ValueError(f"params already logged with other values in run {run.info.run_id}: {shown}")
    new = {key: value for key, value in flat.items() if key not in existing}
    if new:
        mlflow.log_params(new)
    return new


# --------------------------------------------------------------------------- evaluation


def _as_number(value: Any) -> float | None:
    # numbers.Real also admits numpy scalars (np.int64 is no int subclass); bools are not metrics.
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def evaluation_metrics(summary: Mapping[str, Any], table: pd.DataFrame, base: str, group_column: str = "group",
                       summary_row: str = "mean") -> dict[str, float]:
    """The flat ``{metric name: value}`` dict :func:`log_evaluation` logs (exposed for tests/dry runs).

    Scalars of ``summary`` become ``<base>/<key>``; each row of ``table`` but the summary row becomes
    ``<base>/<group>/<column>`` for every numeric column. NaN is kept: MLflow stores it, and a
    missing AP in the UI is more honest than a missing metric.
    """
    metrics: dict[str, float] = {}
    for key, value in summary.items():
        number = _as_number(value)
        if number is not None:
            metrics[safe_metric_name(_join(base, key))] = number
    # Robustness: {"conditions": {"jpeg_75": {"acc": ..}}} -> "<base>_jpeg_75/acc".
    for condition, values in (summary.get("conditions") or {}).items():
        for key, value in values.items():
            number = _as_number(value)
            if number is not None:
                metrics[safe_metric_name(_join(f"{base}_{condition}", key))] = number
    numeric_columns = [
        column for column in table.columns
        if column != group_column and pd.api.types.is_numeric_dtype(table[column])
    ]
    for row in table.to_dict(orient="records"):
        group = str(row[group_column])
        if group == summary_row:
            continue  # already logged as <base>/mean_<metric> from the summary
        for column in numeric_columns:
            name = safe_metric_name(_join(base, safe_metric_name(group), column))
            metrics[name] = float(row[column])
    return metrics


def log_evaluation(
    summary: Mapping[str, Any],
    table: pd.DataFrame,
    figures: Mapping[str, bytes],
    prefix: str = "",
    split: str = "test",
    group_column: str = "group",
) -> dict[str, float]:
    """Log one evaluation (a summary dict, its per-group table, figures) to the active run.

    * metrics ``<split>/acc``, ``<split>/ap``, ``<split>/mean_acc`` ... and per group
      ``<split>/<group>/acc``, ``.../ap`` ... (``group_column`` names the table's key column);
    * ``per_<group_column>.csv`` and the MLflow table ``per_<group_column>.json`` (shown in the UI);
    * each figure as ``plots/<name>.png`` (``.png`` added when missing);
    * ``metrics.json``, the summary in strict JSON (NaN -> null).

    ``prefix`` namespaces everything, metrics *and* artifacts, e.g. ``prefix="jpeg_75"`` gives
    ``jpeg_75/test/acc`` and ``jpeg_75/plots/roc.png``, so one run can hold the clean and every
    perturbed evaluation without overwriting (``log_table`` would even append to an existing
    table). Returns the metrics dict that was logged.
    """
    _require_active_run()
    metrics = evaluation_metrics(summary, table, _join(prefix, split), group_column=group_column)
    mlflow.log_metrics(metrics)
    artifact_dir = _join(prefix) or None
    table_name = f"per_{safe_metric_name(group_column).replace('/', '_')}"
    with tempfile.TemporaryDirectory(prefix="genguard-eval-") as tmp:
        staging = Path(tmp)
        table.to_csv(staging / f"{table_name}.csv", index=False)
        (staging / "metrics.json").write_text(
            json.dumps(nan_to_none(dict(summary)), indent=2, sort_keys=True, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        plots = staging / "plots"
        plots.mkdir()
        for name, payload in figures.items():
            filename = safe_metric_name(name).replace("/", "_").replace(" ", "_")
            if not filename.lower().endswith(".png"):
                filename += ".png"
            (plots / filename).write_bytes(payload)
        mlflow.log_artifacts(str(staging), artifact_path=artifact_dir)
    # The JSON table view wants JSON-safe cells; NaN would be written as a bare NaN token.
    json_table = table.astype(object).where(table.notna(), None)
    mlflow.log_table(json_table, _join(prefix, f"{table_name}.json"))
    return metrics
