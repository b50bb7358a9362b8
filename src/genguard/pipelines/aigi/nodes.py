"""Nodes of the AIGI detector template: thin adapters from Kedro parameters to the family and core.

ingest -> validate -> cache_features (frozen backbones only) -> train -> evaluate -> register.
Every function is pure in its inputs and outputs except ``register_detector`` (MLflow) and the
validation report file, whose path is a parameter so it survives a failed validation.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from genguard.data.images import ManifestImages, Preprocess
from genguard.data.manifest import DataValidationError
from genguard.data.sources import train_groups
from genguard.data.splits import protocol_splits
from genguard.evaluation import plots
from genguard.evaluation.conditions import get_condition
from genguard.evaluation.evaluators import BinaryEvaluator, predict_outputs
from genguard.evaluation.grouping import group_table, summarise
from genguard.families.aigi import AIGI_SCHEMA, FAMILY, GROUP, Detector, build_detector
from genguard.families.aigi.augment import AugmentConfig, BankCopy
from genguard.families.aigi.captions import captions_for
from genguard.families.aigi.inference import CaptionedDetector, as_trained_detector, fake_probability
from genguard.io.model_files import ModelFiles
from genguard.pipelines import detection
from genguard.pipelines.aigi.prior import ensure_backbone_prior
from genguard.pipelines.detection import encode_rows, feature_rows, has_features, roc_records, sha_tensor
from genguard.tracking.callbacks import MlflowEpochLogger
from genguard.training import TrainConfig, count_parameters, fingerprint
from genguard.training.stages import run_stages

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ data
def ingest_images(data: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Manifest of the images ``data.source`` names: a registered source or a folder."""
    return detection.ingest(FAMILY, data)


def validate_dataset(raw_manifest: pd.DataFrame, bad_files: list[dict[str, str]], data: dict[str, Any],
                     reports_dir: str) -> pd.DataFrame:
    """Stops the run (or drops bad files, per ``data.on_bad_file``) before any training starts."""
    return detection.validate(raw_manifest, bad_files, data, reports_dir, AIGI_SCHEMA)


def training_generators(data: dict[str, Any]) -> list[str] | None:
    """``data.train_generators``, else the data source's own protocol (embedded: ``gan_upsampler``)."""
    return train_groups(FAMILY, data, GROUP)


def protocol_frames(manifest: pd.DataFrame, data: dict[str, Any]) -> dict[str, pd.DataFrame]:
    return protocol_splits(manifest, group_column=GROUP, train_groups=training_generators(data),
                           max_per_group=data.get("max_per_group"), seed=data.get("seed", 0))


def preprocess_for(detector: Detector, data: dict[str, Any]) -> Preprocess:
    """NS-Net/DGS-Net fix patch selection and ImageNet statistics (``preprocess_overrides``)."""
    return detection.preprocess_for(detector, data)


