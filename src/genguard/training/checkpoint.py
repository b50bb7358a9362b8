"""Per-round training checkpoints that resume exactly: weights, optimizer, schedule, RNG, loop state.

Model weights go to safetensors; the optimizer and schedule states (tensors + numbers only) are
read back with ``torch.load(weights_only=True)``, so a checkpoint can never execute code when
loaded. ``fingerprint`` names what the checkpoint belongs to (train config, model spec, data):
a checkpoint of another configuration is never resumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genguard.io.atomic import atomic_dir, write_json_atomic

WEIGHTS_FILE = "model.safetensors"


@dataclass
class Checkpoint:
    fingerprint: str
    loop: dict[str, Any]                  # LoopState.to_json(): rounds, steps, data position, history, best
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    schedule_state: dict[str, Any] | None
    rng_state: torch.Tensor
    stream_state: dict[str, Any] | None = None  # a data stream's own position (IterableDataset.state_dict)


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> None:
    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous().clone() for k, v in ckpt.model_state.items()},
                  str(tmp / WEIGHTS_FILE))
        torch.save({"optimizer": ckpt.optimizer_state, "schedule": ckpt.schedule_state, "rng": ckpt.rng_state,
                    "stream": ckpt.stream_state}, tmp / "optimizer.pt")
        write_json_atomic(tmp / "state.json", {"fingerprint": ckpt.fingerprint, "loop": ckpt.loop})


def read_fingerprint(directory: Path) -> str | None:
    state_path = directory / "state.json"
    if not state_path.is_file():
        return None
    try:
        return json.loads(state_path.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def load_checkpoint(directory: Path) -> Checkpoint | None:
    state_path = directory / "state.json"
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text())
    if "loop" not in state:  # a checkpoint written before rounds/steps existed: not resumable
        return None
    extra = torch.load(directory / "optimizer.pt", weights_only=True)
    return Checkpoint(fingerprint=state["fingerprint"], loop=state["loop"],
                      model_state=load_file(str(directory / WEIGHTS_FILE)), optimizer_state=extra["optimizer"],
                      schedule_state=extra.get("schedule"), rng_state=extra["rng"], stream_state=extra.get("stream"))


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / WEIGHTS_FILE))
