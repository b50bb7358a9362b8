"""Nodes of the face-forgery detector template: thin adapters from Kedro parameters to the family and core.

ingest (decode + crop, cached) -> validate -> cache_features (frozen backbones only) -> train ->
evaluate (frame and video level, per test set and forgery, clean and perturbed) -> register.
The data block is ``params:face_data`` (the AIGI family has its own ``data``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genguard.data.images import ManifestImages
from genguard.data.manifest import DataValidationError
from genguard.data.sources import train_groups
from genguard.data.splits import protocol_splits
from genguard.evaluation import plots
from genguard.evaluation.conditions import get_condition
from genguard.evaluation.evaluators import BinaryEvaluator, predict_outputs
from genguard.evaluation.metrics import sigmoid
from genguard.families.face import FACE_SCHEMA, FAMILY, GROUP, REAL, FaceDetector, build_detector
from genguard.families.face import evaluation as protocol
from genguard.families.face.sources import DEFAULT_FRAMES_DIR, TRAIN_SETTING
from genguard.io.model_files import ModelFiles
from genguard.models.detector import TrainedDetector
from genguard.pipelines import detection
from genguard.tracking.callbacks import MlflowEpochLogger
from genguard.training import TrainConfig, count_parameters, fingerprint
from genguard.training.stages import run_stages

log = logging.getLogger(__name__)
SCORE_COLUMNS = ("path", "sha256", "label", "split", "dataset", GROUP, "video_id", "identity", "frame_index")


# ------------------------------------------------------------------------------------------ data
def ingest_faces(data: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Face-crop manifest of ``face_data.source``: the embedded default, or video folders in a published
    layout (decoded and cropped once; reruns read the crop cache)."""
    # The crop cache is a DVC output of the dataset stage: it exists even when no video was cropped.
    Path(data.get("frames_dir") or DEFAULT_FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    return detection.ingest(FAMILY, data)


def validate_faces(raw_manifest: pd.DataFrame, bad_files: list[dict[str, str]], data: dict[str, Any],
                   reports_dir: str) -> pd.DataFrame:
    """Bad videos and crops, a label that contradicts its forgery, a video or identity in two splits:
    named here, before any training (``face_data.on_bad_file``: fail | exclude)."""
    return detection.validate(raw_manifest, bad_files, data, reports_dir, FACE_SCHEMA)


def training_forgeries(data: dict[str, Any]) -> list[str] | None:
    """``face_data.train_forgeries`` (reals always included), else the source's own protocol."""
    groups = train_groups(FAMILY, data, GROUP, setting=TRAIN_SETTING)
    if groups is None:
        return None
    return [REAL, *[g for g in groups if g != REAL]]


def protocol_frames(manifest: pd.DataFrame, data: dict[str, Any]) -> dict[str, pd.DataFrame]:
    return protocol_splits(manifest, group_column=GROUP, train_groups=training_forgeries(data),
                           max_per_group=data.get("max_per_group"), seed=data.get("seed", 0),
                           setting=f"face_data.{TRAIN_SETTING}")


def build_from_params(model: dict[str, Any]) -> FaceDetector:
    return build_detector(model["method"], backbone=model.get("backbone"), **(model.get("options") or {}))


# ----------------------------------------------------------------------------------- features
def cache_features(manifest: pd.DataFrame, model: dict[str, Any], data: dict[str, Any],
                   conditions: list[str] | tuple[str, ...] = (), detector: FaceDetector | None = None
                   ) -> dict[str, torch.Tensor]:
    """Frozen backbones (SeLop's ``feature`` variant): every crop encoded once, test crops once per
    condition; empty for methods that change the backbone (Effort, MASM, SeLop ``layer``)."""
    detector = detector if detector is not None else build_from_params(model)
    if not detector.frozen_backbone:
        return detection.no_features()
    preprocess = detection.preprocess_for(detector, data)
    frames = protocol_frames(manifest, data)
    rows = pd.concat(frames.values()).drop_duplicates("path").reset_index(drop=True)
    test = frames["test"].drop_duplicates("path").reset_index(drop=True)
    return detection.encode_cache(detector, rows, test, preprocess, list(conditions))


# ------------------------------------------------------------------------------------ training
def train_detector(manifest: pd.DataFrame, features: dict[str, torch.Tensor], model: dict[str, Any],
                   train: dict[str, Any], augment: dict[str, Any], data: dict[str, Any],
                   checkpoint_dir: str) -> tuple[TrainedDetector, dict[str, Any]]:
    """Build the detector (seeded) and train it; the checkpoint kept is the best on validation
    (``train.monitor``), never chosen on a test set."""
    config = TrainConfig.from_dict(train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # heads and adapters init from the global RNG
        detector = build_from_params(model)
    preprocess = detection.preprocess_for(detector, data)
    frames = protocol_frames(manifest, data)
    hflip = bool((augment or {}).get("hflip", False))
    if detection.has_features(features):
        train_set = detection.feature_rows(features, frames["train"])
        val_set = detection.feature_rows(features, frames["val"])
    else:
        train_set = ManifestImages(frames["train"], preprocess, hflip=hflip, train=True)
        val_set = ManifestImages(frames["val"], preprocess)
    data_key = fingerprint(sorted(frames["train"]["sha256"]), sorted(frames["val"]["sha256"]),
                           preprocess.to_dict(), augment)
    log.info("training %s on %d face crops (val %d; forgeries %s) with the %s backend", model["method"],
             len(train_set), len(val_set), training_forgeries(data) or "all", config.backend)
    result, history, seconds, resumed = run_stages(
        detector, train_set, val_set, config, evaluator=BinaryEvaluator(), checkpoint_dir=checkpoint_dir,
        data_fingerprint=data_key, logger=lambda prefix: MlflowEpochLogger(prefix=prefix), desc=model["method"])
    trainable = count_parameters(detector)
    log.info("%s: %d trainable parameters", model["method"], trainable)
    summary = {"method": model["method"], "history": history, "best": result.best,
               "stages": [stage for stage, _ in detector.training_stages()], "resumed_from_epoch": resumed,
               "seconds": seconds, "n_train": len(train_set), "n_val": len(val_set), "backend": config.backend,
               "trainable_parameters": trainable}
    return TrainedDetector(detector, preprocess, {"best": result.best}), summary


# ---------------------------------------------------------------------------------- evaluation
def _frame_scores(detector: TrainedDetector, frame: pd.DataFrame, features: dict[str, torch.Tensor] | None,
                  condition: str, batch_size: int) -> np.ndarray:
    if detection.has_features(features, condition):
        dataset = detection.feature_rows(features, frame, condition)
    else:
        dataset = ManifestImages(frame, detector.preprocess,
                                 condition=None if condition == "clean" else get_condition(condition))
    return sigmoid(predict_outputs(detector.model, dataset, batch_size=batch_size, desc=f"scoring ({condition})"))


def score_test_set(detector: TrainedDetector, manifest: pd.DataFrame, features: dict[str, torch.Tensor] | None,
                   conditions: list[str], data: dict[str, Any], batch_size: int = 128) -> pd.DataFrame:
    """P(fake) of every test crop, clean and under each condition (long: one row per crop x condition)."""
    test = protocol_frames(manifest, data)["test"]
    if test.empty:
        raise DataValidationError("the test split is empty: nothing to evaluate (check face_data.source and its "
                                  "split lists, or face_data.test_sources)")
    detector.model.eval()
    frames = []
    for condition in ["clean", *[c for c in conditions if c != "clean"]]:
        scored = test[list(SCORE_COLUMNS)].copy()
        scored["score"] = _frame_scores(detector, test, features, condition, batch_size)
        scored["condition"] = condition
        frames.append(scored)
    return pd.concat(frames, ignore_index=True)


def evaluate_detector(model: TrainedDetector | ModelFiles, manifest: pd.DataFrame,
                      features: dict[str, torch.Tensor], evaluation: dict[str, Any], data: dict[str, Any]
                      ) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float], pd.DataFrame, dict[str, bytes],
                                 dict[str, Any]]:
    """Per ``<dataset>/<forgery>`` metrics at video and frame level, clean and under each condition.

    Returns (frame scores, the evaluation summary, the headline numbers DVC tracks, the per-group
    table, figures, video-level ROC points).
    """
    detector = TrainedDetector.coerce(model)
    threshold = float(evaluation.get("threshold", 0.5))
    scores = score_test_set(detector, manifest, features, list(evaluation.get("conditions") or []), data,
                            int(evaluation.get("batch_size", 128)))
    clean = scores[scores["condition"] == "clean"].drop(columns="condition")
    summary = protocol.summary(clean, threshold)
    summary["conditions"] = {
        name: {k: v for k, v in protocol.summary(group.drop(columns="condition"), threshold).items()
               if k in ("auc", "mean_auc", "mean_eer", "mean_ap", "frame_mean_auc")}
        for name, group in scores.groupby("condition") if name != "clean"}
    table = protocol.forgery_table(clean, threshold)
    videos = protocol.video_scores(clean)
    paired_videos = protocol.paired(videos)
    figures = {
        "roc_curve_video": plots.roc_curve_png(paired_videos, protocol.PAIR),
        "roc_curve_frame": plots.roc_curve_png(protocol.paired(clean), protocol.PAIR),
        "score_histogram_video": plots.score_histogram_png(videos, threshold),
        "confusion_matrix_video": plots.confusion_matrix_png(videos["label"].to_numpy(), videos["score"].to_numpy(),
                                                             threshold),
        "per_forgery": plots.group_bar_png(table, protocol.PAIR, metrics=("auc", "frame_auc")),
    }
    return scores, summary, headline(summary, table, data), table, figures, detection.roc_records(videos)


