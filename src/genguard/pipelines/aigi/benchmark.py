"""Nodes of ``aigi_benchmark``: every AIGI detector under one protocol, one leaderboard.

Protocol: the shared ``data`` block decides the images and the training families (embedded default:
train on ``gan_upsampler``, test on all four families); every detector trains with its own
parameter block (``params:<detector>``) and is tested on every family, clean and under each
condition of ``aigi_benchmark.conditions`` (a named suite of ``genguard.evaluation.conditions`` or a
list). Frozen-backbone detectors read their features from one store, encoded once per (backbone,
input preprocessing) and shared by every detector with that key, degraded test sets included.

MLflow: the run of ``kedro run`` is the parent; each detector trains and evaluates in a nested
child run (its curves, per-generator metrics and plots); the leaderboard goes to the parent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch

from genguard.evaluation import leaderboard as lb
from genguard.evaluation.conditions import resolve_conditions
from genguard.families.aigi import GROUP
from genguard.families.aigi.augment import AugmentConfig
from genguard.pipelines import detection
from genguard.pipelines.aigi import nodes as detector_nodes
from genguard.pipelines.detection import SYSTEM
from genguard.tracking.mlflow_tracking import log_evaluation
from genguard.training import fingerprint

log = logging.getLogger(__name__)
BENCHMARK = "aigi_benchmark"
RANK_METRICS = ("acc", "ap")


def benchmark_conditions(benchmark: dict[str, Any]) -> list[str]:
    return resolve_conditions(benchmark.get("conditions") or ["clean"])


# ------------------------------------------------------------------------------ shared features
def prepare_backbones(manifest: pd.DataFrame, backbone_prior: dict[str, Any],
                      *detector_params: dict[str, Any]) -> dict[str, Any]:
    """Every prior the detectors' backbones name, built (or found cached) once, by method."""
    return {params["model"]["method"]: detector_nodes.prepare_backbone(manifest, params["model"], backbone_prior)
            for params in detector_params}


def encode_shared_features(manifest: pd.DataFrame, data: dict[str, Any], benchmark: dict[str, Any],
                           backbone_priors: dict[str, Any], *detector_params: dict[str, Any]) -> dict[str, Any]:
    """One feature cache per distinct frozen (backbone, preprocessing, training augmentation), handed to
    every detector using it (``detector_params``: each detector's parameter block).

    Returns ``{"caches": {detector: cache}, "priors": backbone_priors, "report": {...}}``; the report
    counts the encoder passes the sharing saved (what per-detector caching would have spent on top).
    """
    conditions = benchmark_conditions(benchmark)
    caches: dict[str, dict[str, torch.Tensor]] = {}
    by_key: dict[str, dict[str, Any]] = {}
    for params in detector_params:
        model, augment = params["model"], params.get("augment") or {}
        detector = detector_nodes.build_from_params(model)
        if not detector.frozen_backbone:
            continue
        preprocess = detector_nodes.preprocess_for(detector, data)
        bank = AugmentConfig.from_dict(augment)
        recipe = {k: v for k, v in asdict(bank).items() if k != "hflip"} if bank.bank else None
        prior_key = (backbone_priors.get(model["method"]) or {}).get("key")
        key = fingerprint(detector.init_spec.get("backbone"), prior_key, preprocess.to_dict(), recipe)
        entry = by_key.get(key)
        if entry is None:
            started = time.perf_counter()
            cache = detector_nodes.cache_features(manifest, model, data, conditions, augment=augment,
                                                  detector=detector)
            entry = by_key[key] = {"cache": cache, "seconds": time.perf_counter() - started, "detectors": [],
                                   "images_encoded": int(sum(v.shape[0] for k, v in cache.items()
                                                             if k.startswith("features")))}
        entry["detectors"].append(model["method"])
        caches[model["method"]] = entry["cache"]
    keys = [{"key": key, "detectors": entry["detectors"], "encode_seconds": round(entry["seconds"], 3),
             "images_encoded": entry["images_encoded"]} for key, entry in by_key.items()]
    saved = sum((len(entry["detectors"]) - 1) * entry["seconds"] for entry in by_key.values())
    report = {"feature_keys": keys, "frozen_detectors": sorted(caches),
              "encode_seconds": round(sum(entry["seconds"] for entry in by_key.values()), 3),
              "encode_seconds_saved_by_sharing": round(saved, 3),
              "encoder_images_saved_by_sharing": sum((len(e["detectors"]) - 1) * e["images_encoded"]
                                                      for e in by_key.values())}
    log.info("shared feature store: %s", report)
    return {"caches": caches, "priors": backbone_priors, "report": report}


