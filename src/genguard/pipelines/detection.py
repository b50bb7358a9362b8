"""Kedro-side steps every binary-detector family shares (AIGI, face forgery): the data nodes,
the frozen-feature cache keyed by sha256, ROC records for ``dvc plots``, registration with
``candidate``/``champion`` aliases, the benchmark's per-group results and leaderboard logging, and the
shape of the family's DVC stages.

Family pipeline packages (``genguard.pipelines.<family>``) import this module and never each other
(the ``pipelines`` contract in pyproject.toml). Nothing here names a family: the caller passes its
schema, group column and source family.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from genguard.data.datasets import FeatureBank, FeatureRows
from genguard.data.images import ManifestImages, Preprocess
from genguard.data.loaders import make_loader
from genguard.data.manifest import BadFile, DataValidationError, ManifestSchema
from genguard.data.sources import resolve_source
from genguard.data.validation import validate_manifest
from genguard.evaluation import leaderboard as lb
from genguard.evaluation import plots
from genguard.evaluation.conditions import get_condition
from genguard.evaluation.grouping import group_table
from genguard.io.model_files import save_model_dir
from genguard.models.detector import BinaryDetector, TrainedDetector
from genguard.progress import progress
from genguard.tracking.mlflow_tracking import (
    active_or_new_run,
    log_evaluation,
    log_params_flat,
    safe_metric_name,
)
from genguard.tracking.registry import log_and_register_model

log = logging.getLogger(__name__)
SYSTEM = "detector"
SHARED_PIPELINE_FILE = "src/genguard/pipelines/detection.py"


# ------------------------------------------------------------------------------------------ data
def ingest(family: str, data: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Manifest of what ``data.source`` names for ``family``: a registered source or a folder."""
    result = resolve_source(family, data).ingest(data)
    return result.manifest, [asdict(bad) for bad in result.bad_files]


def validate(raw_manifest: pd.DataFrame, bad_files: list[dict[str, str]], data: dict[str, Any],
             reports_dir: str, schema: ManifestSchema) -> pd.DataFrame:
    """Stops the run (or drops bad files, per ``data.on_bad_file``) before any training starts; the
    report is written to ``reports_dir/data_validation.json`` either way."""
    manifest, _report = validate_manifest(
        raw_manifest, [BadFile(**bad) for bad in bad_files], schema=schema,
        report_path=Path(reports_dir) / "data_validation.json",
        on_bad_file=data.get("on_bad_file", "fail"), min_side=data.get("min_side", 32),
        expectations=data.get("great_expectations", True))
    return manifest


def preprocess_for(detector: BinaryDetector, data: dict[str, Any]) -> Preprocess:
    """The detector's input pipeline: its backbone's size and statistics, the method's overrides."""
    backbone = detector.backbone
    options = {"image_size": backbone.image_size, "mean": backbone.image_mean, "std": backbone.image_std,
               "resize_mode": data.get("resize_mode", "resize")}
    options.update(detector.preprocess_overrides())
    return Preprocess(**options)


# ----------------------------------------------------------------------------------- features
def encode_rows(detector: BinaryDetector, frame: pd.DataFrame, preprocess: Preprocess, condition: Any = "clean",
                batch_size: int = 128) -> torch.Tensor:
    """Frozen-encoder features of ``frame``'s images, in row order; ``condition`` degrades them first
    (a condition name, or any image -> image callable such as an augmented bank copy)."""
    transform = condition if callable(condition) else (None if condition == "clean" else get_condition(condition))
    label = getattr(condition, "name", None) or (f"copy {condition.copy}" if callable(condition) else condition)
    images = ManifestImages(frame, preprocess, condition=transform)
    detector.eval()
    features = []
    with torch.no_grad():
        for batch in progress(make_loader(images, batch_size, shuffle=False), desc=f"encoding ({label})",
                              unit="batch"):
            features.append(detector.encode(batch["image"]))
    return torch.cat(features).contiguous() if features else torch.zeros(0)