def caption_features(detector: Detector, frame: pd.DataFrame, data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Row-aligned caption embeddings for methods that read captions; {} for the others.

    Missing captions fail here, before any training step (``captions_for`` names the files).
    """
    if not detector.uses_captions:
        return {}
    return {"text_features": detector.encode_captions(captions_for(frame, data.get("captions")))}


def prepare_backbone(manifest: pd.DataFrame, model: dict[str, Any], backbone_prior: dict[str, Any]) -> dict[str, Any]:
    """The aligned prior the detector's backbone names, built (or found cached) before it loads."""
    return ensure_backbone_prior(manifest, model.get("backbone"), backbone_prior)


def prepare_default_backbone(manifest: pd.DataFrame, backbone_prior: dict[str, Any]) -> dict[str, Any]:
    """``aigi_data``: the prior the embedded default's detectors name (``backbone_prior.backbone``)."""
    return ensure_backbone_prior(manifest, backbone_prior.get("backbone"), backbone_prior)


def build_from_params(model: dict[str, Any]) -> Detector:
    return build_detector(model["method"], backbone=model.get("backbone"), **(model.get("options") or {}))


# ----------------------------------------------------------------------------------- features
def cache_features(manifest: pd.DataFrame, model: dict[str, Any], data: dict[str, Any],
                   conditions: list[str] | tuple[str, ...] = (), augment: dict[str, Any] | None = None,
                   backbone_prior: dict[str, Any] | None = None, detector: Detector | None = None
                   ) -> dict[str, torch.Tensor]:
    """Frozen backbones: encode every row once; training and evaluation reuse it.

    Clean features cover every split (key ``features``); each test-time condition in ``conditions``
    is encoded once for the test rows (``features@<name>``); with ``augment.bank`` = K > 0, K
    augmented copies of each training row are encoded too (``features@bank``, [K, N, d]: UnivFD's
    training recipe without losing the cache). Rows are keyed by sha256 so the cache stays valid
    whatever order later nodes read it in. Returns empty tensors for methods that fine-tune the
    backbone. ``backbone_prior``: the report of ``prepare_backbone`` (it runs first: the backbone loads
    the prior). ``detector``: one already built from ``model`` (not rebuilt).
    """
    detector = detector if detector is not None else build_from_params(model)
    if not detector.frozen_backbone:
        return detection.no_features()
    preprocess = preprocess_for(detector, data)
    frames = protocol_frames(manifest, data)
    rows = pd.concat(frames.values()).drop_duplicates("path").reset_index(drop=True)
    test = frames["test"].drop_duplicates("path").reset_index(drop=True)
    degraded = [c for c in conditions if c != "clean"]
    cache = detection.encode_cache(detector, rows, test, preprocess, degraded)
    recipe = AugmentConfig.from_dict(augment)
    if recipe.bank:
        train = frames["train"].drop_duplicates("path").reset_index(drop=True)
        cache["features@bank"] = torch.stack([encode_rows(detector, train, preprocess, BankCopy(recipe, copy))
                                              for copy in range(recipe.bank)])
        cache["row_sha256@bank"] = sha_tensor(train)
    log.info("cached %d backbone features of size %d (+ %d degraded test sets, %d augmented training copies)",
             len(rows), cache["features"].shape[1] if len(rows) else 0, len(degraded), recipe.bank)
    return cache



# ------------------------------------------------------------------------------------ training
def train_detector(manifest: pd.DataFrame, features: dict[str, torch.Tensor], model: dict[str, Any],
                   train: dict[str, Any], augment: dict[str, Any], data: dict[str, Any],
                   checkpoint_dir: str, backbone_prior: dict[str, Any] | None = None
                   ) -> tuple[CaptionedDetector, dict[str, Any]]:
    """Build the detector (seeded), then one training-loop run per stage (most methods: one).

    Stage ``s`` of a multi-stage method checkpoints under ``checkpoint_dir/s`` and logs its curves
    to MLflow as ``s/...``; the last stage logs plain ``train/*``/``val/*`` and picks the champion.
    ``backbone_prior``: the prior's report; its key joins the checkpoint fingerprint (a rebuilt prior at
    the same path never resumes an old run) and the summary.
    """
    config = TrainConfig.from_dict(train)
    # Heads, adapters and noise generators are initialised from the global RNG: seed it here, or
    # two runs of the same config start from different weights (torch seeds each process randomly).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        detector = build_from_params(model)
    preprocess = preprocess_for(detector, data)
    frames = protocol_frames(manifest, data)
    train_extras = caption_features(detector, frames["train"], data)
    val_extras = caption_features(detector, frames["val"], data)
    recipe = AugmentConfig.from_dict(augment)
    if has_features(features):
        train_set = feature_rows(features, frames["train"], "bank" if has_features(features, "bank") else "clean",
                                  extras=train_extras)
        val_set = feature_rows(features, frames["val"], extras=val_extras)
    else:
        train_set = ManifestImages(frames["train"], preprocess, hflip=recipe.hflip, train=True, extras=train_extras)
        val_set = ManifestImages(frames["val"], preprocess, extras=val_extras)
    data_key = fingerprint(sorted(frames["train"]["sha256"]), sorted(frames["val"]["sha256"]),
                           preprocess.to_dict(), data.get("captions"), augment,
                           (backbone_prior or {}).get("key"))
    log.info("training %s on %d images (val %d) with the %s backend", model["method"], len(train_set),
             len(val_set), config.backend)

    stages = [stage for stage, _ in detector.training_stages()]
    result, history, seconds, resumed = run_stages(
        detector, train_set, val_set, config, evaluator=BinaryEvaluator(), checkpoint_dir=checkpoint_dir,
        data_fingerprint=data_key, logger=lambda prefix: MlflowEpochLogger(prefix=prefix), desc=model["method"])
    summary = {"method": model["method"], "history": history, "best": result.best,
               "stages": stages,
               "resumed_from_epoch": resumed, "seconds": seconds,
               "n_train": len(train_set), "n_val": len(val_set), "backend": config.backend,
               "trainable_parameters": count_parameters(detector),
               "backbone_prior": {k: v for k, v in (backbone_prior or {}).items()
                                  if k in ("prior", "key", "built", "retrieval_train", "retrieval_held_out")}}
    extra: dict[str, Any] = {"best": result.best}
    if detector.uses_captions:
        extra["captions"] = data.get("captions") or {"kind": "template"}
    return CaptionedDetector(detector, preprocess, extra), summary


# ---------------------------------------------------------------------------------- evaluation
def _scores(detector: CaptionedDetector, frame: pd.DataFrame, features: dict[str, torch.Tensor] | None,
            condition: str, batch_size: int, extras: dict[str, torch.Tensor]) -> np.ndarray:
    if has_features(features, condition):
        dataset = feature_rows(features, frame, condition, extras=extras)
    else:
        dataset = ManifestImages(frame, detector.preprocess, extras=extras,
                                 condition=None if condition == "clean" else get_condition(condition))
    logits = predict_outputs(detector.model, dataset, batch_size=batch_size, desc=f"scoring ({condition})")
    return fake_probability(logits)


def evaluate_detector(model: CaptionedDetector | ModelFiles, manifest: pd.DataFrame, features: dict[str, torch.Tensor],
                      evaluation: dict[str, Any], data: dict[str, Any]
                      ) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float], pd.DataFrame, dict[str, bytes],
                                 dict[str, Any]]:
    """Per-generator metrics on the test split, clean and under each condition, plus plots.

    Returns (scores, the full evaluation summary, the headline numbers DVC tracks, the per-generator
    table, figures, ROC points).
    """
    detector = as_trained_detector(model)
    threshold = float(evaluation.get("threshold", 0.5))
    batch_size = int(evaluation.get("batch_size", 128))
    test = protocol_frames(manifest, data)["test"]
    if test.empty:
        raise DataValidationError("the test split is empty: nothing to evaluate (check data.split_fractions)")
    detector.model.eval()
    # Only methods that classify with captions get them at test time (DGS-Net uses them in training
    # only). Degraded copies keep their clean image's caption: a captioner names the scene, which they share.
    needs_text = getattr(detector.model, "needs_captions_at_inference", False)
    extras = caption_features(detector.model, test, data) if needs_text else {}
    frames = []
    for condition in ["clean", *[c for c in evaluation.get("conditions", []) if c != "clean"]]:
        scored = test[["path", GROUP, "label", "sha256"]].copy()
        scored["score"] = _scores(detector, test, features, condition, batch_size, extras)
        scored["condition"] = condition
        frames.append(scored)
    scores = pd.concat(frames, ignore_index=True)
    clean = scores[scores["condition"] == "clean"]
    summary = summarise(clean, GROUP, threshold=threshold)
    summary["conditions"] = {
        name: {k: v for k, v in summarise(group, GROUP, threshold=threshold).items()
               if k in ("acc", "ap", "auc", "mean_acc", "mean_ap")}
        for name, group in scores.groupby("condition") if name != "clean"}
    table = group_table(clean, GROUP, threshold=threshold)
    figures = {
        "roc_curve": plots.roc_curve_png(clean, GROUP),
        "score_histogram": plots.score_histogram_png(clean, threshold),
        "confusion_matrix": plots.confusion_matrix_png(clean["label"].to_numpy(), clean["score"].to_numpy(),
                                                       threshold),
        "per_generator": plots.group_bar_png(table, GROUP),
    }
    return scores, summary, headline(summary, table, data), table, figures, roc_records(clean)


