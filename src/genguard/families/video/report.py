"""The robustness grid as a reader sees it: a Markdown report, a small metrics dict, and figures (PNG bytes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from genguard.evaluation.plots import figure_png, new_figure


def _means(grid: pd.DataFrame) -> pd.DataFrame:
    return grid[grid["group"] == "mean"]


def _pivot(grid: pd.DataFrame, column: str, conditions: Sequence[str], systems: Sequence[str]) -> pd.DataFrame:
    return _means(grid).pivot(index="system", columns="condition", values=column).reindex(
        index=list(systems), columns=list(conditions))


def _markdown_table(frame: pd.DataFrame, fmt: str) -> list[str]:
    header = ["system", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(frame.columns)) + "|"]
    for system, row in frame.iterrows():
        lines.append("| " + " | ".join([str(system), *(format(v, fmt) for v in row.to_numpy())]) + " |")
    return lines


def markdown(grid: pd.DataFrame, loads: pd.DataFrame, cost: dict[str, Any], conditions: Sequence[str],
             systems: Sequence[str]) -> str:
    attacks = [c for c in conditions if c != "clean"]
    lines = ["# Video MoE robustness (tlga)", "",
             ("Accuracy of the MoE (free top-1 routing) on the test clips, clean and under each attack "
              "(same eps, steps and random start for every attack)."), "",
             *_markdown_table(100 * _pivot(grid, "acc", conditions, systems), ".1f"), "",
             "## Router switch rate (% of clips whose top-1 expert changed)", "",
             *_markdown_table(100 * _pivot(grid, "flip_rate", attacks, systems), ".1f"), "",
             "## Routed to the clean least-confident expert (%)", "",
             *_markdown_table(100 * _pivot(grid, "weakest_rate", attacks, systems), ".1f"), "",
             "## Accuracy with routing frozen at the clean choice (%)", "",
             *_markdown_table(100 * _pivot(grid, "forced_acc", attacks, systems), ".1f"), "",
             "## Router Lipschitz ratio Lips-R (probabilities, MSE ratio)", "",
             *_markdown_table(_pivot(grid, "lips_r", attacks, systems), ".3g"), ""]
    load = loads.pivot(index="system", columns="condition", values="max_share").reindex(
        index=list(systems), columns=list(conditions))
    lines += ["## Largest expert share (%)", "", *_markdown_table(100 * load, ".1f"), ""]
    inference = cost["inference"]
    lines += ["## Cost", "",
              (f"Inference per clip: MoE {inference['moe_gflops'] * 1e3:.2f} MFLOPs vs dense "
               f"{inference['dense_gflops'] * 1e3:.2f} MFLOPs (router {inference['router_gflops'] * 1e3:.2f}): "
               f"{100 * inference['flop_saving']:.1f} % fewer FLOPs; measured {inference['moe_ms_per_clip']:.3f} "
               f"vs {inference['dense_ms_per_clip']:.3f} ms per clip ({100 * inference['time_saving']:.1f} % "
               "less time)."),
              "", "| attack | MFLOPs per clip | model-forward equivalents | gradient steps | ms per clip |",
              "|---|---:|---:|---:|---:|"]
    for name, record in cost["attacks"].items():
        lines.append(f"| {name} | {record['gflops_per_clip'] * 1e3:.2f} | {record['model_forward_equivalents']:.1f} "
                     f"| {record['gradient_steps']} | {record['seconds_per_clip'] * 1e3:.2f} |")
    lines += ["", "| training | seconds | seconds per epoch | cached |", "|---|---:|---:|---|"]
    for name, record in cost["training"].items():
        lines.append(f"| {name} | {record.get('seconds', float('nan')):.1f} | "
                     f"{record.get('seconds_per_epoch', float('nan')):.2f} | {record.get('cached')} |")
    return "\n".join(lines) + "\n"


def metrics(grid: pd.DataFrame, cost: dict[str, Any], registered: str) -> dict[str, Any]:
    """Small and flat (``dvc metrics show``): acc and switch rate per cell, worst-case robust accuracy of the
    registered model, inference cost."""
    out: dict[str, Any] = {}
    means = _means(grid)
    for row in means.itertuples():
        out[f"{row.system}/{row.condition}/acc"] = float(row.acc)
        if row.condition != "clean":
            out[f"{row.system}/{row.condition}/flip_rate"] = float(row.flip_rate)
    attacked = means[(means["system"] == registered) & (means["condition"] != "clean")]
    out["worst_robust_acc"] = float(attacked["acc"].min()) if len(attacked) else float("nan")
    out.update({f"cost/{k}": float(v) for k, v in cost["inference"].items()})
    return out


def robust_accuracy_png(grid: pd.DataFrame, conditions: Sequence[str], systems: Sequence[str]) -> bytes:
    table = _pivot(grid, "acc", conditions, systems)
    figure = new_figure(min(16.0, max(6.0, 0.22 * len(conditions) * len(systems))), 4.5)
    axes = figure.subplots()
    width = 0.8 / len(systems)
    positions = np.arange(len(conditions))
    for index, system in enumerate(systems):
        axes.bar(positions + index * width, 100 * table.loc[system].to_numpy(), width, label=system)
    axes.set_xticks(positions + width * (len(systems) - 1) / 2, list(conditions), rotation=30, ha="right")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize="small")
    axes.set_title("MoE accuracy under each attack")
    return figure_png(figure)


def expert_usage_png(usage: pd.DataFrame, systems: Sequence[str], conditions: Sequence[str]) -> bytes:
    """Share of clips per expert, clean and under each attack (rows in grid order; colour scale from 0 to the
    largest share, so a load shift of a few points shows)."""
    figure = new_figure(3.2 * len(systems), max(3.2, 0.22 * len(conditions)))
    top = 100 * max(0.5, float(usage["share"].max()))
    for index, system in enumerate(systems):
        axes = figure.add_subplot(1, len(systems), index + 1)
        shares = usage[usage["system"] == system].pivot(index="condition", columns="expert", values="share")
        shares = shares.reindex(list(conditions))
        image = axes.imshow(100 * shares.to_numpy(), vmin=0, vmax=top, cmap="viridis", aspect="auto")
        axes.set_yticks(range(len(shares.index)), list(shares.index), fontsize="x-small")
        axes.set_xticks(range(len(shares.columns)), [str(c) for c in shares.columns])
        axes.set_xlabel("expert")
        axes.set_title(system, fontsize="small")
    figure.colorbar(image, ax=figure.axes, label="share of clips (%)")
    return figure_png(figure)


def training_curves_png(training: dict[str, Any]) -> bytes:
    figure = new_figure(8, 3.2)
    loss_axes, acc_axes = figure.subplots(1, 2)
    for name, record in training.items():
        history = record.get("history") or []
        epochs = [r["epoch"] for r in history]
        if not epochs:
            continue
        loss_axes.plot(epochs, [r.get("train/loss", np.nan) for r in history], marker="o", label=name)
        acc_axes.plot(epochs, [100 * r.get("val/acc", np.nan) for r in history], marker="o", label=name)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss")
    acc_axes.set_xlabel("epoch")
    acc_axes.set_ylabel("clean val accuracy (%)")
    loss_axes.legend(fontsize="small")
    return figure_png(figure)