def sha_tensor(frame: pd.DataFrame) -> torch.Tensor:
    """The rows' sha256 digests as a uint8 [N, 32] tensor: the key of a feature cache."""
    sha = np.stack([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in frame["sha256"]])
    return torch.from_numpy(sha.copy())


def no_features() -> dict[str, torch.Tensor]:
    """The cache of a method that fine-tunes its backbone: nothing to reuse."""
    return {"features": torch.zeros(0), "row_sha256": torch.zeros(0, dtype=torch.uint8)}


def encode_cache(detector: BinaryDetector, rows: pd.DataFrame, test: pd.DataFrame, preprocess: Preprocess,
                 conditions: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Clean features of ``rows`` (key ``features``) and of ``test`` under each degraded condition
    (``features@<name>``), each with its sha256 keys (``row_sha256[@<name>]``)."""
    cache = {"features": encode_rows(detector, rows, preprocess), "row_sha256": sha_tensor(rows)}
    for condition in (c for c in conditions if c != "clean"):
        cache[f"features@{condition}"] = encode_rows(detector, test, preprocess, condition)
        cache[f"row_sha256@{condition}"] = sha_tensor(test)
    return cache


def feature_rows(cache: dict[str, torch.Tensor], frame: pd.DataFrame, condition: str = "clean",
                 extras: dict[str, torch.Tensor] | None = None) -> FeatureRows | FeatureBank:
    """Cached features of ``frame``'s rows (``condition`` ``bank``: their augmented copies)."""
    suffix = "" if condition == "clean" else f"@{condition}"
    index = {bytes(row.numpy()).hex(): i for i, row in enumerate(cache["row_sha256" + suffix])}
    try:
        positions = [index[h] for h in frame["sha256"]]
    except KeyError as missing:
        raise DataValidationError(f"feature cache lacks the image with sha256 {missing}; "
                                  "rerun the cache_features node (the manifest changed)") from None
    labels = torch.as_tensor(frame["label"].to_numpy().copy())
    if condition == "bank":
        return FeatureBank(cache["features@bank"][:, positions], labels, extras=extras)
    return FeatureRows(cache["features" + suffix][positions], labels, extras=extras)


def has_features(cache: dict[str, torch.Tensor] | None, condition: str = "clean") -> bool:
    key = "features" if condition == "clean" else f"features@{condition}"
    return cache is not None and cache.get(key) is not None and cache[key].numel() > 0


# ---------------------------------------------------------------------------------- evaluation
def roc_records(frame: pd.DataFrame, max_points: int = 200) -> dict[str, Any]:
    """The pooled ROC curve as at most ``max_points`` records, for ``dvc plots``."""
    points = plots.roc_points(frame["label"].to_numpy(), frame["score"].to_numpy())
    if points is None:
        return {"roc": []}
    fpr, tpr, _ = points
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)).round().astype(int))
    return {"roc": [{"fpr": float(fpr[i]), "tpr": float(tpr[i])} for i in keep]}


def rounded(values: dict[str, float]) -> dict[str, float | None]:
    """DVC metrics: six decimals, NaN as null (JSON has no NaN)."""
    return {key: None if math.isnan(float(value)) else round(float(value), 6) for key, value in values.items()}


# -------------------------------------------------------------------------------- registration
def register(detector: TrainedDetector, train_summary: dict[str, Any], metrics: dict[str, Any],
             table: pd.DataFrame, figures: dict[str, bytes], registry: dict[str, Any], group_column: str
             ) -> dict[str, Any]:
    """Log evaluation + model to the active MLflow run; register a version; move the aliases
    (``candidate`` always, ``champion`` when the validation metric beats the current champion's)."""
    best = train_summary["best"]
    with active_or_new_run(registry.get("experiment", "genguard"), train_summary["method"]):
        log_evaluation(metrics, table, figures, group_column=group_column)
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = save_model_dir(detector.model, Path(tmp) / "model", extra=detector.files_extra())
            info = log_and_register_model(
                model_dir, registered_model_name=registry["model_name"],
                validation_metric=best["metric"], validation_value=float(best["value"]),
                greater_is_better=best.get("mode", "max") == "max")
    log.info("registered %s version %s (aliases: %s)", info["name"], info["version"], info["aliases"])
    return info


