"""Nodes of the ``tlga`` pipeline: thin adapters from Kedro parameters (block ``params:tlga``) to the video
family and the core.

ingest_clips -> validate_clips -> decode_clips -> train_models -> evaluate_grid -> register_tlga

Models are cached folders keyed by their spec, train config and data (``tlga.model_dir``: the clean
warm-up every regime starts from, then one folder per regime), so a rerun with unchanged config and
data trains nothing, and a changed attack list re-evaluates without retraining.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from genguard.data.manifest import BadFile
from genguard.data.validation import validate_manifest
from genguard.evaluation.evaluators import MulticlassEvaluator
from genguard.evaluation.leaderboard import build_leaderboard
from genguard.families.video import VideoMoE
from genguard.families.video import report as video_report
from genguard.families.video.attacks import build_attack
from genguard.families.video.clips import VIDEO_SCHEMA, ClipTensors, check_clip_files, decode_clip_cache
from genguard.families.video.layouts import read_layout
from genguard.families.video.motion import build_motion_set, world_from_params
from genguard.families.video.robustness import (
    GRID_METRICS,
    attack_cost,
    attack_grid,
    expert_load_stats,
    inference_cost,
)
from genguard.io.model_files import load_cached_model, save_model_dir
from genguard.training import TrainConfig, fingerprint, fit

log = logging.getLogger(__name__)
MOTION = "motion"


# ------------------------------------------------------------------------------------------ data
def ingest_clips(tlga: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The raw clip manifest: the embedded motion clips (built once per config) or a published layout."""
    data = tlga["data"]
    source = str(data.get("source", MOTION))
    if source == MOTION:
        manifest = build_motion_set(data["out_dir"], world_from_params(data.get("world") or {}),
                                    dict(data["counts"]), int(data.get("seed", 0)))
        return manifest, {"source": source, "bad_files": []}
    if not data.get("root"):
        raise ValueError(f"tlga.data.source is {source!r} but tlga.data.root is empty: set it to the dataset's "
                         f"folder (--params=tlga.data.root=data/01_raw/...), or use source: {MOTION}")
    manifest, bad_files = read_layout(source, data["root"], split=int(data.get("split", 1)),
                                      min_frames=int(data["frames"]), workers=data.get("workers"))
    return manifest, {"source": source, "bad_files": [{"path": b.path, "reason": b.reason} for b in bad_files]}


def validate_clips(raw_manifest: pd.DataFrame, ingest_report: dict[str, Any], tlga: dict[str, Any],
                   reports_dir: str) -> pd.DataFrame:
    """Every clip opens, decodes and has enough frames; labels, splits and leakage groups are sane (GX).
    A bad clip is named here, before any training."""
    data = tlga["data"]
    bad = [BadFile(**b) for b in ingest_report.get("bad_files") or []]
    bad += check_clip_files(raw_manifest, min_frames=int(data["frames"]), workers=data.get("workers"))
    manifest, _ = validate_manifest(raw_manifest, bad, schema=VIDEO_SCHEMA,
                                    report_path=Path(reports_dir) / "tlga_validation.json",
                                    on_bad_file=str(data.get("on_bad_file", "fail")),
                                    min_side=int(data.get("min_side", 16)), require_splits=("train", "test"))
    return manifest


def decode_clips(manifest: pd.DataFrame, tlga: dict[str, Any]) -> ClipTensors:
    data = tlga["data"]
    return decode_clip_cache(manifest, data["cache_dir"], frames=int(data["frames"]), size=int(data["size"]),
                             sampling=str(data.get("sampling", "uniform")), workers=data.get("workers"))


# ------------------------------------------------------------------------------------------ training
def _fit(model: VideoMoE, clips: ClipTensors, config: TrainConfig, key: str, name: str,
         tlga: dict[str, Any]) -> dict[str, Any]:
    from genguard.tracking.callbacks import MlflowEpochLogger

    val = clips.split("val") if "val" in clips.splits else None
    result = fit(model, clips.split("train"), val, config, evaluator=MulticlassEvaluator(),
                 checkpoint_dir=Path(tlga["checkpoint_dir"]) / name, callbacks=[MlflowEpochLogger(f"{name}/")],
                 data_fingerprint=key, desc=f"tlga {name}")
    epochs = max(len(result.history), 1)
    return {"seconds": result.seconds, "seconds_per_epoch": result.seconds / epochs, "history": result.history}


