"""How backdoor-input detection is judged on the testbed (SET, arXiv 2604.12446, and the T2IShield-FTT
baseline, arXiv 2407.04215): prompt sets, backdoor success, and detection metrics per attack.

- **Clean prompts** are split into a fit set (the defender's "small set of clean prompts") and a test set by
  (shape, colour, template) group, so no templated prompt appears on both sides (review note 11: testing
  on the fit set would make "SVDD flags about ν" true by construction).
- **Triggered prompts**: the attack's trigger applied to the clean test prompts (homoglyph) or its own
  syntax (implicit trigger). Only prompts whose backdoor *fires* (the classifier sees the target's shape
  and colour) are kept, as DAA's cleaning step does; the drop count is reported.
- **Scores** are mapped monotonically into [0, 1] so the core's binary metrics apply unchanged (backdoor =
  positive): SET d / (d + R²) and FTT θ / (θ + distance), which puts each method's own threshold at 0.5.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from genguard.evaluation.metrics import binary_metrics
from genguard.families.t2i.evaluator import ConceptClassifier
from genguard.families.t2i.prompts import Prompt, prompts_for
from genguard.families.t2i.shapes import ShapesWorld


def split_clean_prompts(world: ShapesWorld, fit_fraction: float = 0.5, seed: int = 0
                        ) -> tuple[list[Prompt], list[Prompt]]:
    """(fit, test) clean prompts, split by (shape, colour, template) group with a seeded hash."""
    fit, test = [], []
    for prompt in prompts_for(world, styles=("solid",)):
        key = f"{seed}|{prompt.shape}|{prompt.colour}|{prompt.template}".encode()
        (fit if (zlib.crc32(key) % 1000) / 1000 < fit_fraction else test).append(prompt)
    if not fit or not test:
        raise ValueError(f"fit_fraction {fit_fraction} leaves no clean prompts on one side; use a value in (0, 1)")
    return fit, test


def asks_for(prompt: Prompt, target: dict[str, str]) -> bool:
    """The prompt already names every attribute of the backdoor's target."""
    return all(getattr(prompt, attribute) == concept for attribute, concept in target.items())


def syntactic_pool(world: ShapesWorld, template: str) -> list[Prompt]:
    """Every prompt phrased with an implicit (syntactic) trigger template over the world's words."""
    return [Prompt(template.format(shape=word, colour=colour), shape, colour, "solid", word)
            for shape in world.shapes for word in world.shape_words[shape] for colour in world.colours]


def cycle_prompts(prompts: Sequence[Prompt], count: int, seed: int) -> list[Prompt]:
    """``count`` prompts drawn without replacement while possible (a seeded shuffle, cycled)."""
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    return [prompts[order[i % len(order)]] for i in range(count)]


def target_hits(classifier: ConceptClassifier, images: torch.Tensor, target: dict[str, str]) -> torch.Tensor:
    """Per image: the classifier reads every attribute of ``target`` (e.g. shape and colour) as the target's."""
    probabilities = classifier.predict(images)
    hits = torch.ones(len(images), dtype=torch.bool)
    for attribute, concept in target.items():
        index = classifier.attributes[attribute].index(concept)
        hits &= probabilities[attribute].argmax(-1) == index
    return hits


def detection_metrics(clean_scores: np.ndarray, backdoor_scores: np.ndarray) -> dict[str, float]:
    """AUROC, ACC, F1 at the method's own threshold (0.5 after mapping), TPR at 5 % FPR, FPR."""
    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(backdoor_scores))].astype(int)
    scores = np.r_[clean_scores, backdoor_scores]
    metrics = binary_metrics(labels, scores, threshold=0.5)
    predicted = scores > 0.5
    true_positive = int((predicted & (labels == 1)).sum())
    precision = true_positive / max(int(predicted.sum()), 1)
    recall = true_positive / max(int((labels == 1).sum()), 1)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    cut = np.quantile(clean_scores, 0.95) if len(clean_scores) else float("nan")
    return {"auroc": metrics["auc"], "acc": metrics["acc"], "f1": f1,
            "tpr_at_5_fpr": float((backdoor_scores > cut).mean()) if len(backdoor_scores) else float("nan"),
            "fpr": float((clean_scores > 0.5).mean()) if len(clean_scores) else float("nan"),
            "n_clean": len(clean_scores), "n_backdoor": len(backdoor_scores)}


def set_scores01(distances: torch.Tensor, threshold: float) -> np.ndarray:
    d = distances.double().clamp_min(0)
    return (d / (d + threshold)).numpy()


def ftt_scores01(distances: torch.Tensor, threshold: float) -> np.ndarray:
    d = distances.double().clamp_min(0)
    return (threshold / (threshold + d + 1e-12)).numpy()


def describe(report: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items())
