"""Nodes of ``reveal_bench`` and ``reveal``: thin adapters from Kedro parameters to the vlm family, TRL and
the core's tracking.

reveal_bench: (aigi_data ->) build_reveal_bench -> validate_reveal_bench -> register_reveal_bench
reveal:       reveal_bench -> prepare_policy -> coe_tuning (SFT) -> r_grpo (GRPO) -> evaluate_reveal -> register_reveal

Model folders are cached by a key of their inputs (policy spec, bench content, stage options), so a rerun
with unchanged config and bench trains nothing, and a changed evaluation re-evaluates only.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from genguard.data.manifest import sha256_file
from genguard.families.vlm import bench as reveal_bench
from genguard.families.vlm import report as reveal_report
from genguard.families.vlm.coe import build_writer, record_frame
from genguard.families.vlm.evaluation import LoadedPolicy, completion_table, per_generator, summary_metrics
from genguard.families.vlm.experts import DetectorExpert, build_expert
from genguard.families.vlm.judges import build_judge
from genguard.families.vlm.policy import build_tiny_qwen2vl, mark_folder, policy_info
from genguard.families.vlm.rewards import RewardLedger, build_reward_functions, score_completions
from genguard.families.vlm.samples import slim_evidence, trl_rows
from genguard.families.vlm.training import GRPO_DEFAULTS, run_grpo, run_sft
from genguard.training import fingerprint

log = logging.getLogger(__name__)
KEY_FILE = "genguard_cache_key.json"


# ------------------------------------------------------------------------------------------ bench
def _detector_expert(options: dict[str, Any]) -> DetectorExpert | None:
    """A trained detector of the project as an expert (``load_predictor``: any family's registered folder)."""
    from genguard.registry import load_predictor

    model_dir = Path(str(options["model_dir"]))
    if not (model_dir / "config.json").is_file():
        if options.get("on_missing", "fail") == "skip":
            log.warning("reveal_bench: detector expert left out, %s has no trained model (train it with "
                        "kedro run --pipeline=%s)", model_dir, model_dir.name)
            return None
        raise FileNotFoundError(f"reveal_bench.experts.detector.model_dir: {model_dir} holds no trained detector; "
                                f"run kedro run --pipeline={model_dir.name} first, or set on_missing: skip")
    # The version is the folder's content (not file times, which a checkout or copy changes), and the
    # detector loads only when an image has no cached reading.
    version = fingerprint({path.name: sha256_file(path) for path in sorted(model_dir.iterdir()) if path.is_file()})
    predictor: list[Any] = []

    def score(images: list[Any]) -> Any:
        if not predictor:
            predictor.append(load_predictor(str(model_dir)))
        return predictor[0].predict(images)

    return DetectorExpert(str(options.get("name", "detector")), score, version)


def experts_from_params(block: dict[str, Any]) -> tuple[list[Any], list[str]]:
    experts, skipped = [], []
    for name, options in (block or {}).items():
        if options is None:
            continue
        options = dict(options)
        kind = options.pop("kind", name)
        if kind == "detector":
            expert = _detector_expert({"name": name, **options})
            if expert is None:
                skipped.append(name)
                continue
            experts.append(expert)
        else:
            experts.append(build_expert(kind, **options))
    if len(experts) < 3:
        raise ValueError(f"reveal_bench.experts leaves {len(experts)} expert(s); a chain of evidence needs >= 3")
    return experts, skipped


def build_reveal_bench(manifest: pd.DataFrame, params: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Experts -> evidence -> chains of evidence for the AIGI manifest's images (a sample per group)."""
    rows = reveal_bench.select_rows(manifest, params.get("max_per_group"), int(params.get("seed", 0)))
    experts, skipped = experts_from_params(params["experts"])
    writer = build_writer(dict(params.get("writer") or {"kind": "template"}))
    calibration = dict(params.get("calibration") or {})
    records, report = reveal_bench.build_bench(
        rows, experts, writer, params["out_dir"], params["cache_dir"],
        on_bad_image=str(params.get("on_bad_image", "fail")),
        calibration_split=str(calibration.get("split", "train")), margin=float(calibration.get("margin", 0.1)))
    report["experts_skipped"] = skipped
    log.info("reveal_bench: %d records from %d images (%d rejected by QC, %d unreadable) at %.1f images/s",
             report["records"], report["images"], report["rejected"], len(report["unreadable"]), report["images_per_s"])
    return records, report


def validate_reveal_bench(records: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    return reveal_bench.validate_records(records, params["out_dir"])


def register_reveal_bench(records: list[dict[str, Any]], report: dict[str, Any], schema: dict[str, Any],
                          params: dict[str, Any], registry: dict[str, Any]) -> dict[str, Any]:
    """The bench as a versioned MLflow dataset (digest of its records) with its build report and metrics."""
    import mlflow

    from genguard.tracking.mlflow_tracking import active_or_new_run

    frame = record_frame(records)
    records_path = Path(params["out_dir"]) / "records.jsonl"
    with active_or_new_run(registry.get("experiment", "genguard"), "reveal_bench"):
        dataset = mlflow.data.from_pandas(frame, source=str(records_path.resolve()),
                                          name=str(registry.get("dataset_name", "reveal_bench")))
        mlflow.log_input(dataset, context="bench")
        mlflow.log_metrics({"reveal_bench/records": report["records"], "reveal_bench/rejected": report["rejected"],
                            "reveal_bench/unreadable": len(report["unreadable"]),
                            "reveal_bench/images_per_s": report["images_per_s"],
                            **{f"reveal_bench/expert_acc/{name}/{split}": value
                               for name, e in report["experts"].items() for split, value in e["accuracy"].items()
                               if not math.isnan(value)}})
        mlflow.log_dict(report, "reveal_bench/report.json")
        mlflow.log_dict(schema, "reveal_bench/schema.json")
    return {"dataset": dataset.name, "digest": dataset.digest, "records": len(records)}


# ------------------------------------------------------------------------------------------ training
def _bench_key(records: list[dict[str, Any]]) -> str:
    """What a trained stage read of the bench: ids (image content), solutions, splits and the expert evidence
    the GRPO rewards check (an expert whose readings changed retrains, even with identical solutions)."""
    return fingerprint([(r["id"], r["solution"], r["split"], slim_evidence(r["experts"])) for r in records])


def _cached(folder: Path, key: str) -> dict[str, Any] | None:
    marker = folder / KEY_FILE
    if marker.is_file():
        stored = json.loads(marker.read_text())
        if stored.get("key") == key:
            return stored
    return None


def _store_key(folder: Path, key: str, summary: dict[str, Any]) -> dict[str, Any]:
    stored = {"key": key, **summary}
    (folder / KEY_FILE).write_text(json.dumps(stored))
    return stored


def _split(records: list[dict[str, Any]], split: str, limit: int | None = None,
           generators: list[str] | None = None) -> list[dict[str, Any]]:
    chosen = [r for r in records if r["split"] == split and (not generators or r.get("generator") in generators)]
    if not chosen:
        raise ValueError(f"the bench has no {split!r} records of generators {generators or 'any'}; check "
                         "reveal.splits, reveal.train_generators and the AIGI manifest")
    if limit and len(chosen) > limit:
        # Every generator and both classes, in turn: a truncated list stays balanced.
        by_group: dict[tuple, list] = {}
        for record in chosen:
            by_group.setdefault((record.get("generator"), record["label"]), []).append(record)
        groups = list(by_group.values())
        chosen = [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)][:limit]
    return chosen


def prepare_policy(records: list[dict[str, Any]], schema: dict[str, Any], reveal: dict[str, Any]) -> dict[str, Any]:
    """The untrained policy folder: a real model's path as configured, or a tiny Qwen2-VL built for the bench.
    ``schema`` (the bench's validation report) is taken so that nothing trains before the bench passed."""
    spec = dict(reveal["policy"])
    if spec.get("name_or_path"):
        return {"path": str(spec["name_or_path"]), "key": fingerprint(spec), "info": {"name_or_path": spec["name_or_path"]}}
    folder = Path(reveal["model_dir"]) / "policy"
    key = fingerprint(spec, _bench_key(records))
    if _cached(folder, key) is None:
        corpus = [r["prompt"] for r in records[:1]] + [r["solution"] for r in records]
        build_tiny_qwen2vl(folder, corpus, image_size=int(spec["image_size"]), vocab_size=int(spec["vocab_size"]),
                           text=dict(spec["text"]), vision=dict(spec["vision"]), seed=int(spec.get("seed", 0)))
        _store_key(folder, key, {})
    return {"path": str(folder), "key": key, "info": policy_info(folder)}


def _trained_stage(name: str, key: str, reveal: dict[str, Any], train: Any) -> dict[str, Any]:
    folder = Path(reveal["model_dir"]) / name
    stored = _cached(folder, key)
    if stored is not None:
        log.info("reveal %s: cached model %s", name, folder)
        return {"path": str(folder), "key": key, "cached": True, **{k: v for k, v in stored.items() if k != "key"}}
    work = Path(reveal.get("work_dir", "data/06_models/checkpoints/reveal")) / name
    summary = train(folder, work)
    mark_folder(folder)
    shutil.rmtree(work, ignore_errors=True)
    _store_key(folder, key, summary)
    return {"path": str(folder), "key": key, "cached": False, **summary}


def coe_tuning(records: list[dict[str, Any]], policy: dict[str, Any], reveal: dict[str, Any],
               bench_dir: str) -> dict[str, Any]:
    """Stage 1, CoE-Tuning: SFT on the bench's chains of evidence (TRL SFTTrainer)."""
    from genguard.tracking.callbacks import trainer_metrics_logger

    train = _split(records, reveal["splits"]["sft"], generators=reveal.get("train_generators"))
    options = dict(reveal.get("sft") or {})
    key = fingerprint("sft", policy["key"], _bench_key(train), options)

    def run(folder: Path, work: Path) -> dict[str, Any]:
        rows = trl_rows(train, bench_dir, with_completion=True)
        return run_sft(policy["path"], rows, options, folder, work_dir=work, callbacks=[trainer_metrics_logger("sft/")])

    return _trained_stage("sft", key, reveal, run)


def r_grpo(records: list[dict[str, Any]], sft: dict[str, Any], reveal: dict[str, Any], bench_dir: str) -> dict[str, Any]:
    """Stage 2, R-GRPO from the SFT model (TRL GRPOTrainer) with REVEAL's reward terms; judge failures are
    counted per term in the result (``reward_ledger``), never folded into a silent 0."""
    from genguard.tracking.callbacks import trainer_metrics_logger

    prompts = _split(records, reveal["splits"]["grpo"], reveal.get("grpo_prompts"), reveal.get("train_generators"))
    options = dict(reveal.get("grpo") or {})
    rewards = dict(reveal["rewards"])
    key = fingerprint("grpo", sft["key"], _bench_key(prompts), options, rewards)

    def run(folder: Path, work: Path) -> dict[str, Any]:
        ledger = RewardLedger()
        funcs, weights, names = build_reward_functions(dict(rewards["weights"]), build_judge(dict(rewards["judge"])),
                                                       ledger, seed=int(rewards.get("seed", 0)))
        rows = trl_rows(prompts, bench_dir, with_completion=False)
        summary = run_grpo(sft["path"], rows, funcs, weights, options, folder, work_dir=work,
                           callbacks=[trainer_metrics_logger("grpo/")])
        return {**summary, "reward_terms": names, "reward_weights": weights, "reward_ledger": ledger.summary()}

    return _trained_stage("grpo", key, reveal, run)


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_reveal(records: list[dict[str, Any]], policy: dict[str, Any], sft: dict[str, Any], grpo: dict[str, Any],
                    reveal: dict[str, Any], bench_dir: str,
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, bytes]]:
    """Held-out bench records through the bare, SFT and GRPO policies: greedy, as the released inference
    (per-generator accuracy, format, judge scores, citations, ROUGE-L), and sampled as GRPO samples (the mean
    reward of ``evaluation.sampled`` completions per prompt, on held-out prompts of the training generators:
    what GRPO optimises, measured off the training prompts). Returns (per-generator accuracy of each policy,
    every greedy completion with its scores, metrics, plots)."""
    block = dict(reveal.get("evaluation") or {})
    test = _split(records, reveal["splits"]["eval"], block.get("max_records"))
    in_domain = reveal.get("train_generators")
    ledger = RewardLedger()
    rewards = dict(reveal["rewards"])
    judge = build_judge(dict(block.get("judge") or rewards["judge"]))
    funcs, weights, names = build_reward_functions(dict(rewards["weights"]), judge, ledger,
                                                   seed=int(rewards.get("seed", 0)))
    max_new_tokens, batch_size = int(block.get("max_new_tokens", 256)), int(block.get("batch_size", 16))
    sampled = dict(block.get("sampled") or {})
    sampled_prompts = (_split(records, reveal["splits"]["eval"], int(sampled["prompts"]), in_domain)
                       if sampled.get("prompts") else [])
    # GRPO's own sampling options (REVEAL's defaults under the configured ones)
    grpo_options = {**GRPO_DEFAULTS, **(reveal.get("grpo") or {})}
    sampling = {**{k: grpo_options[k] for k in ("temperature", "top_k", "top_p")},
                "num_return_sequences": int(sampled.get("samples", 4))}
    repeated = [r for r in sampled_prompts for _ in range(sampling["num_return_sequences"])]
    tables, boards, metrics = [], [], {}
    for name, stage in {"bare": policy, "sft": sft, "grpo": grpo}.items():
        loaded = LoadedPolicy(stage["path"])  # one load per stage: greedy and sampled share it
        completions, speed = loaded.generate(test, bench_dir, max_new_tokens=max_new_tokens, batch_size=batch_size)
        table = completion_table(test, completions, score_completions(completions, test, funcs, names, weights))
        tables.append(table.assign(policy=name))
        board = per_generator(table).assign(policy=name)
        if in_domain:
            board["in_domain"] = board["generator"].isin(in_domain)
            held = table[table["generator"].isin(in_domain)]
            metrics[f"{name}/acc_in_domain"] = float(held["correct"].mean()) if len(held) else float("nan")
            other = table[~table["generator"].isin(in_domain)]
            metrics[f"{name}/acc_out_of_domain"] = float(other["correct"].mean()) if len(other) else float("nan")
        boards.append(board)
        metrics.update(summary_metrics(table, name))
        metrics[f"{name}/tokens_per_s"] = speed["tokens_per_s"]
        if sampled_prompts and name != "bare":
            completions, _ = loaded.generate(sampled_prompts, bench_dir, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size, sampling=sampling, seed=int(sampled.get("seed", 0)))
            scores = score_completions(completions, repeated, funcs, names, weights)
            metrics.update({f"{name}/sampled/{column}": float(scores[column].mean()) for column in scores.columns})
        del loaded
    metrics.update(reveal_report.curve_metrics(grpo.get("history") or []))
    metrics.update({f"judge/{k}": v for k, v in ledger.summary().items()})
    metrics["grpo/train_steps_per_s"] = float(grpo.get("steps_per_s", 0.0))
    metrics["sft/train_steps_per_s"] = float(sft.get("steps_per_s", 0.0))
    completions = pd.concat(tables, ignore_index=True)
    board = pd.concat(boards, ignore_index=True)
    plots = {"reward_curve": reveal_report.reward_curve_png(grpo.get("history") or []),
             "sft_loss": reveal_report.loss_curve_png(sft.get("history") or []),
             "accuracy_by_generator": reveal_report.accuracy_png(board)}
    log.info("reveal: held-out accuracy bare %.2f, sft %.2f, grpo %.2f; sampled reward sft %.2f -> grpo %.2f",
             metrics["bare/acc"], metrics["sft/acc"], metrics["grpo/acc"], metrics.get("sft/sampled/total", float("nan")),
             metrics.get("grpo/sampled/total", float("nan")))
    return board, completions, metrics, plots


def register_reveal(grpo: dict[str, Any], board: pd.DataFrame, completions: pd.DataFrame, metrics: dict[str, Any],
                    plots: dict[str, bytes], sft: dict[str, Any], reveal: dict[str, Any],
                    registry: dict[str, Any]) -> dict[str, Any]:
    """Log the evaluation and the training summaries, and register the GRPO policy (``candidate``; ``champion``
    when its held-out accuracy beats the current champion's)."""
    import mlflow

    from genguard.tracking.mlflow_tracking import active_or_new_run, log_evaluation
    from genguard.tracking.registry import log_and_register_model

    table = board.assign(cell=lambda f: f["policy"] + "/" + f["generator"].astype(str)).drop(
        columns=["policy", "generator"])
    with active_or_new_run(registry.get("experiment", "genguard"), "reveal"):
        log_evaluation(metrics, table, plots, prefix="reveal", group_column="cell")
        mlflow.log_table(completions.drop(columns=["completion"]).astype(object), "reveal/completion_scores.json")
        mlflow.log_text("\n\n".join(f"[{r.policy}] {r.id} label={r.label}\n{r.completion}"
                                    for r in completions.head(60).itertuples()), "reveal/completions_sample.txt")
        for name, stage in (("sft", sft), ("grpo", grpo)):
            mlflow.log_dict({k: v for k, v in stage.items() if k != "history"}, f"reveal/{name}_summary.json")
        info = log_and_register_model(grpo["path"], registered_model_name=registry["model_name"],
                                      validation_metric="grpo/acc", validation_value=float(metrics["grpo/acc"]))
    log.info("registered %s version %s (aliases: %s)", info["name"], info["version"], info["aliases"])
    return info
