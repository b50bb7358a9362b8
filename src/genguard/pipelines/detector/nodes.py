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
from tqdm.auto import tqdm

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
    from genguard.data.manifest import normalise_manifest

    options = {"split_fractions": data.get("split_fractions"), "seed": data.get("seed", 0),
               "min_side": data.get("min_side", 32)}
    manifest, bad_files = ingest(data["source"], data.get("layout", "auto"), **options)
    suites = [manifest]
    # Test-only collections (the papers' open-world suites): every file is a test image, and the
    # subset is named <suite>/<subset> so equal subset names in two suites stay apart.
    for suite, root in (data.get("test_sources") or {}).items():
        frame, bad = ingest(root, "forensynths", **options)
        frame = frame.assign(split="test", generator=suite + "/" + frame["generator"].astype(str))
        suites.append(frame)
        bad_files.extend(bad)
    if len(suites) > 1:
        manifest = normalise_manifest(pd.concat(suites, ignore_index=True))
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


def train_generators(data: dict[str, Any]) -> list[str] | None:
    if data["source"] == "embedded":
        return data["embedded"].get("train_generators")
    return data.get("train_generators")


def protocol_frames(manifest: pd.DataFrame, data: dict[str, Any]) -> dict[str, pd.DataFrame]:
    return protocol_splits(manifest, train_generators(data), data.get("max_per_group"), data.get("seed", 0))


def preprocess_for(detector: Detector, data: dict[str, Any]) -> Preprocess:
    backbone = detector.backbone
    options = {"image_size": backbone.image_size, "mean": backbone.image_mean, "std": backbone.image_std,
               "resize_mode": data.get("resize_mode", "resize")}
    options.update(detector.preprocess_overrides())  # e.g. NS-Net/DGS-Net: patch selection, ImageNet stats
    return Preprocess(**options)