def headline(summary: dict[str, Any], table: pd.DataFrame, data: dict[str, Any]) -> dict[str, float]:
    """The few numbers ``dvc metrics show`` compares across runs (the rest stays in CSV and plots):
    clean AUC, unweighted means over generators, and the means over held-out generators."""
    trained_on = set(training_generators(data) or [])
    rows = table[(table[GROUP] != "mean") & ~table[GROUP].isin(trained_on)]
    out = {"auc": summary["auc"], "mean_acc": summary["mean_acc"], "mean_ap": summary["mean_ap"],
           "held_out_mean_acc": float(rows["acc"].mean()) if len(rows) else float("nan"),
           "held_out_mean_ap": float(rows["ap"].mean()) if len(rows) else float("nan")}
    return detection.rounded(out)


# -------------------------------------------------------------------------------- registration
def register_detector(model: CaptionedDetector | ModelFiles, train_summary: dict[str, Any], metrics: dict[str, Any],
                      per_generator: pd.DataFrame, figures: dict[str, bytes],
                      registry: dict[str, Any]) -> dict[str, Any]:
    """Log evaluation + model to the active MLflow run; register a version; move aliases."""
    return detection.register(as_trained_detector(model), train_summary, metrics, per_generator, figures, registry,
                              group_column=GROUP)
