"""Text-to-image speed measurements (imported by run_all.py; runnable alone):

    .venv/bin/python benchmarks/t2i.py [sampler] [set_cost] [stages]

sampler   images/s of the testbed sampler (DDIM, classifier-free guidance, VAE decode) against the bare UNet
          forward on the same batch: the sampler's time over (steps x one guided UNet call) is its overhead.
set_cost  SET's probe per prompt (1 baseline + |Λ| scaled trajectories x K steps, guided) against one plain
          generation of the same prompt; the ratio is what a defender pays per prompt.
stages    wall time of the embedded default's stages on this machine, each the node a `kedro run` executes:
          testbed training (autoencoder + denoiser, from scratch), TICoE / ESD / UCE erasure, backdoor
          injection and SET detection (one attack).
Weights do not change speed: the testbed is the embedded default's spec (conf/base/parameters_t2i.yml),
randomly initialised unless a trained one is cached.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _params(name: str) -> dict:
    files = {"t2i": "parameters_t2i.yml", "ticoe": "parameters_ticoe.yml", "set": "parameters_set.yml"}
    return yaml.safe_load((ROOT / "conf/base" / files[name]).read_text())[name]


def _testbed():
    from genguard.families.t2i import TextToImageModel
    from genguard.io.model_files import load_model_dir

    cached = ROOT / _params("t2i")["cache_dir"]
    if (cached / "config.json").is_file():
        return load_model_dir(cached).model.eval()
    return TextToImageModel(**_params("t2i")["model"]).eval()


def _median_seconds(function, repeats: int = 3) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_sampler(batch: int = 64, steps: int = 20) -> dict:
    model = _testbed()
    prompts = ["a red circle", "an outline of a blue square", "a green triangle", "a yellow diamond"] * (batch // 4)
    seeds = list(range(batch))
    context = model.encode_text(prompts)
    latents = model.initial_latents(seeds)
    timestep = torch.tensor(500)
    both = torch.cat([latents, latents])
    contexts = torch.cat([context, model.encode_text([""]).expand(batch, -1, -1)])
    with torch.inference_mode():
        unet_s = _median_seconds(lambda: model.unet(both, timestep, encoder_hidden_states=contexts))
        sampler_s = _median_seconds(lambda: model.generate(prompts, seeds=seeds, steps=steps), repeats=2)
    return {"batch": batch, "steps": steps, "sampler_images_per_s": batch / sampler_s,
            "guided_unet_calls_per_s": 1 / unet_s, "bare_unet_images_per_s_per_step": batch / unet_s,
            "sampler_over_steps_x_unet": sampler_s / (steps * unet_s)}


def bench_set_cost(prompts: int = 64) -> dict:
    from genguard.families.t2i.scaling_probe import probe_features

    model = _testbed()
    probe = {**_params("set")["probe"], "show_progress": False}
    texts = ["a red circle", "a blue square", "a green triangle", "a yellow diamond"] * (prompts // 4)
    seeds = list(range(prompts))
    with torch.inference_mode():
        probe_s = _median_seconds(lambda: probe_features(model, texts, seeds, probe), repeats=1)
        generation_s = _median_seconds(lambda: model.generate(texts, seeds=seeds, steps=_params("t2i")["sampling"]
                                                              ["steps"]), repeats=1)
    passes = (1 + len(probe["scales"])) * probe["probe_steps"]
    return {"prompts": prompts, "guided_unet_passes_per_prompt": passes,
            "generation_steps": _params("t2i")["sampling"]["steps"], "probe_s_per_prompt": probe_s / prompts,
            "generation_s_per_prompt": generation_s / prompts, "probe_over_generation": probe_s / generation_s}


def bench_stages() -> dict:
    """Each stage of the embedded default, timed where the pipeline runs it (its node function)."""
    import os
    import tempfile

    from genguard.pipelines.t2i import nodes, set_nodes, ticoe_nodes

    os.chdir(ROOT)
    t2i, ticoe, set_params = _params("t2i"), _params("ticoe"), _params("set")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="genguard-t2i-bench-") as tmp:
        t2i = {**t2i, "cache_dir": f"{tmp}/testbed", "checkpoint_dir": f"{tmp}/checkpoints",
               "evaluator": {**t2i["evaluator"], "cache_dir": f"{tmp}/evaluator"}}
        started = time.perf_counter()
        manifest = nodes.validate_captions(nodes.build_captions(t2i), t2i, f"{tmp}/reports")
        out["captions_s"] = time.perf_counter() - started
        started = time.perf_counter()
        testbed, _ = nodes.prepare_testbed(manifest, t2i)
        out["testbed_training_s"] = time.perf_counter() - started
        started = time.perf_counter()
        evaluator, _ = nodes.prepare_evaluator(manifest, testbed, t2i)
        out["evaluator_s"] = time.perf_counter() - started
        started = time.perf_counter()
        references, _ = ticoe_nodes.reference_images(testbed, evaluator, ticoe, t2i)
        out["reference_images_s"] = time.perf_counter() - started
        _, report = ticoe_nodes.erase(testbed, references, evaluator, ticoe)
        out.update({f"erase_{name}_s": value["seconds"] for name, value in report.items() if isinstance(value, dict)})
        one_attack = {**set_params, "attacks": {"rickrolling": set_params["attacks"]["rickrolling"]}}
        started = time.perf_counter()
        backdoored, injection = set_nodes.inject_backdoors(testbed, evaluator, one_attack, t2i)
        out["inject_and_measure_asr_s"] = time.perf_counter() - started
        started = time.perf_counter()
        set_nodes.detect_backdoors(testbed, backdoored, injection, one_attack)
        out["set_detection_one_attack_s"] = time.perf_counter() - started
    return out


BENCHES = {"sampler": bench_sampler, "set_cost": bench_set_cost, "stages": bench_stages}

if __name__ == "__main__":
    torch.set_num_threads(2)
    for name in sys.argv[1:] or list(BENCHES):
        print(f"== {name}", flush=True)
        print(json.dumps(BENCHES[name](), indent=2), flush=True)