# ------------------------------------------------------------------------------ one detector
def benchmark_detector(manifest: pd.DataFrame, shared: dict[str, Any], params: dict[str, Any],
                       data: dict[str, Any], benchmark: dict[str, Any]) -> pd.DataFrame:
    """Train + evaluate one detector in a child MLflow run; long per-generator results per condition.

    Any failure propagates: a detector that cannot be benchmarked fails the pipeline (it is never
    left out of the leaderboard).
    """
    model = params["model"]
    method = model["method"]
    features = shared["caches"].get(method)
    evaluation = {**params["evaluation"], "conditions": benchmark_conditions(benchmark)}
    checkpoint_dir = str(Path(benchmark["checkpoint_dir"]) / method)
    logged = {"model": model, "train": params["train"], "augment": params.get("augment") or {}}
    with detection.child_run(BENCHMARK, benchmark.get("experiment", "genguard"), method, logged):
        started = time.perf_counter()
        trained, summary = detector_nodes.train_detector(manifest, features, model, params["train"],
                                                         params.get("augment") or {}, data, checkpoint_dir,
                                                         (shared.get("priors") or {}).get(method))
        scores, metrics, _headline, table, figures, _roc = detector_nodes.evaluate_detector(
            trained, manifest, features, evaluation, data)
        log_evaluation(metrics, table, figures, group_column=GROUP)  # test/mean_acc, test_<condition>/mean_acc, ...
        results = detection.long_results(method, scores, GROUP, float(evaluation.get("threshold", 0.5)))
        mlflow.log_metric("benchmark_seconds", time.perf_counter() - started)
    log.info("%s: trained in %.1f s, clean mean acc %.3f", method, summary["seconds"],
             results.loc[results["condition"] == "clean", "acc"].mean())
    return results


# ------------------------------------------------------------------------------ leaderboard
def expected_generators(manifest: pd.DataFrame, benchmark: dict[str, Any]) -> list[str]:
    """The families the leaderboard must cover: configured, else every family in the dataset."""
    configured = benchmark.get("generators")
    if configured:
        return list(configured)
    return sorted(manifest[GROUP].astype(str).unique())


def build_leaderboard(manifest: pd.DataFrame, data: dict[str, Any], benchmark: dict[str, Any],
                      shared: dict[str, Any], *results: pd.DataFrame
                      ) -> tuple[pd.DataFrame, str, dict[str, bytes], dict[str, Any], dict[str, Any]]:
    """Leaderboard CSV, Markdown, heatmaps, DVC metrics and DVC plot records; logged to the parent run."""
    combined = pd.concat(results, ignore_index=True)
    detectors = detection.check_every_detector_reported(results)
    generators = expected_generators(manifest, benchmark)
    trained_on = detector_nodes.training_generators(data) or []
    board = lb.build_leaderboard(combined, systems=detectors, groups=generators,
                                 conditions=benchmark_conditions(benchmark),
                                 held_out=[g for g in generators if g not in trained_on] or None,
                                 rank_by=RANK_METRICS, system_column=SYSTEM, group_column=GROUP)
    markdown, figures, metrics, plot = detection.leaderboard_outputs(
        board, title="AIGI detection leaderboard", train_groups=trained_on, group_label="generator",
        metrics_shown=RANK_METRICS)
    detection.log_leaderboard(BENCHMARK, benchmark.get("experiment", "genguard"), board, markdown, figures, metrics,
                              reports={"shared_features": shared["report"]},
                              extra_metrics={"shared_features/encode_seconds_saved":
                                             shared["report"]["encode_seconds_saved_by_sharing"]})
    return board, markdown, figures, metrics, plot
