"""Nodes of the text-to-image pipelines: thin adapters from Kedro parameters to the family and the core.

Shared by ``t2i_testbed``, ``ticoe`` and ``set`` (block ``params:t2i``):
build_captions -> validate_captions -> prepare_testbed -> prepare_evaluator.
The trained testbed and concept classifier are cached model folders keyed by their config and data
(DVC ``persist`` outputs of the ``t2i_testbed`` stage): the method pipelines find them trained.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genguard.data.manifest import BadFile, DataValidationError
from genguard.data.validation import validate_manifest
from genguard.families.t2i import TextToImageModel
from genguard.families.t2i import captioned_set as captions
from genguard.families.t2i import evaluator as judge
from genguard.families.t2i.captioned_set import CAPTION_SCHEMA, world_from_params
from genguard.families.t2i.testbed import METHOD as TESTBED_METHOD
from genguard.families.t2i.tokenizer import clip_tokenizer
from genguard.io.model_files import load_cached_model, save_model_dir
from genguard.training import TrainConfig, fingerprint, fit
from genguard.training.stages import run_stages

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ data
def build_captions(t2i: dict[str, Any]) -> pd.DataFrame:
    """The captioned image set (rendered once per config; reruns read the build)."""
    block = t2i["captions"]
    return captions.build_captioned_set(block["out_dir"], world_from_params(t2i.get("world") or {}),
                                        dict(block["counts"]), int(block.get("seed", 0)))


def validate_captions(raw_manifest: pd.DataFrame, t2i: dict[str, Any], reports_dir: str) -> pd.DataFrame:
    """Files, labels and splits (great-expectations), then every caption: empty or over-long prompts and
    concept names outside the world's vocabulary fail here, before any training."""
    world = world_from_params(t2i.get("world") or {})
    bad_files: list[BadFile] = []
    for path in raw_manifest["path"]:
        if not Path(path).is_file():
            bad_files.append(BadFile(str(path), "missing; rebuild the captioned set (delete its folder)"))
    manifest, _ = validate_manifest(raw_manifest, bad_files, schema=CAPTION_SCHEMA,
                                    report_path=Path(reports_dir) / "t2i_captions_validation.json",
                                    min_side=min(world.image_size, 16), require_splits=("train", "test"))
    max_length = int((t2i.get("model") or {}).get("text", {}).get("max_length", 77))
    tokenizer = clip_tokenizer(max_length)
    captions.check_prompts(list(manifest["caption"]), max_tokens=max_length,
                           tokenize=lambda p: tokenizer(p).input_ids, what="the captioned set")
    for attribute in ("shape", "colour", "style"):
        unknown = sorted(set(manifest[attribute]) - set(world.attributes[attribute]))
        if unknown:
            raise DataValidationError(f"captioned set: {attribute} values {unknown} are not in the world's "
                                      f"vocabulary {list(world.attributes[attribute])}; rebuild the set")
    return manifest


def _rows(manifest: pd.DataFrame, split: str, limit: int | None = None) -> pd.DataFrame:
    rows = manifest[manifest["split"] == split]
    return rows.head(limit) if limit else rows


# ------------------------------------------------------------------------------------------ cached models
def _cached(cache_dir: str | None, key: str, build: Any) -> tuple[Any, bool]:
    """(model, was cached): a model folder made for ``key`` is loaded; else ``build()`` and store it."""
    cached = load_cached_model(cache_dir, key) if cache_dir else None
    if cached is not None:
        return cached.model, True
    model = build()
    if cache_dir:
        save_model_dir(model, cache_dir, extra={"cache_key": key})
    return model, False


def testbed_cache_key(manifest: pd.DataFrame, t2i: dict[str, Any]) -> str:
    """What a trained testbed depends on: its spec, its train config and the bytes of its training images."""
    train = TrainConfig.from_dict(t2i.get("train"))
    return fingerprint(TESTBED_METHOD, dict(t2i.get("model") or {}), train.to_dict(),
                       sorted(_rows(manifest, "train")["sha256"]))


def prepare_testbed(manifest: pd.DataFrame, t2i: dict[str, Any]) -> tuple[TextToImageModel, dict[str, Any]]:
    """The testbed: trained here on the captioned set (embedded), loaded as is (``model.pretrained``), or
    read from its cache when config and data are unchanged."""
    spec = dict(t2i.get("model") or {})
    train = TrainConfig.from_dict(t2i.get("train"))
    if spec.get("pretrained"):
        model = TextToImageModel(**spec)
        return model.eval(), {"method": TESTBED_METHOD, "pretrained": spec["pretrained"], "cached": False,
                              "seconds": 0.0}
    train_rows = _rows(manifest, "train")
    key = testbed_cache_key(manifest, t2i)
    summary: dict[str, Any] = {"method": TESTBED_METHOD, "train_images": len(train_rows), "cache_key": key}

    def build() -> TextToImageModel:
        model = TextToImageModel(**spec)
        images = captions.load_images(list(train_rows["path"]))
        dataset = judge.LabelledImages(images, {}, model.tokenize(list(train_rows["caption"])))
        started = time.perf_counter()
        _, history, _, _ = run_stages(
            model, dataset, None, train, evaluator=None, data_fingerprint=key,
            checkpoint_dir=Path(t2i.get("checkpoint_dir", "data/06_models/checkpoints")) / TESTBED_METHOD,
            desc="t2i testbed")
        summary.update(seconds=time.perf_counter() - started, history=history)
        return model

    model, cached = _cached(t2i.get("cache_dir"), key, build)
    summary["cached"] = cached
    log.info("t2i testbed: %s", "read from its cache" if cached else f"trained in {summary['seconds']:.0f} s")
    return model.eval(), summary