# ---------------------------------------------------------------------------------- benchmarks
@contextmanager
def child_run(benchmark_name: str, experiment: str, method: str, params: dict[str, Any]) -> Iterator[None]:
    """The nested MLflow run of one detector inside a benchmark's parent run."""
    with active_or_new_run(experiment, benchmark_name), mlflow.start_run(run_name=method, nested=True):
        mlflow.set_tags({"genguard.benchmark": benchmark_name, "genguard.detector": method})
        log_params_flat(params)
        yield


def long_results(method: str, scores: pd.DataFrame, group_column: str, threshold: float,
                 table: Callable[..., pd.DataFrame] = group_table) -> pd.DataFrame:
    """One row per (condition, group) of ``scores`` with the detector's name: the leaderboard's input."""
    frames = []
    for condition, group in scores.groupby("condition", sort=False):
        rows = table(group, group_column, threshold=threshold)
        rows = rows[rows[group_column] != "mean"]
        frames.append(rows.assign(**{SYSTEM: method, "condition": condition}))
    return pd.concat(frames, ignore_index=True)


def check_every_detector_reported(results: tuple[pd.DataFrame, ...]) -> list[str]:
    detectors = list(dict.fromkeys(frame[SYSTEM].iloc[0] for frame in results if len(frame)))
    if len(detectors) != len(results):
        raise DataValidationError("a detector produced no results at all; see its child run in MLflow")
    return detectors


