"""The offline pretrained prior a detector's backbone names: built once from the data, cached, registered.

A detector whose ``model.backbone`` is a LiT config (``genguard-lit-effnet-lite0``) with
``pretrained: <path>/prior.safetensors`` needs that aligned prior before its backbone can load. This
node makes it when it is missing or was built from other inputs, and otherwise reuses it:

* alignment images: the *real* training rows of the manifest (never a fake, never a val/test row), so
  the prior learns nothing about what detection is tested on;
* captions (``backbone_prior.captions``): ``template+imagenet`` (default) joins the pixel-template scene
  description the caption-reading detectors also see with "a photo of a <class>" from the image tower's
  own ImageNet classifier; ``template`` or ``imagenet`` alone;
* cache key: the sha256 of those rows, the alignment config, the caption source and the backbone
  config; it sits in the file's header, so a changed dataset or recipe rebuilds it and nothing else does;
* MLflow: a new prior is logged (alignment metrics) and registered as a model version
  (``backbone_prior.registry.model_name``); its pyfunc embeds images.

Backbones that are not LiT configs, or LiT backbones with ``pretrained: null``, need nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch

from genguard.data.images import Preprocess, load_rgb
from genguard.families.aigi.captions import template_caption
from genguard.io.atomic import write_json_atomic
from genguard.models.backbones import BackboneSpec, backbone_config, create_backbone
from genguard.models.lit import (
    PRIOR_FORMAT,
    AlignConfig,
    build_lit_prior,
    imagenet_captions,
    read_prior_metadata,
)
from genguard.progress import progress
from genguard.tracking.registry import log_and_register_model
from genguard.training import fingerprint

log = logging.getLogger(__name__)
CAPTION_SOURCES = ("template+imagenet", "template", "imagenet")
MARKER = {"family": "backbone", "module": "genguard.models.backbones"}  # its pyfunc embeds images


def alignment_rows(manifest: pd.DataFrame, max_images: int | None = None) -> pd.DataFrame:
    """The real training rows, in sha256 order; the first ``max_images`` of them are a fixed pseudo-random
    subset (a big folder aligns on a sample instead of holding every image in memory)."""
    rows = manifest[(manifest["split"] == "train") & (manifest["label"] == 0)]
    rows = rows.drop_duplicates("sha256").sort_values("sha256").reset_index(drop=True)
    if max_images is not None:
        rows = rows.iloc[:max_images]
    if rows.empty:
        raise ValueError("the LiT prior aligns on the real training images, and the manifest has none: "
                         "check data.source, or set the backbone's pretrained: null")
    return rows


def captioner(backbone: Any, pictures: list, source: str) -> Callable[[torch.Tensor], list[str]]:
    """Captions of the alignment images as a function of their pooled features (encoded once)."""
    if source not in CAPTION_SOURCES:
        raise ValueError(f"backbone_prior.captions must be one of {CAPTION_SOURCES}, got {source!r}")
    template = [template_caption(picture) for picture in pictures] if "template" in source else None

    def caption(pooled: torch.Tensor) -> list[str]:
        classes = imagenet_captions(backbone, pooled) if "imagenet" in source else None
        if template and classes:
            return [f"{scene}, {thing}" for scene, thing in zip(template, classes, strict=True)]
        return template or classes  # type: ignore[return-value]

    return caption


def ensure_backbone_prior(manifest: pd.DataFrame, backbone: dict[str, Any] | None,
                          params: dict[str, Any] | None) -> dict[str, Any]:
    """Build (or find cached) the prior ``backbone`` names; returns its report (``key`` identifies it)."""
    spec = BackboneSpec.from_dict(backbone)
    config = backbone_config(spec.name) or {}
    if config.get("kind") != "lit" or not spec.pretrained:
        return {"backbone": spec.name, "prior": None}
    params = dict(params or {})
    align = AlignConfig.from_dict({**(params.get("align") or {}), "seed": spec.seed,
                                   "captions": params.get("captions", "template+imagenet")})
    rows = alignment_rows(manifest, params.get("max_images"))
    path = Path(spec.pretrained)
    # One prior per (config, data, recipe): detectors that run the tower at another input size
    # (``extra.image_size``) share it, so it is always aligned at the config's own size.
    key = fingerprint(PRIOR_FORMAT, sorted(rows["sha256"]), align, config)
    metadata = read_prior_metadata(path)
    if metadata is None and path.exists():
        raise ValueError(f"backbone.pretrained {path} exists but is not a genguard LiT prior (no prior header): "
                         "point backbone.pretrained at a new path, and the pipeline builds the prior there")
    if metadata is not None and metadata.get("key") == key:
        log.info("LiT prior %s is up to date (key %s)", path, key)
        return {"backbone": spec.name, "prior": str(path), "key": key, "built": False}
    started = time.perf_counter()
    model = create_backbone({**spec.to_dict(), "pretrained": None, "extra": {}}).eval()
    preprocess = Preprocess(image_size=model.image_size, mean=model.image_mean, std=model.image_std)
    pictures = [load_rgb(p) for p in progress(rows["path"].tolist(), desc="LiT prior: images", total=len(rows))]
    images = preprocess.batch(pictures)
    captions = captioner(model, pictures, align.captions)
    report = build_lit_prior(model, images, captions, align, path, key=key,
                             extra_metadata={"backbone": spec.name, "images_sha256": fingerprint(sorted(rows["sha256"]))})
    report["build_seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(path.parent / "genguard.json", {**MARKER, "backbone": spec.name, "pretrained": path.name})
    write_json_atomic(path.parent / "alignment.json", {"key": key, "report": report, "align": asdict(align)})
    _track(path, report, params.get("registry") or {})
    return {"backbone": spec.name, "prior": str(path), "key": key, "built": True, **report}


def _track(path: Path, report: dict[str, Any], registry: dict[str, Any]) -> None:
    """A new prior: its own (nested) MLflow run with the alignment metrics, registered as a model version."""
    if mlflow.active_run() is None:
        return
    with mlflow.start_run(run_name="backbone_prior", nested=True):
        mlflow.log_metrics({f"backbone_prior/{k}": float(v) for k, v in report.items()
                            if isinstance(v, int | float) and not isinstance(v, bool)})
        name = registry.get("model_name")
        if name:
            log_and_register_model(path.parent, registered_model_name=name, validation_metric="retrieval_held_out",
                                   validation_value=float(report["retrieval_held_out"]))
