"""Nodes of the detector pipeline template: thin adapters from Kedro parameters to the core.

Every function is pure in its inputs and outputs except ``register_detector`` (MLflow) and the
validation report file, whose path is a parameter so it survives a failed validation.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genguard.data.manifest import BadFile, DataValidationError
from genguard.data.splits import protocol_splits
from genguard.data.transforms import FeatureRows, ManifestImages, Preprocess
from genguard.io.model_store import LoadedDetector
from genguard.methods import Detector, build_detector
from genguard.training.engine import TrainConfig, fingerprint, predict_logits

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ data
def ingest_images(data: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Manifest of the images named by ``data.source``: the embedded default or a user folder."""
    if data["source"] == "embedded":
        from genguard.data.default_aigi import build_default_aigi_dataset

        embedded = data["embedded"]
        photo_root = Path(embedded["photo_root"]) if embedded.get("photo_root") else None
        manifest = build_default_aigi_dataset(Path(embedded["out_dir"]), embedded.get("config") or {},
                                              photo_root=photo_root)
        return manifest, []
    from genguard.data.layouts import ingest

    manifest, bad_files = ingest(data["source"], data.get("layout", "auto"),
                                 split_fractions=data.get("split_fractions"), seed=data.get("seed", 0),
                                 min_side=data.get("min_side", 32))
    return manifest, [asdict(bad) for bad in bad_files]


def validate_dataset(raw_manifest: pd.DataFrame, bad_files: list[dict[str, str]], data: dict[str, Any],
                     reports_dir: str) -> pd.DataFrame:
    """Stops the run (or drops bad files, per ``data.on_bad_file``) before any training starts."""
    from genguard.data.validation import validate_manifest

    manifest, _report = validate_manifest(
        raw_manifest, [BadFile(**bad) for bad in bad_files],
        report_path=Path(reports_dir) / "data_validation.json",
        on_bad_file=data.get("on_bad_file", "fail"), min_side=data.get("min_side", 32),
        expectations=data.get("great_expectations", True))
    return manifest


def _train_generators(data: dict[str, Any]) -> list[str] | None:
    if data["source"] == "embedded":
        return data["embedded"].get("train_generators")
    return data.get("train_generators")


def _splits(manifest: pd.DataFrame, data: dict[str, Any]) -> dict[str, pd.DataFrame]:
    return protocol_splits(manifest, _train_generators(data), data.get("max_per_group"), data.get("seed", 0))


def _preprocess(detector: Detector, data: dict[str, Any]) -> Preprocess:
    backbone = detector.backbone
    return Preprocess(image_size=backbone.image_size, mean=backbone.image_mean, std=backbone.image_std,
                      resize_mode=data.get("resize_mode", "resize"))


def _build(model: dict[str, Any]) -> Detector:
    return build_detector(model["method"], backbone=model.get("backbone"), **(model.get("options") or {}))


