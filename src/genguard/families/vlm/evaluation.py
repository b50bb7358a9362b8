"""Evaluating a REVEAL policy on held-out bench records: greedy generation (as the released inference
script), the verdict parsed from ``<answer>``, detection accuracy per generator (real and fake accuracy
apart: VLM detectors often lean to one class), format validity, and the explanation's quality through the
same reward functions GRPO optimised (judge scores), plus evidence citation rate and ROUGE-L against the
reference chain.

An answer that does not parse counts as wrong (and is counted as a parse failure), never as a guess.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genguard.families.vlm.chain_text import parse_completion, split_steps
from genguard.families.vlm.samples import open_image, prompt_messages


def parse_verdict(completion: str) -> int | None:
    """1 (AI-generated) / 0 (real) from the ``<answer>``; None when it is missing or not one of the two."""
    answer = parse_completion(completion).answer
    return int(answer) if answer in ("0", "1") else None


def think_text(completion: str) -> str:
    return parse_completion(completion).think


class LoadedPolicy:
    """A policy folder loaded once (processor + model on the GPU when there is one) for any number of
    :meth:`generate` calls: greedy and sampled evaluation of one stage share one load."""

    def __init__(self, model_path: str | Path) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        from genguard.families.vlm.policy import load_processor

        self.processor = load_processor(model_path)
        self.processor.tokenizer.padding_side = "left"  # batched decoding continues every prompt from its own end
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype="auto").to(self.device).eval()

    def batch(self, prompts: Sequence[str], images: Sequence[Any]) -> Any:
        """One processor batch: each prompt with its image, as the chat template puts them."""
        texts = [self.processor.apply_chat_template(prompt_messages(p), add_generation_prompt=True) for p in prompts]
        return self.processor(text=texts, images=list(images), return_tensors="pt", padding=True).to(self.device)

    def batches(self, records: Sequence[dict[str, Any]], bench_root: str | Path, batch_size: int) -> list[Any]:
        """Processor batches of bench ``records`` (each image decoded once per call)."""
        return [self.batch([r["prompt"] for r in chunk], [open_image(Path(bench_root) / r["image"]) for r in chunk])
                for chunk in (records[i:i + batch_size] for i in range(0, len(records), batch_size))]

    def generate(self, records: Sequence[dict[str, Any]], bench_root: str | Path, *, max_new_tokens: int,
                 batch_size: int = 16, **options: Any) -> tuple[list[str], dict[str, float]]:
        """Completions for bench ``records`` and the generation speed (see :meth:`generate_batches`)."""
        return self.generate_batches(self.batches(records, bench_root, batch_size), max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, **options)

    def generate_batches(self, batches: Sequence[Any], *, max_new_tokens: int, batch_size: int = 16,
                         sampling: dict[str, Any] | None = None, seed: int = 0,
                         **generate_options: Any) -> tuple[list[str], dict[str, float]]:
        """Completions (greedy; or ``sampling`` = generate() options such as temperature, top_k, top_p,
        num_return_sequences: then the samples of a prompt follow each other) and the generation speed (new
        tokens per second). ``generate_options`` go to ``model.generate``."""
        import torch

        pad = self.processor.tokenizer.pad_token_id
        completions: list[str] = []
        new_tokens, seconds = 0, 0.0
        options = {"do_sample": True, **sampling} if sampling else {"do_sample": False}
        for index, batch in enumerate(batches):
            began = time.perf_counter()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + index * batch_size)
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad, **options,
                                          **generate_options)
            seconds += time.perf_counter() - began
            generated = out[:, batch["input_ids"].shape[1]:]
            new_tokens += int((generated != pad).sum())
            completions += self.processor.batch_decode(generated, skip_special_tokens=True)
        speed = {"new_tokens": float(new_tokens), "seconds": seconds,
                 "tokens_per_s": new_tokens / seconds if seconds else 0.0}
        return completions, speed


def generate(model_path: str | Path, records: Sequence[dict[str, Any]], bench_root: str | Path, **options: Any
             ) -> tuple[list[str], dict[str, float]]:
    """One-off :meth:`LoadedPolicy.generate` (loads the policy for this call only)."""
    return LoadedPolicy(model_path).generate(records, bench_root, **options)


def _rouge_l(candidate: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"]).score(reference, candidate)["rougeL"].fmeasure)


def completion_table(records: Sequence[dict[str, Any]], completions: Sequence[str],
                     scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per record: verdict, correctness, structure, citation rate, ROUGE-L, and the reward terms."""
    rows = []
    for record, completion in zip(records, completions, strict=True):
        verdict = parse_verdict(completion)
        steps = split_steps(think_text(completion))
        experts = list(record["experts"])
        cited = [any(name in step for name in experts) for step in steps]
        rows.append({"id": record["id"], "generator": record.get("generator") or "", "label": int(record["label"]),
                     "verdict": verdict, "parsed": verdict is not None, "correct": verdict == int(record["label"]),
                     "steps": len(steps), "citation_rate": float(np.mean(cited)) if cited else 0.0,
                     "rouge_l": _rouge_l(think_text(completion), think_text(record["solution"])),
                     "completion": completion})
    table = pd.DataFrame(rows)
    if scores is not None:
        table = pd.concat([table, scores.add_prefix("reward/").reset_index(drop=True)], axis=1)
    return table


def per_generator(table: pd.DataFrame) -> pd.DataFrame:
    """The core's per-group detection table (:func:`genguard.evaluation.grouping.group_table`: accuracy over
    reals and fakes, ``r_acc`` / ``f_acc`` apart, the unweighted mean over generators as the last row) from
    the hard verdicts, plus the parse-failure rate. A verdict is a score of 1 or 0; an answer that does not
    parse is scored on the wrong side of the threshold, so it counts as wrong, never as a guess."""
    from genguard.evaluation.grouping import MEAN_ROW, group_table

    scores = table["verdict"].map({1: 1.0, 0: 0.0}).where(table["parsed"], 1.0 - table["label"])
    frame = pd.DataFrame({"generator": table["generator"].astype(str), "label": table["label"],
                          "score": scores.astype(float)})
    board = group_table(frame, "generator")
    failures = 1.0 - table.groupby(table["generator"].astype(str))["parsed"].mean()
    board["parse_failure_rate"] = board["generator"].map(failures)
    board.loc[board["generator"] == MEAN_ROW, "parse_failure_rate"] = float(failures.mean())
    return board


def summary_metrics(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    """Headline figures of one policy (``prefix``: bare / sft / grpo)."""
    metrics = {"acc": table["correct"].mean(), "parse_failure_rate": 1.0 - table["parsed"].mean(),
               "mean_steps": table["steps"].mean(), "citation_rate": table["citation_rate"].mean(),
               "rouge_l": table["rouge_l"].mean()}
    for column in table.columns:
        if column.startswith("reward/"):
            metrics[column.removeprefix("reward/")] = table[column].mean()
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
