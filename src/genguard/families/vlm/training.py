"""REVEAL's two training stages, run inside TRL's own trainers (no loop of ours): CoE-Tuning with
``SFTTrainer``, then R-GRPO with ``GRPOTrainer`` from the SFT folder (also the KL reference).

Stage options are TRL's config fields, given by name (``reveal.sft`` / ``reveal.grpo`` in Kedro parameters),
over REVEAL's recipe as defaults. The released runs use ms-swift, whose defaults differ from TRL's; they are
written out here so the TRL port trains what the paper trained (ms-swift: weight decay 0.1, AdamW beta2
0.95, cosine schedule, GRPO sampling top_k 50 / top_p 0.9; REVEAL's scripts: SFT lr 1e-5, warm-up 5 %,
10 epochs; GRPO lr 1e-6, G = 4, T = 1.0, beta 0.001, one inner iteration, warm-up 1 %, one epoch, per-sequence
``grpo`` loss rather than TRL's ``dapo`` default).

DeepSpeed is a config switch: a ``deepspeed`` entry (a ZeRO JSON path or dict) goes to TRL's config, and
transformers/accelerate run ZeRO under it; one process on one GPU needs no launcher (the rendezvous
variables are filled in for a world of one).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from genguard.io.atomic import atomic_dir

SHARED_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0.1, "adam_beta2": 0.95, "lr_scheduler_type": "cosine", "logging_steps": 1,
    "save_strategy": "no", "report_to": [], "disable_tqdm": True, "dataloader_num_workers": 0, "seed": 0,
}
SFT_DEFAULTS: dict[str, Any] = {**SHARED_DEFAULTS, "learning_rate": 1e-5, "warmup_steps": 0.05,
                                "num_train_epochs": 10, "per_device_train_batch_size": 1, "max_length": 4096}
GRPO_DEFAULTS: dict[str, Any] = {**SHARED_DEFAULTS, "learning_rate": 1e-6, "warmup_steps": 0.01, "num_train_epochs": 1,
                                 "num_generations": 4, "temperature": 1.0, "top_k": 50, "top_p": 0.9, "beta": 0.001,
                                 "loss_type": "grpo", "num_iterations": 1, "max_completion_length": 2048}


def trl_config(config_type: type, defaults: dict[str, Any], options: dict[str, Any] | None, output_dir: str | Path,
               block: str) -> Any:
    """``config_type`` (TRL's SFTConfig / GRPOConfig) from REVEAL's defaults and the stage's options;
    an unknown option names the block and the closest valid fields instead of TRL's bare TypeError."""
    merged = {**defaults, **{k: v for k, v in (options or {}).items() if v is not None}}
    fields = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(merged) - fields)
    if unknown:
        import difflib

        hints = {name: difflib.get_close_matches(name, fields, n=2) for name in unknown}
        raise ValueError(f"{block}: {unknown} are not fields of TRL's {config_type.__name__} "
                         f"(closest: {hints}); the block takes TRL's own field names")
    if merged.get("deepspeed"):
        _single_process_rendezvous()
    elif "use_cpu" not in merged:
        import torch

        merged["use_cpu"] = not torch.cuda.is_available()
    return config_type(output_dir=str(output_dir), **merged)


def _single_process_rendezvous() -> None:
    # DeepSpeed initialises torch.distributed even for one process; a launcher would set these.
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(29500 + os.getpid() % 1000))):
        os.environ.setdefault(name, value)


def _history(trainer: Any) -> list[dict[str, float]]:
    rows = []
    for entry in trainer.state.log_history:
        row = {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
        if "step" in row and "train_runtime" not in row:
            rows.append(row)
    return rows


def _save(trainer: Any, processor: Any, out_dir: str | Path) -> Path:
    try:
        return _save_folder(trainer, processor, out_dir)
    finally:
        # The ZeRO-3 config is process-global in transformers: left set, every later from_pretrained in this
        # process (the evaluation node) would build its model sharded for a DeepSpeed engine that is gone.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def _save_folder(trainer: Any, processor: Any, out_dir: str | Path) -> Path:
    if not trainer.is_world_process_zero():
        trainer.save_model(str(out_dir))  # ZeRO-3: every rank takes part in gathering the shards
        return Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        trainer.save_model(str(tmp))
        processor.save_pretrained(str(tmp))
        # A pickle of the TrainingArguments: model folders hold no pickles (the summary keeps the options).
        (Path(tmp) / "training_args.bin").unlink(missing_ok=True)
    return Path(out_dir)


def _summary(trainer: Any, seconds: float) -> dict[str, Any]:
    steps = int(trainer.state.global_step)
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds if seconds else 0.0,
            "history": _history(trainer)}


def run_sft(model_path: str | Path, train_rows: Any, options: dict[str, Any] | None, out_dir: str | Path, *,
            work_dir: str | Path, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """CoE-Tuning: next-token cross-entropy on the assistant's chain of evidence only (TRL's default
    ``completion_only_loss`` for prompt/completion rows, as ms-swift trains the assistant turn)."""
    from trl import SFTConfig, SFTTrainer

    from genguard.families.vlm.policy import load_processor

    processor = load_processor(model_path)
    config = trl_config(SFTConfig, SFT_DEFAULTS, options, work_dir, "reveal.sft")
    trainer = SFTTrainer(model=str(model_path), args=config, train_dataset=train_rows, processing_class=processor,
                         callbacks=list(callbacks))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    _save(trainer, processor, out_dir)
    return _summary(trainer, seconds)


def run_grpo(model_path: str | Path, prompt_rows: Any, reward_funcs: Sequence[Callable[..., Any]],
             reward_weights: Sequence[float], options: dict[str, Any] | None, out_dir: str | Path, *,
             work_dir: str | Path, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """R-GRPO from the SFT folder ``model_path`` (TRL rebuilds the KL reference from that path)."""
    from trl import GRPOConfig, GRPOTrainer

    from genguard.families.vlm.policy import load_processor

    processor = load_processor(model_path)
    config = trl_config(GRPOConfig, {**GRPO_DEFAULTS, "reward_weights": list(reward_weights)}, options, work_dir,
                        "reveal.grpo")
    trainer = GRPOTrainer(model=str(model_path), reward_funcs=list(reward_funcs), args=config,
                          train_dataset=prompt_rows, processing_class=processor, callbacks=list(callbacks))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    _save(trainer, processor, out_dir)
    return _summary(trainer, seconds)