# ----------------------------------------------------------------------------------- features
def cache_features(manifest: pd.DataFrame, model: dict[str, Any], data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Frozen backbones: encode every row once (clean images); training and clean evaluation reuse it.

    Rows are keyed by sha256 so the cache stays valid whatever order later nodes read it in.
    Returns an empty dict for methods that fine-tune the backbone.
    """
    detector = _build(model)
    if not detector.frozen_backbone:
        return {"features": torch.zeros(0), "row_sha256": torch.zeros(0, dtype=torch.uint8)}
    preprocess = _preprocess(detector, data)
    frames = _splits(manifest, data)
    rows = pd.concat(frames.values()).drop_duplicates("path").reset_index(drop=True)
    detector.eval()
    features = []
    images = ManifestImages(rows, preprocess)
    from genguard.training.engine import make_loader
    from tqdm.auto import tqdm

    with torch.no_grad():
        for batch in tqdm(make_loader(images, 128, shuffle=False), desc="caching backbone features",
                          leave=False, disable=None):
            features.append(detector.encode(batch["image"]))
    sha = np.stack([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in rows["sha256"]])
    log.info("cached %d backbone features of size %d", len(rows), features[0].shape[1] if features else 0)
    return {"features": torch.cat(features).contiguous(), "row_sha256": torch.from_numpy(sha.copy())}


def _feature_rows(cache: dict[str, torch.Tensor], frame: pd.DataFrame) -> FeatureRows:
    index = {bytes(row.numpy()).hex(): i for i, row in enumerate(cache["row_sha256"])}
    try:
        positions = [index[h] for h in frame["sha256"]]
    except KeyError as missing:
        raise DataValidationError(f"feature cache lacks the image with sha256 {missing}; "
                                  "rerun the cache_features node (the manifest changed)") from None
    return FeatureRows(cache["features"][positions], torch.as_tensor(frame["label"].to_numpy().copy()))


def _has_features(cache: dict[str, torch.Tensor]) -> bool:
    return cache is not None and cache.get("features") is not None and cache["features"].numel() > 0


# ------------------------------------------------------------------------------------ training
def train_detector(manifest: pd.DataFrame, features: dict[str, torch.Tensor], model: dict[str, Any],
                   train: dict[str, Any], data: dict[str, Any],
                   checkpoint_dir: str) -> tuple[LoadedDetector, dict[str, Any]]:
    config = TrainConfig.from_dict(train)
    # Heads, adapters and noise generators are initialised from the global RNG: seed it here, or
    # two runs of the same config start from different weights (torch seeds each process randomly).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        detector = _build(model)
    preprocess = _preprocess(detector, data)
    frames = _splits(manifest, data)
    if _has_features(features):
        train_set, val_set = _feature_rows(features, frames["train"]), _feature_rows(features, frames["val"])
    else:
        train_set = ManifestImages(frames["train"], preprocess, hflip=config.hflip)
        val_set = ManifestImages(frames["val"], preprocess)
    data_key = fingerprint(sorted(frames["train"]["sha256"]), sorted(frames["val"]["sha256"]),
                           preprocess.to_dict())
    log.info("training %s on %d images (val %d) with the %s backend", model["method"], len(train_set),
             len(val_set), config.backend)

    from genguard.tracking.callbacks import MlflowEpochLogger

    logger = MlflowEpochLogger()
    if config.backend == "deepspeed":
        from genguard.training.deepspeed_backend import fit_distributed

        result = fit_distributed(detector, train_set, val_set, config, checkpoint_dir=Path(checkpoint_dir))
    else:
        from genguard.training.engine import fit

        result = fit(detector, train_set, val_set, config, checkpoint_dir=Path(checkpoint_dir),
                     callbacks=[logger], data_fingerprint=data_key)
    logger.backfill(result.history)
    summary = {"method": model["method"], "history": result.history, "best": result.best,
               "resumed_from_epoch": result.resumed_from_epoch, "seconds": result.seconds,
               "n_train": len(train_set), "n_val": len(val_set), "backend": config.backend,
               "trainable_parameters": sum(p.numel() for p in detector.parameters() if p.requires_grad)}
    trained = LoadedDetector(detector, preprocess, {"extra": {"best": result.best}})
    return trained, summary


# ---------------------------------------------------------------------------------- evaluation
def _scores(detector: LoadedDetector, frame: pd.DataFrame, features: dict[str, torch.Tensor] | None,
            perturbation: str, batch_size: int) -> np.ndarray:
    from genguard.evaluation.perturbations import get_perturbation

    model = detector.model
    if perturbation == "clean" and _has_features(features):
        dataset = _feature_rows(features, frame)
    else:
        dataset = ManifestImages(frame, detector.preprocess,
                                 perturbation=None if perturbation == "clean" else get_perturbation(perturbation))
    logits = predict_logits(model, dataset, batch_size, progress=f"scoring ({perturbation})")
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def evaluate_detector(detector: LoadedDetector, manifest: pd.DataFrame, features: dict[str, torch.Tensor],
                      evaluation: dict[str, Any], data: dict[str, Any]
                      ) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, dict[str, bytes], dict[str, Any]]:
    """Per-generator metrics on the test split, clean and under each perturbation, plus plots."""
    from sklearn.metrics import roc_curve

    from genguard.evaluation import plots
    from genguard.evaluation.metrics import per_generator_table, summarise

    threshold = float(evaluation.get("threshold", 0.5))
    batch_size = int(evaluation.get("batch_size", 128))
    test = _splits(manifest, data)["test"]
    if test.empty:
        raise DataValidationError("the test split is empty: nothing to evaluate (check data.split_fractions)")
    detector.model.eval()
    frames = []
    for perturbation in ["clean", *evaluation.get("perturbations", [])]:
        scored = test[["path", "generator", "label", "sha256"]].copy()
        scored["score"] = _scores(detector, test, features, perturbation, batch_size)
        scored["perturbation"] = perturbation
        frames.append(scored)
    scores = pd.concat(frames, ignore_index=True)
    clean = scores[scores["perturbation"] == "clean"]
    summary = summarise(clean, threshold)
    summary["perturbations"] = {
        name: {k: v for k, v in summarise(group, threshold).items() if k in ("acc", "ap", "auc", "mean_acc", "mean_ap")}
        for name, group in scores.groupby("perturbation") if name != "clean"}
    table = per_generator_table(clean, threshold)
    figures = {
        "roc_curve": plots.roc_curve_png(clean),
        "score_histogram": plots.score_histogram_png(clean),
        "confusion_matrix": plots.confusion_matrix_png(clean["label"].to_numpy(), clean["score"].to_numpy(),
                                                       threshold),
        "per_generator": plots.per_generator_bar_png(table),
    }
    fpr, tpr, _ = roc_curve(clean["label"], clean["score"])
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).round().astype(int))
    roc = {"roc": [{"fpr": float(fpr[i]), "tpr": float(tpr[i])} for i in keep]}
    return scores, summary, table, figures, roc


# -------------------------------------------------------------------------------- registration
def register_detector(detector: LoadedDetector, train_summary: dict[str, Any], metrics: dict[str, Any],
                      per_generator: pd.DataFrame, plots: dict[str, bytes],
                      registry: dict[str, Any]) -> dict[str, Any]:
    """Log evaluation + model to the active MLflow run; register a version; move aliases."""
    from genguard.io.model_store import save_detector
    from genguard.tracking.mlflow_tracking import active_or_new_run, log_evaluation
    from genguard.tracking.registry import log_and_register_detector

    best = train_summary["best"]
    with active_or_new_run(registry.get("experiment", "genguard"), train_summary["method"]):
        log_evaluation(metrics, per_generator, plots)
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = save_detector(detector.model, Path(tmp) / "detector", detector.preprocess,
                                      extra={"best": best})
            info = log_and_register_detector(
                model_dir, registered_model_name=registry["model_name"],
                validation_metric=best.get("metric", "val/auc"), validation_value=float(best["value"]),
                greater_is_better=True)
    log.info("registered %s version %s (aliases: %s)", info["name"], info["version"], info["aliases"])
    return info
