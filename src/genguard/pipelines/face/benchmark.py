"""Nodes of ``deepfake_benchmark``: Effort, SeLop and MASM under one protocol, one leaderboard.

Protocol: the shared ``face_data`` block decides the videos and the training forgeries (embedded
default: train on real + SBI, test on every forgery kind; ``conf/gpu``: train on FF++ c23, test on its
test split and on Celeb-DF/DFDC/DFDCP/DFD). Every detector trains with its own parameter block
(``params:<detector>``), keeps its best *validation* checkpoint, and is tested on every
``<dataset>/<forgery>`` group at video level (mean frame score) and frame level, clean and under each
condition of ``deepfake_benchmark.conditions`` (DeeperForensics-1.0 perturbations by default).

MLflow: the run of ``kedro run`` is the parent; each detector trains and evaluates in a nested child run;
the leaderboard (CSV, Markdown, heatmaps, DVC metrics) goes to the parent.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from genguard.evaluation import leaderboard as lb
from genguard.evaluation.conditions import resolve_conditions
from genguard.families.face import evaluation as protocol
from genguard.pipelines import detection
from genguard.pipelines.detection import SYSTEM
from genguard.pipelines.face import nodes as detector_nodes
from genguard.tracking.mlflow_tracking import log_evaluation

log = logging.getLogger(__name__)
BENCHMARK = "deepfake_benchmark"


def benchmark_conditions(benchmark: dict[str, Any]) -> list[str]:
    return resolve_conditions(benchmark.get("conditions") or ["clean"])


def benchmark_detector(manifest: pd.DataFrame, params: dict[str, Any], data: dict[str, Any],
                       benchmark: dict[str, Any]) -> pd.DataFrame:
    """Train + evaluate one detector in a child MLflow run; per-group results per condition (long).

    A detector that fails fails the pipeline: it is never silently left out of the leaderboard.
    """
    model = params["model"]
    method = model["method"]
    conditions = benchmark_conditions(benchmark)
    evaluation = {**params["evaluation"], "conditions": conditions}
    checkpoint_dir = str(Path(benchmark["checkpoint_dir"]) / method)
    logged = {"model": model, "train": params["train"], "augment": params.get("augment") or {}}
    with detection.child_run(BENCHMARK, benchmark.get("experiment", "genguard"), method, logged):
        started = time.perf_counter()
        features = detector_nodes.cache_features(manifest, model, data, conditions)
        trained, summary = detector_nodes.train_detector(manifest, features, model, params["train"],
                                                         params.get("augment") or {}, data, checkpoint_dir)
        scores, metrics, _headline, table, figures, _roc = detector_nodes.evaluate_detector(
            trained, manifest, features, evaluation, data)
        log_evaluation(metrics, table, figures, group_column=protocol.PAIR)
        threshold = float(evaluation.get("threshold", 0.5))
        results = detection.long_results(method, scores, protocol.PAIR, threshold,
                                         table=lambda frame, _group, threshold: protocol.forgery_table(
                                             frame, threshold))
        results["trainable_parameters"] = summary["trainable_parameters"]
        mlflow.log_metrics({"benchmark_seconds": time.perf_counter() - started,
                            "trainable_parameters": summary["trainable_parameters"]})
    log.info("%s: %d trainable parameters, trained in %.1f s, clean video AUC %.3f", method,
             summary["trainable_parameters"], summary["seconds"],
             results.loc[results["condition"] == "clean", "auc"].mean())
    return results


def expected_groups(manifest: pd.DataFrame, benchmark: dict[str, Any]) -> list[str]:
    """The ``<dataset>/<forgery>`` groups the leaderboard must cover: configured, else every fake
    group of the test split."""
    if benchmark.get("groups"):
        return list(benchmark["groups"])
    test = manifest[(manifest["split"] == "test") & (manifest["label"] == 1)]
    return sorted((test["dataset"].astype(str) + "/" + test[detector_nodes.GROUP].astype(str)).unique())


def build_leaderboard(manifest: pd.DataFrame, data: dict[str, Any], benchmark: dict[str, Any],
                      *results: pd.DataFrame
                      ) -> tuple[pd.DataFrame, str, dict[str, bytes], dict[str, Any], dict[str, Any]]:
    """Leaderboard CSV, Markdown, heatmaps, DVC metrics and plot records; logged to the parent run."""
    combined = pd.concat(results, ignore_index=True)
    detectors = detection.check_every_detector_reported(results)
    groups = expected_groups(manifest, benchmark)
    unseen = [g for g in groups if detector_nodes.held_out(g, data)]
    board = lb.build_leaderboard(combined, systems=detectors, groups=groups, conditions=benchmark_conditions(benchmark),
                                 metrics=protocol.LEADERBOARD_METRICS, held_out=unseen or None,
                                 rank_by=protocol.RANK_METRICS, system_column=SYSTEM, group_column=protocol.PAIR)
    trained_on = [f"{dataset}/{forgery}" for dataset in sorted(manifest["dataset"].astype(str).unique())
                  for forgery in detector_nodes.training_forgeries(data) or []]
    markdown, figures, metrics, plot = detection.leaderboard_outputs(
        board, title="Face-forgery detection leaderboard (<test set>/<forgery>; video AUC, frame level as FRAME_*)",
        train_groups=[g for g in groups if g in trained_on], group_label="forgery group",
        metrics_shown=protocol.RANK_METRICS)
    parameters = combined.drop_duplicates(SYSTEM).set_index(SYSTEM)["trainable_parameters"]
    markdown += "\n\nTrainable parameters: " + ", ".join(f"{name} {int(count):,}" for name, count in parameters.items())
    markdown += "\n"
    detection.log_leaderboard(BENCHMARK, benchmark.get("experiment", "genguard"), board, markdown, figures, metrics,
                              reports={"trainable_parameters": {k: int(v) for k, v in parameters.items()}})
    return board, markdown, figures, metrics, plot
