"""Figures of a REVEAL run: the GRPO reward curve (total and per term, with the KL to the SFT model), the SFT
loss, and held-out accuracy per generator for the bare, SFT and GRPO policies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from genguard.evaluation.plots import figure_png, new_figure


def _series(history: Sequence[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[key]) for row in history if key in row and "step" in row]
    return [p[0] for p in points], [p[1] for p in points]


def reward_curve_png(history: Sequence[dict[str, float]]) -> bytes:
    figure = new_figure(9, 4)
    rewards, kl = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    terms = sorted({k for row in history for k in row if k.startswith("rewards/") and k.endswith("/mean")})
    steps, total = _series(history, "reward")
    if steps:
        rewards.plot(steps, total, color="black", linewidth=2, label="total (weighted)")
    for term in terms:
        rewards.plot(*_series(history, term), linewidth=1, label=term.split("/")[1])
    rewards.set(xlabel="GRPO step", ylabel="mean reward of the sampled completions", title="R-GRPO rewards")
    rewards.legend(fontsize=7)
    kl.plot(*_series(history, "kl"), color="tab:red")
    kl.set(xlabel="GRPO step", ylabel="KL to the SFT policy", title="KL (k3 estimate)")
    figure.tight_layout()
    return figure_png(figure)


def loss_curve_png(history: Sequence[dict[str, float]]) -> bytes:
    figure = new_figure(5, 3.5)
    axis = figure.add_subplot(1, 1, 1)
    axis.plot(*_series(history, "loss"))
    axis.set(xlabel="SFT step", ylabel="cross-entropy on the chain of evidence", title="CoE-Tuning loss")
    figure.tight_layout()
    return figure_png(figure)


def accuracy_png(board: pd.DataFrame) -> bytes:
    """Held-out accuracy per generator (and the mean), one bar per policy."""
    generators = list(dict.fromkeys(board["generator"].astype(str)))
    policies = list(dict.fromkeys(board["policy"]))
    figure = new_figure(max(5, 1.3 * len(generators)), 3.5)
    axis = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(policies), 1)
    for i, policy in enumerate(policies):
        rows = board[board["policy"] == policy].set_index("generator")["acc"]
        axis.bar(np.arange(len(generators)) + i * width, [rows.get(g, np.nan) for g in generators], width, label=policy)
    axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    axis.set_xticks(np.arange(len(generators)) + width * (len(policies) - 1) / 2, generators, rotation=20, fontsize=8)
    axis.set(ylim=(0, 1), ylabel="accuracy (real + fake)", title="Detection accuracy per generator")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)


def curve_metrics(history: Sequence[dict[str, float]]) -> dict[str, float]:
    """The GRPO curve in numbers: mean sampled reward over the first and the last quarter of the steps (at
    least one step each), their difference, and the largest KL to the SFT policy."""
    rewards = [row["reward"] for row in history if "reward" in row]
    if not rewards:
        return {}
    span = max(1, len(rewards) // 4)
    first, last = float(np.mean(rewards[:span])), float(np.mean(rewards[-span:]))
    kl = [row["kl"] for row in history if "kl" in row]
    return {"grpo/curve/reward_first_quarter": first, "grpo/curve/reward_last_quarter": last,
            "grpo/curve/reward_gain": last - first, "grpo/curve/max_kl": float(max(kl)) if kl else float("nan")}