def _trained(name: str, key: str, build: Any, config: TrainConfig, clips: ClipTensors, tlga: dict[str, Any],
             report: dict[str, Any]) -> VideoMoE:
    folder = Path(tlga["model_dir"]) / name
    cached = load_cached_model(folder, key)
    if cached is not None:  # the report of the run that trained it, so cost tables stay complete
        report[name] = {**dict(cached.extra.get("training") or {}), "cached": True, "cache_key": key}
        return cached.model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the initial weights must not depend on what ran before in the process
        model = build()
    trained = {"epochs": config.epochs, **_fit(model, clips, config, key, name, tlga)}
    report[name] = {**trained, "cached": False, "cache_key": key}
    save_model_dir(model, folder, extra={"cache_key": key, "training": trained})
    log.info("tlga %s: trained in %.1f s", name, trained["seconds"])
    return model.eval()


def train_models(clips: ClipTensors, tlga: dict[str, Any]) -> tuple[dict[str, VideoMoE], dict[str, Any]]:
    """The clean warm-up, then every regime of ``tlga.regimes`` continued from it for ``tlga.train``
    (a regime's own ``train:`` block overrides it, e.g. more epochs for a compute-matched control;
    ``null`` entries are skipped: a profile can drop a regime)."""
    spec = {**dict(tlga["model"]), "classes": int(clips.labels.max()) + 1}
    report: dict[str, Any] = {}
    warm_config = TrainConfig.from_dict(tlga["warmup"])
    warm_key = fingerprint("warmup", spec, warm_config.to_dict(), clips.cache_key)
    warm = _trained("warmup", warm_key, lambda: VideoMoE(**spec), warm_config, clips, tlga, report)

    models: dict[str, VideoMoE] = {}
    for name, block in (tlga.get("regimes") or {}).items():
        if block is None:
            continue
        regime = {k: v for k, v in dict(block).items() if k != "train"}
        config = TrainConfig.from_dict({**dict(tlga["train"]), **dict(block.get("train") or {})})

        def build(regime: dict[str, Any] = regime) -> VideoMoE:
            model = VideoMoE(**spec, regime=regime)
            model.load_state_dict(warm.state_dict())
            return model

        key = fingerprint(name, regime, spec, config.to_dict(), warm_key)
        models[name] = _trained(name, key, build, config, clips, tlga, report)
    if not models:
        raise ValueError("tlga.regimes names no training regime; keep at least one of standard, pgd_at, j_tlat")
    return models, report


# ------------------------------------------------------------------------------------------ evaluation
def named_attacks(tlga: dict[str, Any]) -> dict[str, Any]:
    """Every attack of ``tlga.attacks`` (``null`` entries skipped) with the shared ``tlga.attack`` budget. A
    list of budgets (``attack.eps: [8/255, 14/255]``) runs each attack at each, named ``<attack>@<eps*255>``."""
    shared = dict(tlga.get("attack") or {})
    budgets = shared.pop("eps", 8 / 255)
    budgets = list(budgets) if isinstance(budgets, list | tuple) else [budgets]
    attacks = {}
    for eps in budgets:
        suffix = f"@{float(eps) * 255:g}" if len(budgets) > 1 else ""
        for name, spec in (tlga.get("attacks") or {}).items():
            if spec is not None:
                attacks[f"{name}{suffix}"] = build_attack({**shared, "eps": float(eps), **dict(spec)})
    if not attacks:
        raise ValueError("tlga.attacks names no attack; keep at least pgd")
    return attacks