def log_leaderboard(benchmark_name: str, experiment: str, board: pd.DataFrame, markdown: str,
                    figures: dict[str, bytes], metrics: dict[str, Any],
                    reports: dict[str, dict[str, Any]] | None = None,
                    extra_metrics: dict[str, float] | None = None) -> None:
    """The leaderboard (CSV, Markdown, metrics JSON, heatmaps, extra reports) into the parent run."""
    with active_or_new_run(experiment, benchmark_name):
        flat = dict(extra_metrics or {})
        for detector, values in metrics.items():
            flat.update({safe_metric_name(f"{detector}/{k}"): float(v) for k, v in values.items()
                         if isinstance(v, int | float) and v is not None})
        mlflow.log_metrics(flat)
        with tempfile.TemporaryDirectory(prefix="genguard-leaderboard-") as tmp:
            folder = Path(tmp)
            board.to_csv(folder / "leaderboard.csv", index=False)
            (folder / "leaderboard.md").write_text(markdown, encoding="utf-8")
            (folder / "leaderboard_metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
            for name, report in (reports or {}).items():
                (folder / f"{name}.json").write_text(json.dumps(report, indent=2))
            for name, payload in figures.items():
                (folder / f"{name}.png").write_bytes(payload)
            mlflow.log_artifacts(str(folder), artifact_path="leaderboard")


def leaderboard_outputs(board: pd.DataFrame, *, title: str, train_groups: list[str], group_label: str,
                        metrics_shown: tuple[str, ...]) -> tuple[str, dict[str, bytes], dict[str, Any], dict[str, Any]]:
    """Markdown, heatmaps (one per metric shown), DVC metrics and DVC plot records of a leaderboard."""
    markdown = lb.leaderboard_markdown(board, title=title, train_groups=train_groups, group_label=group_label,
                                       system_label=SYSTEM)
    figures = {f"heatmap_{metric}": lb.leaderboard_heatmap_png(board, metric) for metric in metrics_shown}
    return markdown, figures, lb.leaderboard_metrics(board), {"leaderboard": lb.leaderboard_plot_records(board)}


# ---------------------------------------------------------------------------------- DVC stages
@dataclass(frozen=True)
class DetectorFamilyStages:
    """What a detector family's dvc.yaml stages are made of (each family fills one in its ``stages.py``).

    Each stage lists its real dependencies: the core code (given by the caller), the family files every
    detector shares, its own method module, the pipeline wiring, the catalog and its parameter blocks;
    outputs, a small metrics JSON and a plot. Another detector's method module is never a dependency,
    so editing one method reruns only its own stage (and the benchmark).
    """

    family_dir: str                        # src/genguard/families/<family>
    pipeline_dir: str                      # src/genguard/pipelines/<family>
    detectors: tuple[str, ...]
    module_files: dict[str, str]           # detector -> its file under <family_dir>/methods/
    shared_family_files: tuple[str, ...]   # relative to family_dir
    dataset_out: str                       # the embedded default's build folder
    data_params: dict[str, list[str]]      # {params file: [the data block]}
    data_pipeline: str
    benchmark_pipeline: str
    data_stage_params: list[dict[str, list[str]]]
    data_stage_extra_outs: tuple[Any, ...] = ()
    plot_metric: str = "acc"
    prior_out: str | None = None           # a pretrained prior the data stage builds and every detector reads
    extra_pipeline_files: tuple[str, ...] = ()  # relative to pipeline_dir, read by every detector

    def _prior(self) -> list[str]:
        return [self.prior_out] if self.prior_out else []

    def _pipeline_files(self) -> list[str]:
        return [f"{self.pipeline_dir}/{name}" for name in ("nodes.py", "pipeline.py", *self.extra_pipeline_files)]

    def _shared(self) -> list[str]:
        return [f"{self.family_dir}/{name}" for name in self.shared_family_files]

    def _detector(self, method: str, core: list[str]) -> dict[str, Any]:
        return {
            "cmd": f"kedro run --pipelines={method}",
            "deps": [self.dataset_out, *self._prior(), *core, *self._shared(),
                     f"{self.family_dir}/methods/{self.module_files[method]}", *self._pipeline_files(),
                     SHARED_PIPELINE_FILE, "conf/base/catalog.yml"],
            "params": [self.data_params, {f"conf/base/parameters_{method}.yml": [method]}],
            "outs": [f"data/03_primary/{method}", f"data/04_feature/{method}", f"data/06_models/{method}",
                     f"data/07_model_output/{method}"],
            "metrics": [{f"data/08_reporting/{method}/metrics.json": {"cache": False}}],
            "plots": [{f"data/08_reporting/{method}/roc.json": {"cache": False, "x": "fpr", "y": "tpr"}}],
        }

    def stages(self, core: list[str]) -> dict[str, dict[str, Any]]:
        """``{stage name: stage}``: the dataset, one stage per detector, the benchmark."""
        out: dict[str, dict[str, Any]] = {
            self.data_pipeline: {
                "cmd": f"kedro run --pipelines={self.data_pipeline}",
                "deps": [*core, *self._shared(), *self._pipeline_files(), SHARED_PIPELINE_FILE],
                "params": self.data_stage_params,
                "outs": [self.dataset_out, *self._prior(), *self.data_stage_extra_outs],
            }
        }
        for method in self.detectors:
            out[method] = self._detector(method, core)
        bench, report = self.benchmark_pipeline, f"data/08_reporting/{self.benchmark_pipeline}"
        out[bench] = {
            "cmd": f"kedro run --pipelines={bench}",
            "deps": [self.dataset_out, *self._prior(), *core, self.family_dir, self.pipeline_dir,
                     SHARED_PIPELINE_FILE, "conf/base/catalog.yml"],
            "params": [self.data_params, {f"conf/base/parameters_{bench}.yml": [bench]},
                       *({f"conf/base/parameters_{method}.yml": [method]} for method in self.detectors)],
            "outs": [f"data/03_primary/{bench}", f"{report}/leaderboard.csv", f"{report}/leaderboard.md",
                     f"{report}/plots"],
            "metrics": [{f"{report}/leaderboard_metrics.json": {"cache": False}}],
            "plots": [{f"{report}/leaderboard_plot.json": {
                "cache": False, "template": "bar_horizontal", "x": self.plot_metric, "y": "group"}}],
        }
        return out
