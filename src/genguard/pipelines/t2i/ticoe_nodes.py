"""Nodes of ``ticoe``: reference images -> erasure (TICoE and its baselines) -> evaluation -> registration.

Block ``params:ticoe``: the target concept and its prompt bank, held-out paraphrases, neighbours and
unrelated concepts (:class:`~genguard.families.t2i.erasure_protocol.ErasureTask`), the methods to compare
and their options, the attack and the evaluation sizes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
import torch

from genguard.data.manifest import DataValidationError
from genguard.families.t2i import TextToImageModel, prompt_attacks
from genguard.families.t2i import erasure as erasers
from genguard.families.t2i.captioned_set import check_prompts
from genguard.families.t2i.erasure_protocol import ErasureJudge, ErasureTask, image_grid, markdown_table
from genguard.families.t2i.evaluator import concept_rates
from genguard.pipelines.t2i.nodes import png, register_model
from genguard.training import TrainConfig, fit

log = logging.getLogger(__name__)
ATTACKS = {"discrete": prompt_attacks.DiscreteTokenAttack, "soft": prompt_attacks.SoftPromptAttack}
ERASERS = {"ticoe": erasers.TICoEEraser, "esd": erasers.ESDEraser}


def _task(ticoe: dict[str, Any], evaluator: dict[str, Any]) -> ErasureTask:
    try:
        return ErasureTask.from_dict(dict(ticoe["target"]), evaluator["world"])
    except ValueError as error:
        raise DataValidationError(f"ticoe.target: {error}") from error


def reference_images(testbed: TextToImageModel, evaluator: dict[str, Any], ticoe: dict[str, Any],
                     t2i: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Images of the concept drawn by the clean model (TICoE's reference set; the paper uses one template, here
    ``ticoe.reference.prompts`` or the bank's prompts in turn), kept only when the classifier sees the concept
    (the paper's supplement filters by classifier score; review note 4)."""
    from genguard.families.t2i.prompts import repeat

    task = _task(ticoe, evaluator)
    block = dict(ticoe.get("reference") or {})
    count = int(block.get("count", 64))
    prompts = list(block.get("prompts") or task.bank_prompts(evaluator["world"]))
    check_prompts(prompts, max_tokens=testbed.max_length, tokenize=lambda p: testbed.tokenize([p])[0].tolist(),
                  what="ticoe.reference.prompts")
    prompt_list = repeat(prompts, count)
    images = testbed.generate(prompt_list, seeds=list(range(count)), **dict(t2i.get("sampling") or {}))
    hits = concept_rates(evaluator["classifier"].predict(images), evaluator["classifier"], task.attribute,
                         task.concept).bool()
    kept = images[hits] if block.get("filter", True) else images
    if len(kept) < int(block.get("min_kept", 4)):
        raise DataValidationError(
            f"ticoe.reference: only {len(kept)} of {count} images show {task.concept!r}; the testbed does not draw "
            "the concept well enough to erase it. Train the testbed longer (t2i.train.steps) or change "
            "ticoe.reference.prompts")
    report = {"prompts": prompts, "generated": count, "kept": len(kept), "filtered": bool(block.get("filter", True))}
    log.info("ticoe reference set: %d of %d images kept (classifier sees %r)", len(kept), count, task.concept)
    return kept, report