def held_out(group: str, data: dict[str, Any]) -> bool:
    """A ``<dataset>/<forgery>`` group the detector never trained on (another forgery or dataset)."""
    trained = training_forgeries(data)
    if trained is None:   # trained on every forgery of the training data set(s)
        return False
    return group.split("/", 1)[-1] not in trained


def headline(summary: dict[str, Any], table: pd.DataFrame, data: dict[str, Any]) -> dict[str, float]:
    """The numbers ``dvc metrics show`` compares: video- and frame-level mean AUC over groups, mean EER,
    and the video AUC over the forgeries the detector never trained on (cross-forgery/dataset)."""
    groups = table[table[protocol.PAIR] != "mean"]
    unseen = groups[groups[protocol.PAIR].map(lambda g: held_out(g, data))]
    return detection.rounded({
        "video_auc": summary["mean_auc"], "frame_auc": summary["frame_mean_auc"], "video_eer": summary["mean_eer"],
        "video_ap": summary["mean_ap"], "video_acc": summary["mean_acc"],
        "held_out_video_auc": float(unseen["auc"].mean()) if len(unseen) else float("nan")})


# -------------------------------------------------------------------------------- registration
def register_detector(model: TrainedDetector | ModelFiles, train_summary: dict[str, Any], metrics: dict[str, Any],
                      per_forgery: pd.DataFrame, figures: dict[str, bytes], registry: dict[str, Any]
                      ) -> dict[str, Any]:
    """Log evaluation + model to the active MLflow run; register a version; move aliases."""
    return detection.register(TrainedDetector.coerce(model), train_summary, metrics, per_forgery, figures, registry,
                              group_column=protocol.PAIR)
