"""Per-epoch training checkpoints that resume exactly: weights, optimizer, RNG, history.

Model weights go to safetensors; the optimizer state (tensors + numbers only) is read back with
``torch.load(weights_only=True)``, so a checkpoint can never execute code when loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genguard.io.atomic import atomic_dir, write_json_atomic


@dataclass
class Checkpoint:
    epoch: int                      # last completed epoch (0-based)
    fingerprint: str
    history: list[dict[str, Any]]
    best: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng_state: torch.Tensor


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> None:
    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous().clone() for k, v in ckpt.model_state.items()},
                  str(tmp / "model.safetensors"))
        torch.save({"optimizer": ckpt.optimizer_state, "rng": ckpt.rng_state}, tmp / "optimizer.pt")
        write_json_atomic(tmp / "state.json", {"epoch": ckpt.epoch, "fingerprint": ckpt.fingerprint,
                                               "history": ckpt.history, "best": ckpt.best})


def load_checkpoint(directory: Path) -> Checkpoint | None:
    state_path = directory / "state.json"
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text())
    extra = torch.load(directory / "optimizer.pt", weights_only=True)
    return Checkpoint(epoch=state["epoch"], fingerprint=state["fingerprint"], history=state["history"],
                      best=state["best"], model_state=load_file(str(directory / "model.safetensors")),
                      optimizer_state=extra["optimizer"], rng_state=extra["rng"])


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / "model.safetensors"))


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))