def erase(testbed: TextToImageModel, references: torch.Tensor, evaluator: dict[str, Any], ticoe: dict[str, Any]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every method of ``ticoe.methods`` edits its own copy of the UNet: {name: edited UNet}, report."""
    task = _task(ticoe, evaluator)
    world = evaluator["world"]
    bank = task.bank_prompts(world)
    check_prompts(bank, max_tokens=testbed.max_length, tokenize=lambda p: testbed.tokenize([p])[0].tolist(),
                  what="the ticoe prompt bank")
    edited: dict[str, Any] = {}
    report: dict[str, Any] = {"bank_size": len(bank), "bank": bank}
    for name, options in (ticoe.get("methods") or {}).items():
        if options is None:  # `--params ticoe.methods.<name>=null` switches a method off
            continue
        options = dict(options)
        kind = options.pop("kind", name)
        started = time.perf_counter()
        if kind == "uce":
            erase_prompts = options.pop("erase_prompts", None) or bank
            preserve = [p.text for p in (*task.neighbour_prompts(world), *task.unrelated_prompts(world))]
            edited[name] = erasers.uce_edit(testbed, erase_prompts, options.pop("guide_prompts", None),
                                            options.pop("preserve_prompts", None) or preserve, **options)
            report[name] = {"kind": kind, "seconds": time.perf_counter() - started}
            continue
        if kind not in ERASERS:
            raise ValueError(f"ticoe.methods.{name}: unknown kind {kind!r}; use one of {[*ERASERS, 'uce']}")
        train = TrainConfig.from_dict(options.pop("train", None))
        prompts = options.pop("prompts", None) or (bank if kind == "ticoe" else bank[:1])
        with torch.random.fork_rng(devices=[]):  # HVRL's init comes from the train seed: reruns reproduce
            torch.manual_seed(train.seed)
            eraser = ERASERS[kind](prompts=prompts, model=testbed, **options)
        stream = erasers.ReferenceStream(references, train.batch_size, torch.Generator().manual_seed(train.seed))
        result = fit(eraser, stream, None, train, desc=f"erase {name}")
        losses = [r["train/loss"] for r in result.history if "train/loss" in r]
        edited[name] = eraser.student
        report[name] = {"kind": kind, "seconds": time.perf_counter() - started, "steps": train.steps,
                        "final_loss": losses[-1] if losses else None,
                        **({"cccm": eraser.stats} if kind == "ticoe" else {})}
        log.info("ticoe: %s erased in %.0f s", name, report[name]["seconds"])
    return edited, report


def evaluate_erasure(testbed: TextToImageModel, edited: dict[str, Any], evaluator: dict[str, Any],
                     ticoe: dict[str, Any], t2i: dict[str, Any]
                     ) -> tuple[pd.DataFrame, str, dict[str, float], dict[str, bytes]]:
    """The erased-vs-baseline table (one row per method, the original first) and the same-seed grid."""
    task = _task(ticoe, evaluator)
    block = dict(ticoe.get("evaluation") or {})
    attack = dict(block.get("attack") or {})
    kind = attack.pop("kind", "discrete")
    judge = ErasureJudge(evaluator["world"], testbed, evaluator["classifier"], evaluator["scorer"], task,
                         images_per_set=int(block.get("images_per_set", 64)), seed=int(block.get("seed", 0)),
                         attack=ATTACKS[kind] if kind else None, attack_options=attack.get("options") or {},
                         attack_prompts=int(attack.get("prompts", 16)), **dict(t2i.get("sampling") or {}))
    rows, grids = [], []
    for name, unet in {"original": None, **edited}.items():
        started = time.perf_counter()
        row, images = judge.row(name, unet)
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        grids.append(torch.cat([images["target"][:8], images.get("unrelated", images["target"])[:8]]))
        log.info("ticoe evaluation %s: %s", name, {k: v for k, v in row.items() if k != "method"})
    table = pd.DataFrame(rows)
    title = f"Erasing {task.attribute} '{task.concept}' on the testbed (same prompts and seeds for every row)"
    metrics = {f"{row['method']}/{k}": float(v) for row in rows for k, v in row.items()
               if k != "method" and isinstance(v, int | float)}
    return table, markdown_table(rows, title), metrics, {"same_seed_grid": png(image_grid(grids))}


def register_erased(testbed: TextToImageModel, edited: dict[str, Any], table: pd.DataFrame, table_md: str,
                    metrics: dict[str, float], figures: dict[str, bytes], erase_report: dict[str, Any],
                    reference_report: dict[str, Any], ticoe: dict[str, Any]) -> dict[str, Any]:
    """Register the model erased by ``ticoe.registry.method`` (default ``ticoe``): the testbed with its UNet."""
    method = (ticoe.get("registry") or {}).get("method", "ticoe")
    if method not in edited:
        raise ValueError(f"ticoe.registry.method {method!r} was not run; ticoe.methods has {sorted(edited)}")
    erased = erasers.with_unet(testbed, edited[method])
    row = table[table["method"] == method].iloc[0]
    headline = {"target_rate": float(row["target_rate"]), **metrics}
    return register_model(erased, name=f"ticoe_{method}", summary=headline, table=table, group_column="method",
                          figures=figures, reports={"erasure_table.md": table_md, "erase_report": erase_report,
                                                    "reference_report": reference_report},
                          registry=ticoe["registry"], validation_metric="target_rate", greater_is_better=False,
                          extra={"erased": dict(ticoe["target"]), "method": method})
