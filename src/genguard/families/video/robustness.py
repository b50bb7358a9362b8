"""The robustness protocol of the video family: every model under every attack, and what each costs.

:func:`attack_grid` runs each named attack on each model over the test clips and returns one row per
(system, condition, group) - the long form the core leaderboard (:mod:`genguard.evaluation.leaderboard`)
takes - with:

* ``acc``: accuracy of the MoE with free routing on the attacked clips (a router-only attack is scored by
  what the whole model then does, as the paper scores it);
* ``forced_acc``: accuracy with the routing frozen at the clean choice (how an expert attack hurts the
  expert itself, separated from any re-routing);
* ``flip_rate``: share of clips whose top-1 expert differs from the clean choice (the router-switch rate;
  1 - flip_rate is the IoU of the selected-expert sets for top-1);
* ``weakest_rate``: share routed to the clean least-confident expert (what TLGA-R's guidance aims for);
* ``lips_r``: mean Lip(pi; x, x') of the router between clean and attacked clips (probabilities, MSE);
  ``lips_f`` the same for the MoE's logits. Magnitudes depend on those choices: compare within a table only.

:func:`expert_usage` gives the share of clips each expert serves, clean and attacked (routing collapse and
attack-driven load shifts show here). :func:`inference_cost` counts FLOPs of one clip through the MoE
(router + top-k experts) and through the dense model of equal width (every expert) with torch's own
``torch.utils.flop_counter`` (it counts the ops that actually run, so top-k dispatch is counted as
dispatched), and times both. :func:`attack_cost` counts an attack's FLOPs (forward and backward) per clip.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from genguard.families.video.attacks import Attack, lipschitz_ratio
from genguard.progress import progress

CLEAN = "clean"
GRID_METRICS: tuple[str, ...] = ("acc", "forced_acc", "flip_rate", "weakest_rate")


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def attacked_outputs(model: Any, clips: torch.Tensor, labels: torch.Tensor, attack: Attack | None,
                     batch_size: int) -> dict[str, torch.Tensor]:
    """Per clip: clean/attacked predictions, routing choices, forced-route predictions, Lipschitz ratios."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for rows in _batches(clips.shape[0], batch_size):
        x, y = clips[rows], labels[rows]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()  # decoded clips are stored as uint8
        adv = attack(model, x, y) if attack is not None else x
        with torch.no_grad():
            clean_logits, clean_routing = model(x, return_routing=True)
            logits, routing = model(adv, return_routing=True)
            forced = model(adv, force=clean_routing.selected)
        for name, value in {
            "label": y, "pred": logits.argmax(dim=1), "forced_pred": forced.argmax(dim=1),
            "clean_top": clean_routing.top, "top": routing.top, "clean_low": clean_routing.probs.argmin(dim=1),
            "lips_r": lipschitz_ratio(routing.probs, clean_routing.probs, adv, x),
            "lips_f": lipschitz_ratio(logits, clean_logits, adv, x),
            "linf": (adv - x).abs().flatten(1).amax(dim=1),
        }.items():
            parts.setdefault(name, []).append(value.detach().cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def _summary(out: Mapping[str, torch.Tensor], rows: torch.Tensor) -> dict[str, float]:
    label = out["label"][rows]
    return {"acc": float((out["pred"][rows] == label).float().mean()),
            "forced_acc": float((out["forced_pred"][rows] == label).float().mean()),
            "flip_rate": float((out["top"][rows] != out["clean_top"][rows]).float().mean()),
            "weakest_rate": float((out["top"][rows] == out["clean_low"][rows]).float().mean()),
            "lips_r": float(out["lips_r"][rows].mean()), "lips_f": float(out["lips_f"][rows].mean()),
            "max_linf": float(out["linf"][rows].max()), "n": int(rows.numel())}


def attack_grid(models: Mapping[str, Any], attacks: Mapping[str, Attack], clips: torch.Tensor,
                labels: torch.Tensor, groups: list[str], *, batch_size: int = 64, show_progress: bool = True
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table: system x condition x group incl. ``mean`` rows, expert usage: system x condition x expert).

    ``condition`` is ``clean`` or an attack name; ``seconds`` is the attack's wall time over all clips.
    """
    group_array = np.asarray(groups)
    rows: list[dict[str, Any]] = []
    usage: list[dict[str, Any]] = []
    jobs = [(system, condition) for system in models for condition in (CLEAN, *attacks)]
    for system, condition in progress(jobs, desc="attack grid", enabled=show_progress, unit="cell"):
        model = models[system]
        started = time.perf_counter()
        out = attacked_outputs(model, clips, labels, attacks.get(condition), batch_size)
        seconds = time.perf_counter() - started
        every = torch.arange(labels.shape[0])
        rows.append({"system": system, "condition": condition, "group": "mean", **_summary(out, every),
                     "seconds": seconds})
        for group in dict.fromkeys(groups):
            members = torch.from_numpy(np.flatnonzero(group_array == group))
            rows.append({"system": system, "condition": condition, "group": group, **_summary(out, members),
                         "seconds": seconds})
        counts = torch.bincount(out["top"], minlength=model.n_experts).double() / labels.shape[0]
        usage += [{"system": system, "condition": condition, "expert": index, "share": float(share)}
                  for index, share in enumerate(counts)]
    return pd.DataFrame(rows), pd.DataFrame(usage)


def expert_load_stats(usage: pd.DataFrame) -> pd.DataFrame:
    """Per (system, condition): the largest expert share and the load's coefficient of variation."""
    grouped = usage.groupby(["system", "condition"], sort=False)["share"]
    return pd.DataFrame({"max_share": grouped.max(), "load_cv": grouped.std(ddof=0) / grouped.mean()}).reset_index()


# ------------------------------------------------------------------------------------------ cost
class _FlopTally(TorchDispatchMode):
    """Torch's own FLOP formulas (``torch.utils.flop_counter.flop_registry``, what ``FlopCounterMode`` uses)
    summed over every op dispatched. ``FlopCounterMode`` itself cannot watch an attack: its per-module
    tracker hooks refuse ``torch.autograd.grad`` (gradients w.r.t. the input only), so the total is kept
    here without the per-module breakdown."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(function: Any, *args: Any) -> int:
    """FLOPs of every op that runs while ``function(*args)`` runs (forward, and backward if it runs one)."""
    with _FlopTally() as tally:
        function(*args)
    return tally.total


def _median_seconds(function: Any, clips: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        function(clips)  # warm-up: first calls allocate
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            function(clips)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def inference_cost(model: Any, clip_shape: tuple[int, ...], *, batch_size: int = 32, repeats: int = 5,
                   seed: int = 0) -> dict[str, float]:
    """FLOPs per clip (batch 1) and measured seconds per clip (median over ``repeats`` batches) of the MoE
    (router + top-k experts) and of the dense model of equal width (router + all experts)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    one = torch.rand((1, *clip_shape), generator=generator)
    batch = torch.rand((batch_size, *clip_shape), generator=generator)
    with torch.no_grad():
        moe = count_flops(model, one)
        dense = count_flops(model.forward_dense, one)
        router = count_flops(model.route, one)
    moe_seconds = _median_seconds(model, batch, repeats) / batch_size
    dense_seconds = _median_seconds(model.forward_dense, batch, repeats) / batch_size
    return {"moe_gflops": moe / 1e9, "dense_gflops": dense / 1e9, "router_gflops": router / 1e9,
            "flop_saving": 1.0 - moe / dense, "moe_ms_per_clip": 1e3 * moe_seconds,
            "dense_ms_per_clip": 1e3 * dense_seconds, "time_saving": 1.0 - moe_seconds / dense_seconds}


def attack_cost(model: Any, attack: Attack, clips: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """An attack's cost per clip: FLOPs (all its forward and backward passes), gradient steps, seconds."""
    attack(model, clips, labels)  # warm-up: the first call allocates
    started = time.perf_counter()
    attack(model, clips, labels)
    seconds = time.perf_counter() - started  # timed apart: the flop counter slows every op it sees
    flops = count_flops(attack, model, clips, labels)
    forward_flops = count_flops(torch.no_grad()(model), clips)
    n = clips.shape[0]
    return {"gflops_per_clip": flops / n / 1e9, "model_forward_equivalents": flops / forward_flops,
            "gradient_steps": attack.steps, "seconds_per_clip": seconds / n}
