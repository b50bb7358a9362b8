"""The REVEAL training path on a GPU, as the `gpu` profile runs it: TRL's SFTTrainer and GRPOTrainer under
DeepSpeed ZeRO-3 (conf/gpu/deepspeed/zero3_bf16_hf.json) in bf16 with gradient checkpointing, in one
process, on a toy bench (fakes: a period-2 grid) and a Qwen2-VL built from a config, against the same stages
without DeepSpeed on the same GPU. Hub weights are out of reach on the device machine, so the policy is a
randomly initialised mid-size config (about 60 M parameters); what is checked is the mechanism: ZeRO-3
sharding and the 16-bit gather on save, the KL reference rebuilt from the SFT folder, the saved folder
loading back for generation. CI never runs this (no GPU there).

    python benchmarks/gpu_reveal.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from genguard.families.vlm.bench import build_bench
from genguard.families.vlm.coe import TemplateWriter
from genguard.families.vlm.evaluation import generate, parse_verdict
from genguard.families.vlm.examples import toy_manifest
from genguard.families.vlm.experts import build_experts
from genguard.families.vlm.judges import ProxyJudge
from genguard.families.vlm.policy import build_tiny_qwen2vl
from genguard.families.vlm.rewards import RewardLedger, build_reward_functions
from genguard.families.vlm.samples import trl_rows
from genguard.families.vlm.training import run_grpo, run_sft

SIZE = 64
ZERO3 = str(ROOT / "conf/gpu/deepspeed/zero3_bf16_hf.json")


def _bag_of_words(texts: list[str]) -> np.ndarray:
    """A stand-in sentence embedder (the MiniLM wheel is too large to carry to the device). crc32, not
    hash(): Python salts str hashes per process, which would change the rewards from run to run."""
    vectors = np.zeros((len(texts), 256))
    for row, text in enumerate(texts):
        for word in text.lower().split():
            vectors[row, zlib.crc32(word.encode()) % 256] += 1
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/gpu_reveal")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny policy, plain fp32 stage only (no GPU)")
    args = parser.parse_args()
    root = Path(args.out)
    records, report = build_bench(toy_manifest(root, 192, SIZE, n_train=160), build_experts(["spectrum", "noise_residual", "local_artifacts"]),
                                  TemplateWriter(), root / "bench", root / "cache")
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    bench = root / "bench"
    text = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 12,
            "num_key_value_heads": 4}
    vision = {"depth": 4, "embed_dim": 384, "hidden_size": 768, "num_heads": 6, "mlp_ratio": 4, "patch_size": 8,
              "spatial_merge_size": 2}
    if args.cpu_smoke:
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4)
        vision.update(depth=1, embed_dim=32, hidden_size=64, num_heads=2)
    build_tiny_qwen2vl(root / "policy", [records[0]["prompt"]] + [r["solution"] for r in records], image_size=SIZE,
                       vocab_size=1024, text=text, vision=vision)
    parameters = json.loads((root / "policy" / "genguard_policy.json").read_text())["parameters"]
    results = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "policy_parameters": parameters,
               "bench_records": len(records), "bench_images_per_s": report["images_per_s"]}
    funcs, weights, _ = build_reward_functions(None, ProxyJudge(embedder=_bag_of_words), RewardLedger())
    stages = (("plain_bf16", {"bf16": True}),
              ("zero3_bf16", {"bf16": True, "deepspeed": ZERO3, "gradient_checkpointing": True}))
    if args.cpu_smoke:
        stages = (("plain_fp32", {"num_train_epochs": 1}),)
    for name, extra in stages:
        sft_options = {"learning_rate": 3e-4, "num_train_epochs": 4, "per_device_train_batch_size": 16,
                       "max_length": None, **extra}  # the smoke's num_train_epochs: 1 overrides
        sft = run_sft(root / "policy", trl_rows(train, bench, with_completion=True), sft_options, root / f"sft_{name}",
                      work_dir=root / f"work_{name}")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        grpo_options = {"learning_rate": 2e-5, "max_steps": 2 if args.cpu_smoke else 8,
                        "per_device_train_batch_size": 16, "max_completion_length": 256,
                        **{k: v for k, v in extra.items() if k != "num_train_epochs"}}
        grpo = run_grpo(root / f"sft_{name}", trl_rows(train[:64], bench, with_completion=False), funcs, weights,
                        grpo_options, root / f"grpo_{name}", work_dir=root / f"work_{name}")
        completions, speed = generate(root / f"grpo_{name}", test, bench, max_new_tokens=256, batch_size=32)
        verdicts = [parse_verdict(c) for c in completions]  # (completion_table's ROUGE-L needs rouge-score)
        results[name] = {
            "sft_steps": sft["steps"], "sft_steps_per_s": sft["steps_per_s"],
            "sft_loss_first_last": [sft["history"][0]["loss"], sft["history"][-1]["loss"]],
            "grpo_steps_per_s": grpo["steps_per_s"], "grpo_peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
            "grpo_reward": [round(h["reward"], 3) for h in grpo["history"]],
            "grpo_kl": [round(h["kl"], 4) for h in grpo["history"]],
            "saved_files": sorted(p.name for p in (root / f"grpo_{name}").iterdir()),
            "greedy_after_grpo": {"acc": float(np.mean([v == r["label"] for v, r in zip(verdicts, test)])),
                                  "parsed": float(np.mean([v is not None for v in verdicts])),
                                  "tokens_per_s": speed["tokens_per_s"]},
        }
        print(name, json.dumps(results[name], indent=1), flush=True)
    (root / "gpu_reveal.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - started:.0f} s")
