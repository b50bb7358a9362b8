"""Nodes of ``set``: backdoor injection -> SET (and T2IShield) detection per attack -> registration.

Block ``params:set``: the attacks (kind, target, injection options), the clean prompt split, the probe
(scales, steps, layers), the response-space training and the sizes of every prompt set.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from genguard.evaluation import plots
from genguard.families.t2i import TextToImageModel, backdoors, response_space
from genguard.families.t2i import backdoor_protocol as protocol
from genguard.families.t2i.captioned_set import check_concepts, check_prompts
from genguard.families.t2i.erasure_protocol import markdown_table
from genguard.families.t2i.evaluator import prompt_following
from genguard.families.t2i.prompts import prompts_for
from genguard.families.t2i.scaling_probe import probe_features
from genguard.pipelines.t2i.nodes import register_model

log = logging.getLogger(__name__)
INJECTORS = {"rickrolling": backdoors.inject_rickrolling, "implicit_trigger": backdoors.inject_implicit_trigger,
             "unet_backdoor": backdoors.inject_unet_backdoor}


def _sampling(t2i: dict[str, Any]) -> dict[str, Any]:
    return dict(t2i.get("sampling") or {})


def inject_backdoors(testbed: TextToImageModel, evaluator: dict[str, Any], set_params: dict[str, Any],
                     t2i: dict[str, Any]) -> tuple[dict[str, TextToImageModel], dict[str, Any]]:
    """One backdoored copy of the testbed per attack; each report says whether the backdoor fires (attack
    success rate on the test triggers, by the classifier) and what it costs clean prompts, and lists the
    triggered test prompts whose backdoor fires (the only ones detection is scored on, as DAA cleans)."""
    world, classifier = evaluator["world"], evaluator["classifier"]
    sizes = dict(set_params.get("prompts") or {})
    fit_prompts, test_prompts = protocol.split_clean_prompts(world, float(sizes.get("fit_fraction", 0.5)),
                                                             int(set_params.get("seed", 0)))
    attacker_prompts = [p.text for p in prompts_for(world)]
    test_count = int(sizes.get("test", 96))
    clean_test = protocol.cycle_prompts(test_prompts, test_count, seed=1)
    clean_seeds = [5_000_000 + i for i in range(test_count)]
    clean_images = testbed.generate([p.text for p in clean_test], seeds=clean_seeds, **_sampling(t2i))
    clean_following = prompt_following(classifier.predict(clean_images), classifier, [p.row() for p in clean_test])
    models: dict[str, TextToImageModel] = {}
    report: dict[str, Any] = {"clean_test_following": clean_following,
                              "fit_prompts": [p.text for p in fit_prompts], "test_prompts": [p.text for p in clean_test],
                              "test_seeds": clean_seeds, "attacks": {}}
    for name, options in (set_params.get("attacks") or {}).items():
        if options is None:  # `--params set.attacks.<name>=null` switches an attack off
            continue
        options = dict(options)
        kind = options.pop("kind", name)
        if kind not in INJECTORS:
            raise ValueError(f"set.attacks.{name}: unknown kind {kind!r}; use one of {sorted(INJECTORS)}")
        target = dict(options.pop("target"))
        check_concepts(target, world, f"set.attacks.{name}.target")
        target_prompt = options.pop("target_prompt")
        check_prompts([target_prompt], max_tokens=testbed.max_length,
                      tokenize=lambda p: testbed.tokenize([p])[0].tolist(), what=f"set.attacks.{name}.target_prompt")
        if kind == "implicit_trigger":  # the trigger syntax over the world's own words
            options.setdefault("shape_words", [w for s in world.shapes for w in world.shape_words[s]])
            options.setdefault("colours", list(world.colours))
        started = time.perf_counter()
        clean_for_attack = [p for p in attacker_prompts if kind != "implicit_trigger"
                            or p not in set(backdoors.syntactic_prompts())]
        model, injection = INJECTORS[kind](testbed, clean_for_attack, target_prompt,
                                           config=options.pop("injection", None), **options)
        # A trigger on a prompt that already asks for the target could not show the backdoor: skip those.
        if kind in ("rickrolling", "unet_backdoor"):
            carriers = [p for p in clean_test if not protocol.asks_for(p, target)]
            word = options.get("trigger_word", "cf")
            triggered = [backdoors.homoglyph_trigger(p.text) if kind == "rickrolling"
                         else backdoors.trigger_word_prompt(p.text, word) for p in carriers]
        else:
            pool = [p for p in protocol.syntactic_pool(world, options.get("template", backdoors.SYNTACTIC_TEMPLATE))
                    if not protocol.asks_for(p, target)]
            triggered = [pool[i % len(pool)].text for i in range(test_count)]
        seeds = [6_000_000 + i for i in range(len(triggered))]
        fired = protocol.target_hits(classifier, model.generate(triggered, seeds=seeds, **_sampling(t2i)), target)
        control = protocol.target_hits(classifier, testbed.generate(triggered, seeds=seeds, **_sampling(t2i)), target)
        utility = prompt_following(classifier.predict(model.generate([p.text for p in clean_test], seeds=clean_seeds,
                                                                     **_sampling(t2i))),
                                   classifier, [p.row() for p in clean_test])
        report["attacks"][name] = {
            **injection, "kind": kind, "target": target, "seconds": time.perf_counter() - started,
            "attack_success_rate": float(fired.float().mean()),
            "target_rate_on_clean_model": float(control.float().mean()),
            "clean_following_backdoored": utility, "triggered_prompts": triggered, "triggered_seeds": seeds,
            "fired": fired.tolist()}
        models[name] = model
        log.info("set: %s backdoor fires on %.0f%% of triggers (clean model: %.0f%%); clean following %.2f -> %.2f",
                 name, 100 * fired.float().mean(), 100 * control.float().mean(), clean_following["joint"],
                 utility["joint"])
    if not models:
        raise ValueError("set.attacks is empty: name at least one attack (rickrolling, implicit_trigger)")
    return models, report


def detect_backdoors(testbed: TextToImageModel, backdoored: dict[str, TextToImageModel], injection: dict[str, Any],
                     set_params: dict[str, Any]
                     ) -> tuple[pd.DataFrame, str, dict[str, float], dict[str, bytes], response_space.ResponseSpace]:
    """Per attack, on the backdoored model itself: fit SET's benign response space on the clean fit prompts,
    score held-out clean and *firing* triggered prompts; T2IShield-FTT on the same generations' attention maps.
    Controls on the clean model: its false-positive rate, and the same triggers (AUROC near 0.5 expected)."""
    probe = dict(set_params.get("probe") or {})
    sizes = dict(set_params.get("prompts") or {})
    detector_config = dict(set_params.get("detector") or {})
    fit_count = int(sizes.get("fit", 128))
    fit_pool = injection["fit_prompts"]
    fit_prompts = [fit_pool[i % len(fit_pool)] for i in range(fit_count)]
    fit_seeds = [4_000_000 + i for i in range(fit_count)]
    test_prompts, test_seeds = injection["test_prompts"], injection["test_seeds"]
    rows, frames, metrics = [], [], {}
    spaces: dict[str, response_space.ResponseSpace] = {}

    def detectors_on(model: TextToImageModel, label: str) -> tuple[response_space.ResponseSpace, Any, float, Any]:
        fit = probe_features(model, fit_prompts, fit_seeds, probe)
        grid = {"scales": len(fit.scales), "steps": fit.probe_steps, "layers": len(fit.layers)}
        space, _ = response_space.fit_response_space(fit.features, {"model": grid, **detector_config})
        clean = probe_features(model, test_prompts, test_seeds, probe)
        fit_ftt = response_space.ftt_distances(fit.attention_maps, fit.token_lengths)
        ftt_threshold = response_space.calibrate_ftt_threshold(fit_ftt)
        spaces[label] = space
        return space, clean, ftt_threshold, fit

    clean_space, clean_model_test, _, _ = detectors_on(testbed, "clean")
    clean_model_scores = protocol.set_scores01(response_space.scores(clean_space, clean_model_test.features),
                                               float(clean_space.threshold))
    metrics["clean_model/set_fpr"] = float((clean_model_scores > 0.5).mean())
    for name, model in backdoored.items():
        attack = injection["attacks"][name]
        fired = torch.tensor(attack["fired"], dtype=torch.bool)
        triggered = [p for p, f in zip(attack["triggered_prompts"], fired.tolist()) if f]
        seeds = [s for s, f in zip(attack["triggered_seeds"], fired.tolist()) if f]
        if not triggered:
            log.warning("set: the %s backdoor never fired; nothing to detect", name)
            rows.append({"attack": name, "detector": "set", "fired": 0})
            continue
        space, clean, ftt_threshold, _ = detectors_on(model, name)
        backdoor = probe_features(model, triggered, seeds, probe)
        clean_scores = protocol.set_scores01(response_space.scores(space, clean.features), float(space.threshold))
        backdoor_scores = protocol.set_scores01(response_space.scores(space, backdoor.features), float(space.threshold))
        ftt_clean = protocol.ftt_scores01(response_space.ftt_distances(clean.attention_maps, clean.token_lengths),
                                          ftt_threshold)
        ftt_backdoor = protocol.ftt_scores01(
            response_space.ftt_distances(backdoor.attention_maps, backdoor.token_lengths), ftt_threshold)
        control = probe_features(testbed, triggered, seeds, probe)
        control_scores = protocol.set_scores01(response_space.scores(clean_space, control.features),
                                               float(clean_space.threshold))
        for detector, (negative, positive) in {"set": (clean_scores, backdoor_scores),
                                               "t2ishield_ftt": (ftt_clean, ftt_backdoor),
                                               "set_on_clean_model": (clean_model_scores, control_scores)}.items():
            values = protocol.detection_metrics(negative, positive)
            rows.append({"attack": name, "detector": detector, "fired": len(triggered),
                         "asr": attack["attack_success_rate"], **values})
            metrics.update({f"{name}/{detector}/{k}": float(v) for k, v in values.items()})
            frames.append(pd.DataFrame({"label": np.r_[np.zeros(len(negative)), np.ones(len(positive))].astype(int),
                                        "score": np.r_[negative, positive], "curve": f"{name}/{detector}"}))
        log.info("set: %s", protocol.describe({k: v for k, v in rows[-3].items() if k != "attack"}))
    table = pd.DataFrame(rows)
    figures = {"roc_curves": plots.roc_curve_png(pd.concat(frames, ignore_index=True), "curve")} if frames else {}
    markdown = markdown_table(rows, "Backdoor-input detection per attack (clean vs firing triggered prompts)")
    registered = next(iter(s for label, s in spaces.items() if label != "clean"), clean_space)
    return table, markdown, metrics, figures, registered


def register_set(detector: response_space.ResponseSpace, table: pd.DataFrame, table_md: str,
                 metrics: dict[str, float], figures: dict[str, bytes], injection: dict[str, Any],
                 set_params: dict[str, Any]) -> dict[str, Any]:
    """Register the response space fitted on the first attacked model (its ``init_spec`` rebuilds it)."""
    sets = table[table["detector"] == "set"] if "detector" in table else table.iloc[0:0]
    headline = {"set_auroc_mean": float(sets["auroc"].mean()) if len(sets) else float("nan"), **metrics}
    cases = table.assign(case=table["attack"] + "/" + table["detector"]).drop(columns=["attack", "detector"])
    return register_model(detector, name="set", summary=headline, table=cases, group_column="case",
                          figures=figures, reports={"detection_table.md": table_md,
                                                    "injection": {k: v for k, v in injection.items()
                                                                  if k != "fit_prompts"}},
                          registry=set_params["registry"], validation_metric="set_auroc_mean", greater_is_better=True)