def evaluate_grid(models: dict[str, VideoMoE], clips: ClipTensors, training: dict[str, Any],
                  tlga: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, str, dict[str, Any], dict[str, bytes],
                                                 dict[str, Any]]:
    """Every model under every attack on the test clips: (long grid, wide leaderboard, Markdown report,
    metrics, plots, cost report)."""
    block = dict(tlga.get("evaluation") or {})
    attacks = named_attacks(tlga)
    test = clips.split("test")
    groups = list(test.groups) if test.groups is not None else ["all"] * len(test)
    grid, usage = attack_grid(models, attacks, test.clips, test.labels, groups,
                              batch_size=int(block.get("batch_size", 64)))
    conditions = ["clean", *attacks]
    board = build_leaderboard(grid, systems=list(models), groups=sorted(set(groups)), conditions=conditions,
                              metrics=GRID_METRICS, rank_by=("acc",))

    registered = str(block.get("register", "j_tlat"))
    reference = models.get(registered) or next(iter(models.values()))
    count = min(int(block.get("cost_batch", 32)), len(test))
    sample = torch.stack([test[i]["clips"] for i in range(count)])  # ClipSet's own uint8 -> [0, 1] conversion
    sample_labels = test.labels[:count]
    cost = {"inference": inference_cost(reference, tuple(sample.shape[1:]), batch_size=sample.shape[0]),
            "attacks": {name: attack_cost(reference, attack, sample, sample_labels)
                        for name, attack in attacks.items()},
            "training": {name: {k: v for k, v in record.items() if k != "history"}
                         for name, record in training.items()}}
    loads = expert_load_stats(usage)
    grid = grid.merge(loads, on=["system", "condition"], how="left")  # expert load per cell, logged with it
    markdown = video_report.markdown(grid, loads, cost, conditions, list(models))
    metrics = video_report.metrics(grid, cost, registered)
    plots = {"robust_accuracy": video_report.robust_accuracy_png(grid, conditions, list(models)),
             "expert_usage": video_report.expert_usage_png(usage, list(models), conditions),
             "training_curves": video_report.training_curves_png(training)}
    log.info("tlga grid:\n%s", markdown)
    return grid, board, markdown, metrics, plots, cost


def register_tlga(models: dict[str, VideoMoE], grid: pd.DataFrame, table_md: str, metrics: dict[str, Any],
                  plots: dict[str, bytes], cost: dict[str, Any], training: dict[str, Any], tlga: dict[str, Any],
                  registry: dict[str, Any]) -> dict[str, Any]:
    """Log the grid (metrics, per-cell table, plots, report) to the run and register the chosen regime's model
    (``candidate``; ``champion`` when its worst-case robust accuracy beats the current champion's)."""
    import mlflow

    from genguard.tracking.mlflow_tracking import active_or_new_run, log_evaluation
    from genguard.tracking.registry import log_and_register_model

    registered = str((tlga.get("evaluation") or {}).get("register", "j_tlat"))
    if registered not in models:
        raise ValueError(f"tlga.evaluation.register is {registered!r}, not one of the trained regimes {list(models)}")
    cells = grid[grid["group"] == "mean"].assign(cell=lambda f: f["system"] + "/" + f["condition"])
    table = cells.drop(columns=["system", "condition", "group"])
    with active_or_new_run(registry.get("experiment", "genguard"), "tlga"):
        log_evaluation(metrics, table, plots, prefix="tlga", group_column="cell")
        mlflow.log_text(table_md, "tlga/table.md")
        mlflow.log_dict(cost, "tlga/cost.json")
        mlflow.log_dict({k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in training.items()},
                        "tlga/training.json")
        with tempfile.TemporaryDirectory(prefix="genguard-tlga-") as tmp:
            model_dir = save_model_dir(models[registered], Path(tmp) / "model")
            info = log_and_register_model(model_dir, registered_model_name=registry["model_name"],
                                          validation_metric="worst_robust_acc",
                                          validation_value=float(metrics["worst_robust_acc"]))
    log.info("registered %s version %s (aliases: %s)", info["name"], info["version"], info["aliases"])
    return info