def prepare_evaluator(manifest: pd.DataFrame, testbed: TextToImageModel, t2i: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The concept classifier (cached like the testbed) and the alignment scorer (seconds, refit each run:
    it reads the testbed's own text encoder). Reports the classifier's accuracy on held-out renders."""
    block = dict(t2i.get("evaluator") or {})
    if block.get("kind", "shapes") != "shapes":
        raise NotImplementedError(
            f"t2i.evaluator.kind {block.get('kind')!r}: only the testbed world's judge ('shapes': concept classifier, "
            "alignment and FD in its features) exists. The paper-scale judges (NudeNet for nudity, ResNet-50 for "
            "objects, CLIP ViT-L/14 score, Inception FID on COCO prompts) are not implemented yet; run the T2I "
            "pipelines with the embedded default (conf/base) for now")
    world = world_from_params(t2i.get("world") or {})
    train_rows, test_rows = _rows(manifest, "train"), _rows(manifest, "test")
    options = dict(block.get("classifier") or {})
    train = TrainConfig.from_dict(block.get("train"))
    key = fingerprint(judge.CLASSIFIER_METHOD, options, train.to_dict(), sorted(train_rows["sha256"]))

    def build() -> judge.ConceptClassifier:
        classifier = judge.classifier_for(world, **options)
        images = captions.load_images(list(train_rows["path"]))
        fit(classifier, judge.LabelledImages(images, classifier.labels(train_rows.to_dict("records"))), None, train,
            desc="t2i concept classifier")
        return classifier

    classifier, cached = _cached(block.get("cache_dir"), key, build)
    classifier.eval()
    test_images = captions.load_images(list(test_rows["path"]))
    accuracy = judge.prompt_following(classifier.predict(test_images), classifier, test_rows.to_dict("records"))
    alignment_rows = train_rows.head(int(block.get("alignment_images", 1024)))
    scorer = judge.fit_alignment(testbed, classifier, captions.load_images(list(alignment_rows["path"])),
                                 testbed.tokenize(list(alignment_rows["caption"])),
                                 steps=int(block.get("alignment_steps", 300)))
    report = {"classifier_accuracy_on_renders": accuracy, "classifier_cached": cached, "cache_key": key}
    log.info("t2i evaluator: classifier accuracy on held-out renders %s", accuracy)
    return {"world": world, "classifier": classifier, "scorer": scorer}, report


# ------------------------------------------------------------------------------------------ testbed evaluation
def png(image: torch.Tensor, scale: int = 4) -> bytes:
    from PIL import Image

    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluate_testbed(testbed: TextToImageModel, evaluator: dict[str, Any], manifest: pd.DataFrame,
                     t2i: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any], dict[str, bytes]]:
    """Does the testbed draw what captions name? Prompt-following per attribute against chance, alignment of
    matched vs shuffled prompts, FD to real renders (and the autoencoder's own FD floor), determinism."""
    from genguard.families.t2i.erasure_protocol import image_grid

    classifier, scorer, world = evaluator["classifier"], evaluator["scorer"], evaluator["world"]
    block, sampling = dict(t2i.get("evaluation") or {}), dict(t2i.get("sampling") or {})
    test = _rows(manifest, "test")
    # A seeded sample, not the first rows: the manifest is sorted by shape.
    rows = test.sample(n=min(int(block.get("images", 256)), len(test)), random_state=int(block.get("seed", 0)))
    prompts = list(rows["caption"])
    seeds = [int(block.get("seed", 0)) * 100_003 + i for i in range(len(prompts))]
    generated = testbed.generate(prompts, seeds=seeds, **sampling)
    real = captions.load_images(list(rows["path"]))
    following = judge.prompt_following(classifier.predict(generated), classifier, rows.to_dict("records"))
    chance = {name: 1.0 / len(classes) for name, classes in classifier.attributes.items()}
    shuffled = list(np.roll(np.array(prompts, dtype=object), len(prompts) // 2))
    with torch.no_grad():
        reconstructed = torch.cat([testbed.decode_latents(testbed.encode_images(c)) for c in real.split(128)])
    again = testbed.generate(prompts[:4], seeds=seeds[:4], **sampling)
    evaluation = {
        "prompt_following": following, "chance": chance,
        "alignment_matched": float(judge.alignment_scores(scorer, testbed, classifier, generated, prompts).mean()),
        "alignment_shuffled": float(judge.alignment_scores(scorer, testbed, classifier, generated, shuffled).mean()),
        "alignment_real": float(judge.alignment_scores(scorer, testbed, classifier, real, prompts).mean()),
        "fd_generated": judge.frechet_distance(classifier, real, generated),
        "fd_autoencoder": judge.frechet_distance(classifier, real, reconstructed),
        "deterministic": bool(torch.equal(again, generated[:4])),
        "images": len(prompts), "sampling": sampling, "world": list(world.attributes),
    }
    metrics = {f"following_{k}": float(v) for k, v in following.items()}
    metrics.update({k: float(evaluation[k]) for k in ("alignment_matched", "alignment_shuffled", "fd_generated",
                                                      "fd_autoencoder")})
    count = min(16, len(prompts))
    figures = {"samples": png(image_grid([real[:count], generated[:count]]))}
    log.info("t2i testbed: prompt-following %s (chance %s), FD %.1f (autoencoder floor %.1f)", following, chance,
             evaluation["fd_generated"], evaluation["fd_autoencoder"])
    return metrics, evaluation, figures


# ------------------------------------------------------------------------------------------ registration
class _Files:
    """What ``ModelDataset`` / registration store: the module and its family extras."""

    def __init__(self, model: torch.nn.Module, extra: dict[str, Any] | None = None) -> None:
        self.model, self.extra = model, extra or {}

    def files_extra(self) -> dict[str, Any]:
        return self.extra


def register_model(model: torch.nn.Module, *, name: str, summary: dict[str, Any], table: pd.DataFrame,
                   group_column: str, figures: dict[str, bytes], reports: dict[str, Any], registry: dict[str, Any],
                   validation_metric: str, greater_is_better: bool, extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The core's evaluation logging (summary, per-row table, figures, under ``name/``) and extra reports into the
    active MLflow run; then register the model folder (``candidate``; ``champion`` when ``validation_metric``
    beats the current champion's)."""
    import mlflow

    from genguard.tracking.mlflow_tracking import active_or_new_run, log_evaluation
    from genguard.tracking.registry import log_and_register_model

    with active_or_new_run(registry.get("experiment", "genguard"), name):
        log_evaluation(summary, table, figures, prefix=name, group_column=group_column)
        for key, report in reports.items():
            if isinstance(report, str):
                mlflow.log_text(report, f"{name}/{key}")
            else:
                mlflow.log_dict(report, f"{name}/{key}.json")
        with tempfile.TemporaryDirectory(prefix="genguard-t2i-") as tmp:
            model_dir = save_model_dir(model, Path(tmp) / "model", extra=extra)
            info = log_and_register_model(model_dir, registered_model_name=registry["model_name"],
                                          validation_metric=validation_metric,
                                          validation_value=float(summary[validation_metric]),
                                          greater_is_better=greater_is_better)
    log.info("registered %s version %s (aliases: %s)", info["name"], info["version"], info["aliases"])
    return info


def register_testbed(testbed: TextToImageModel, summary: dict[str, Any], metrics: dict[str, float],
                     evaluation: dict[str, Any], figures: dict[str, bytes], evaluator_report: dict[str, Any],
                     registry: dict[str, Any]) -> dict[str, Any]:
    history = summary.get("history") or []
    if history:
        figures = {**figures, "training_loss": _loss_png(history)}
    chance = evaluation["chance"]
    table = pd.DataFrame([{"attribute": attribute, "following": value, "chance": chance.get(attribute, float("nan"))}
                          for attribute, value in evaluation["prompt_following"].items()])
    return register_model(testbed, name="t2i_testbed", summary=metrics, table=table, group_column="attribute",
                          figures=figures, reports={"evaluation": evaluation, "evaluator": evaluator_report,
                                                    "train_summary": {k: v for k, v in summary.items()
                                                                      if k != "history"}},
                          registry=registry, validation_metric="following_joint", greater_is_better=True)


def _loss_png(history: list[dict[str, Any]]) -> bytes:
    from genguard.evaluation.plots import figure_png, new_figure

    figure = new_figure(6, 3)
    axes = figure.subplots()
    for stage in dict.fromkeys(record.get("stage", "main") for record in history):
        points = [(r["epoch"], r["train/loss"]) for r in history if r.get("stage", "main") == stage
                  and "train/loss" in r]
        if points:
            axes.plot(*zip(*points), marker="o", label=stage)
    axes.set_xlabel("round")
    axes.set_ylabel("training loss")
    axes.set_yscale("log")
    axes.legend()
    return figure_png(figure)