def _text_features(detector: Detector, frame: pd.DataFrame, data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Row-aligned caption embeddings for methods that read captions; {} for the others.

    Missing captions fail here, before any training step (``captions_for`` names the files).
    """
    if not detector.uses_captions:
        return {}
    from genguard.data.captions import captions_for

    return {"text_features": detector.encode_captions(captions_for(frame, data.get("captions")))}


def build_from_params(model: dict[str, Any]) -> Detector:
    return build_detector(model["method"], backbone=model.get("backbone"), **(model.get("options") or {}))


# ----------------------------------------------------------------------------------- features
def encode_rows(detector: Detector, frame: pd.DataFrame, preprocess: Preprocess, perturbation: str = "clean",
                batch_size: int = 128) -> torch.Tensor:
    """Frozen-encoder features of ``frame``'s images (optionally degraded first), in row order."""
    from genguard.evaluation.perturbations import get_perturbation
    from genguard.training.engine import make_loader

    images = ManifestImages(frame, preprocess,
                            perturbation=None if perturbation == "clean" else get_perturbation(perturbation))
    detector.eval()
    features = []
    with torch.no_grad():
        for batch in tqdm(make_loader(images, batch_size, shuffle=False), desc=f"encoding ({perturbation})",
                          leave=False, disable=None):
            features.append(detector.encode(batch["image"]))
    return torch.cat(features).contiguous() if features else torch.zeros(0)


def _sha_tensor(frame: pd.DataFrame) -> torch.Tensor:
    sha = np.stack([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in frame["sha256"]])
    return torch.from_numpy(sha.copy())


def cache_features(manifest: pd.DataFrame, model: dict[str, Any], data: dict[str, Any],
                   perturbations: list[str] | tuple[str, ...] = (),
                   detector: Detector | None = None) -> dict[str, torch.Tensor]:
    """Frozen backbones: encode every row once; training and evaluation reuse it.

    Clean features cover every split (key ``features``); each test-time degradation in
    ``perturbations`` is encoded once for the test rows (``features@<name>``). Rows are keyed by
    sha256 so the cache stays valid whatever order later nodes read it in. Returns empty tensors
    for methods that fine-tune the backbone. ``detector``: one already built from ``model`` (not rebuilt).
    """
    detector = detector if detector is not None else build_from_params(model)
    if not detector.frozen_backbone:
        return {"features": torch.zeros(0), "row_sha256": torch.zeros(0, dtype=torch.uint8)}
    preprocess = preprocess_for(detector, data)
    frames = protocol_frames(manifest, data)
    rows = pd.concat(frames.values()).drop_duplicates("path").reset_index(drop=True)
    cache = {"features": encode_rows(detector, rows, preprocess), "row_sha256": _sha_tensor(rows)}
    test = frames["test"].drop_duplicates("path").reset_index(drop=True)
    for perturbation in perturbations:
        if perturbation != "clean":
            cache[f"features@{perturbation}"] = encode_rows(detector, test, preprocess, perturbation)
            cache[f"row_sha256@{perturbation}"] = _sha_tensor(test)
    log.info("cached %d backbone features of size %d (+ %d degraded test sets)", len(rows),
             cache["features"].shape[1] if len(rows) else 0, len([p for p in perturbations if p != "clean"]))
    return cache


def _feature_rows(cache: dict[str, torch.Tensor], frame: pd.DataFrame, perturbation: str = "clean",
                  extras: dict[str, torch.Tensor] | None = None) -> FeatureRows:
    suffix = "" if perturbation == "clean" else f"@{perturbation}"
    index = {bytes(row.numpy()).hex(): i for i, row in enumerate(cache["row_sha256" + suffix])}
    try:
        positions = [index[h] for h in frame["sha256"]]
    except KeyError as missing:
        raise DataValidationError(f"feature cache lacks the image with sha256 {missing}; "
                                  "rerun the cache_features node (the manifest changed)") from None
    return FeatureRows(cache["features" + suffix][positions], torch.as_tensor(frame["label"].to_numpy().copy()),
                       extras=extras)


def _has_features(cache: dict[str, torch.Tensor] | None, perturbation: str = "clean") -> bool:
    key = "features" if perturbation == "clean" else f"features@{perturbation}"
    return cache is not None and cache.get(key) is not None and cache[key].numel() > 0


# ------------------------------------------------------------------------------------ training
def train_detector(manifest: pd.DataFrame, features: dict[str, torch.Tensor], model: dict[str, Any],
                   train: dict[str, Any], data: dict[str, Any],
                   checkpoint_dir: str) -> tuple[LoadedDetector, dict[str, Any]]:
    """Build the detector (seeded), then one engine run per training stage (most methods: one).

    Stage ``s`` of a multi-stage method checkpoints under ``checkpoint_dir/s`` and logs its curves
    to MLflow as ``s/...``; the last stage logs plain ``train/*``/``val/*`` and picks the champion.
    """
    config = TrainConfig.from_dict(train)
    # Heads, adapters and noise generators are initialised from the global RNG: seed it here, or
    # two runs of the same config start from different weights (torch seeds each process randomly).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        detector = build_from_params(model)
    preprocess = preprocess_for(detector, data)
    frames = protocol_frames(manifest, data)
    train_extras = _text_features(detector, frames["train"], data)
    val_extras = _text_features(detector, frames["val"], data)
    if _has_features(features):
        train_set = _feature_rows(features, frames["train"], extras=train_extras)
        val_set = _feature_rows(features, frames["val"], extras=val_extras)
    else:
        train_set = ManifestImages(frames["train"], preprocess, hflip=config.hflip, train=True, extras=train_extras)
        val_set = ManifestImages(frames["val"], preprocess, extras=val_extras)
    data_key = fingerprint(sorted(frames["train"]["sha256"]), sorted(frames["val"]["sha256"]),
                           preprocess.to_dict(), data.get("captions"))
    log.info("training %s on %d images (val %d) with the %s backend", model["method"], len(train_set),
             len(val_set), config.backend)

    from genguard.tracking.callbacks import MlflowEpochLogger

    stages = detector.training_stages()
    history: list[dict[str, Any]] = []
    seconds, resumed, result = 0.0, None, None
    for position, (stage, overrides) in enumerate(stages):
        last = position == len(stages) - 1
        stage_config = TrainConfig.from_dict({**config.to_dict(), **overrides})
        stage_dir = Path(checkpoint_dir) if len(stages) == 1 else Path(checkpoint_dir) / stage
        detector.begin_stage(stage, train_set)
        logger = MlflowEpochLogger(prefix="" if last else f"{stage}/")
        if stage_config.backend == "deepspeed":
            from genguard.training.deepspeed_backend import fit_distributed

            result = fit_distributed(detector, train_set, val_set, stage_config, checkpoint_dir=stage_dir,
                                     stage=stage, log_prefix=logger.prefix)
        else:
            from genguard.training.engine import fit

            result = fit(detector, train_set, val_set, stage_config, checkpoint_dir=stage_dir,
                         callbacks=[logger], data_fingerprint=fingerprint(data_key, stage, position))
        logger.backfill(result.history)
        history.extend({"stage": stage, **record} for record in result.history)
        seconds += result.seconds
        resumed = result.resumed_from_epoch if resumed is None else resumed
    summary = {"method": model["method"], "history": history, "best": result.best,
               "stages": [stage for stage, _ in stages],
               "resumed_from_epoch": resumed, "seconds": seconds,
               "n_train": len(train_set), "n_val": len(val_set), "backend": config.backend,
               "trainable_parameters": sum(p.numel() for p in detector.parameters() if p.requires_grad)}
    extra = {"best": result.best}
    if detector.uses_captions:
        extra["captions"] = data.get("captions") or {"kind": "template"}
    trained = LoadedDetector(detector, preprocess, {"extra": extra})
    return trained, summary


# ---------------------------------------------------------------------------------- evaluation
def _scores(detector: LoadedDetector, frame: pd.DataFrame, features: dict[str, torch.Tensor] | None,
            perturbation: str, batch_size: int, extras: dict[str, torch.Tensor]) -> np.ndarray:
    from genguard.evaluation.perturbations import get_perturbation

    model = detector.model
    if _has_features(features, perturbation):
        dataset = _feature_rows(features, frame, perturbation, extras=extras)
    else:
        dataset = ManifestImages(frame, detector.preprocess, extras=extras,
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
    test = protocol_frames(manifest, data)["test"]
    if test.empty:
        raise DataValidationError("the test split is empty: nothing to evaluate (check data.split_fractions)")
    detector.model.eval()
    # Only methods that classify with captions get them at test time (DGS-Net uses them in training
    # only). Degraded copies keep their clean image's caption: a captioner names the scene, which they share.
    needs_text = getattr(detector.model, "needs_captions_at_inference", False)
    extras = _text_features(detector.model, test, data) if needs_text else {}
    frames = []
    for perturbation in ["clean", *evaluation.get("perturbations", [])]:
        scored = test[["path", "generator", "label", "sha256"]].copy()
        scored["score"] = _scores(detector, test, features, perturbation, batch_size, extras)
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
                                      extra={**detector.config.get("extra", {}), "best": best})
            info = log_and_register_detector(
                model_dir, registered_model_name=registry["model_name"],
                validation_metric=best.get("metric", "val/auc"), validation_value=float(best["value"]),
                greater_is_better=True)
    log.info("registered %s version %s (aliases: %s)", info["name"], info["version"], info["aliases"])
    return info
