"""Explainable-AIGI (REVEAL) speed measurements (imported by run_all.py; runnable alone):

    .venv/bin/python benchmarks/reveal.py [evidence] [steps] [generation]
    .venv/bin/python benchmarks/run_all.py reveal_run      # wall time of `kedro run --pipelines=reveal`

evidence    images/s of REVEAL-Bench construction (the base config's experts and template writer) on the
            embedded AIGI images the bench samples: a first build of 90 % of them into an empty expert cache,
            a rebuild after the other 10 % arrive (only they are read and their files written), and a rebuild
            with nothing new (no expert reading computed, no image or view file written).
steps       SFT and GRPO optimizer steps per second on 2 cores with the base config (tiny Qwen2-VL, batch 16,
            GRPO 4 prompts x G = 4, completions up to 160 tokens), on the bench's training records.
generation  new tokens/s of the trained GRPO policy (data/06_models/reveal/grpo, from `kedro run
            --pipelines=reveal`) against the bare policy folder, both forced to generate the same 64 tokens
            for 64 held-out images (greedy, batch 32), so the figure compares the models, not their lengths.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "data/03_primary/reveal_bench"
MODELS = ROOT / "data/06_models/reveal"


def _params(block: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "conf/base/parameters_reveal.yml").read_text())[block]


def _records() -> list[dict[str, Any]]:
    path = BENCH / "records.jsonl"
    if not path.is_file():
        raise SystemExit("run `kedro run --pipelines=reveal_bench` first (needs data/03_primary/reveal_bench)")
    return [json.loads(line) for line in path.read_text().splitlines()]


def bench_evidence() -> dict[str, float]:
    import os

    import pandas as pd

    from genguard.families.vlm.bench import build_bench, select_rows
    from genguard.families.vlm.coe import build_writer
    from genguard.pipelines.vlm.nodes import experts_from_params

    os.chdir(ROOT)
    manifest = pd.read_parquet(ROOT / "data/03_primary/aigi_data/manifest.parquet")
    params = _params("reveal_bench")
    rows = select_rows(manifest, params.get("max_per_group"), int(params.get("seed", 0)))
    experts, _ = experts_from_params({k: v for k, v in params["experts"].items() if (v or {}).get("kind") != "detector"})
    first = rows.iloc[: len(rows) * 9 // 10]  # the bench before 10 % more images arrive
    with tempfile.TemporaryDirectory(prefix="genguard-reveal-bench-") as tmp:
        results: dict[str, float] = {"images": len(rows), "experts": len(experts), "added_images": len(rows) - len(first)}
        for run, frame in (("first", first), ("added", rows), ("cached", rows)):
            before = {p: p.stat().st_mtime_ns for p in Path(tmp).rglob("*") if p.is_file()}
            started = time.perf_counter()
            _, report = build_bench(frame, experts, build_writer(params["writer"]), Path(tmp) / "bench",
                                    Path(tmp) / "cache")
            seconds = time.perf_counter() - started
            after = {p: p.stat().st_mtime_ns for p in Path(tmp).rglob("*") if p.is_file()}
            results[f"{run}_images_per_s"] = len(frame) / seconds
            results[f"{run}_expert_readings_computed"] = report["expert_cache"]["misses"]
            results[f"{run}_files_written"] = sum(1 for p, t in after.items() if before.get(p) != t)
        results["cached_over_first"] = results["cached_images_per_s"] / results["first_images_per_s"]
    return results


def bench_steps(sft_steps: int = 24, grpo_steps: int = 6) -> dict[str, float]:
    from genguard.families.vlm.judges import build_judge
    from genguard.families.vlm.policy import build_tiny_qwen2vl
    from genguard.families.vlm.rewards import RewardLedger, build_reward_functions
    from genguard.families.vlm.samples import trl_rows
    from genguard.families.vlm.training import run_grpo, run_sft

    records = _records()
    reveal = _params("reveal")
    generators = reveal.get("train_generators")
    train = [r for r in records if r["split"] == "train" and (not generators or r["generator"] in generators)]
    spec = reveal["policy"]
    with tempfile.TemporaryDirectory(prefix="genguard-reveal-steps-") as tmp:
        root = Path(tmp)
        build_tiny_qwen2vl(root / "policy", [records[0]["prompt"]] + [r["solution"] for r in records],
                           image_size=int(spec["image_size"]), vocab_size=int(spec["vocab_size"]),
                           text=dict(spec["text"]), vision=dict(spec["vision"]))
        sft = run_sft(root / "policy", trl_rows(train, BENCH, with_completion=True),
                      {**reveal["sft"], "num_train_epochs": 1, "max_steps": sft_steps}, root / "sft", work_dir=root / "w")
        funcs, weights, _ = build_reward_functions(dict(reveal["rewards"]["weights"]),
                                                   build_judge(dict(reveal["rewards"]["judge"])), RewardLedger())
        grpo = run_grpo(root / "sft", trl_rows(train[:64], BENCH, with_completion=False), funcs, weights,
                        {**reveal["grpo"], "max_steps": grpo_steps}, root / "grpo", work_dir=root / "w")
    batch = int(reveal["sft"]["per_device_train_batch_size"])
    return {"sft_steps_per_s": sft["steps_per_s"], "sft_samples_per_s": sft["steps_per_s"] * batch,
            "grpo_steps_per_s": grpo["steps_per_s"],
            "grpo_completions_per_s": grpo["steps_per_s"] * int(reveal["grpo"]["per_device_train_batch_size"]),
            "sft_steps": sft["steps"], "grpo_steps": grpo["steps"]}


def bench_generation(images: int = 64, tokens: int = 64, batch_size: int = 32, repeats: int = 3) -> dict[str, float]:
    """New tokens/s of the trained GRPO policy vs the bare policy, both forced to the same length (best of
    ``repeats``; each policy loaded once, its image batches prepared once)."""
    from genguard.families.vlm.evaluation import LoadedPolicy

    if not (MODELS / "grpo" / "config.json").is_file():
        raise SystemExit("run `kedro run --pipelines=reveal` first (needs data/06_models/reveal/grpo)")
    test = [r for r in _records() if r["split"] == "test"][:images]
    results: dict[str, float] = {}
    for name in ("policy", "grpo"):
        loaded = LoadedPolicy(MODELS / name)
        batches = loaded.batches(test, BENCH, batch_size)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            loaded.generate_batches(batches, max_new_tokens=tokens, batch_size=batch_size, min_new_tokens=tokens)
            best = min(best, time.perf_counter() - started)
        results[f"{'bare' if name == 'policy' else name}_tokens_per_s"] = len(test) * tokens / best
    results["grpo_over_bare"] = results["grpo_tokens_per_s"] / results["bare_tokens_per_s"]
    return results


BENCHES = {"evidence": bench_evidence, "steps": bench_steps, "generation": bench_generation}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHES):
        print(name, json.dumps(BENCHES[name](), indent=2), flush=True)
