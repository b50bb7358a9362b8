"""In-process training: the one loop (:mod:`genguard.training.loop`) with the plain torch backend.

``fit`` trains a :class:`~genguard.training.trainable.Trainable` in place and checkpoints every
round under ``checkpoint_dir``: ``last/`` (weights, optimizer, schedule, RNG, loop state) and
``best/`` (the best round's weights). A run killed after round k and started again with the same
fingerprint (train config + model spec + data) resumes there and ends with the same weights as an
uninterrupted run (tested); a checkpoint of another fingerprint is discarded, never resumed.
The caller's global RNG is left as it was: the run seeds and checkpoints its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from genguard.training.batches import steps_per_epoch
from genguard.training.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_weights_file,
    save_checkpoint,
    save_weights,
)
from genguard.training.config import TrainConfig
from genguard.training.loop import Callback, Evaluator, LoopState, TrainResult, run_rounds
from genguard.training.optim import build_optimizer, build_schedule
from genguard.training.trainable import Trainable

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_fingerprint(cfg: TrainConfig, model: Trainable, data_fingerprint: str) -> str:
    """What a checkpoint belongs to; the DeepSpeed ranks compute the same value."""
    return fingerprint(cfg.to_dict(), model.init_spec, data_fingerprint)


class LocalBackend:
    """One process, plain ``loss.backward()`` / ``optimizer.step()``."""

    rank, world_size, pads_last_batch = 0, 1, False
    is_main = True

    def __init__(self, model: Trainable, cfg: TrainConfig, train_set: Dataset, *, checkpoint_dir: Path | None,
                 run_id: str) -> None:
        self.model, self.cfg, self.train_set, self.run_id = model, cfg, train_set, run_id
        self.optimizer = build_optimizer(model.parameter_groups(cfg.lr, cfg.weight_decay), cfg)
        per_epoch = None if isinstance(train_set, IterableDataset) else steps_per_epoch(len(train_set), cfg)
        self.schedule = build_schedule(self.optimizer, cfg, cfg.total_steps(per_epoch))
        self.checkpoint_dir = checkpoint_dir
        self.best_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ optimisation
    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, weight: float, deferred: bool = False) -> None:
        (loss if weight == 1.0 else loss * weight).backward()

    def after_micro_batch(self, last: bool) -> None:
        if not last:
            return
        if self.cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()

    # ------------------------------------------------------------------ rounds
    def reduce_means(self, means: dict[str, float]) -> dict[str, float]:
        return means

    def share(self, record: dict[str, Any]) -> dict[str, Any]:
        return record

    def validate(self, evaluator: Evaluator, val_set: Dataset, batch_size: int) -> dict[str, float]:
        return evaluator.evaluate(self.model, val_set, batch_size=batch_size)

    def remember_best(self) -> None:
        self.best_state = copy.deepcopy(self.model.state_dict())
        if self.checkpoint_dir is not None:
            save_weights(self.checkpoint_dir / "best", self.best_state)

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: LoopState) -> None:
        if self.checkpoint_dir is None:
            return
        stream = self.train_set.state_dict() if hasattr(self.train_set, "state_dict") else None
        save_checkpoint(self.checkpoint_dir / "last", Checkpoint(
            fingerprint=self.run_id, loop=state.to_json(), model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            schedule_state=self.schedule.state_dict() if self.schedule is not None else None,
            rng_state=torch.get_rng_state(), stream_state=stream))

    def load_checkpoint(self) -> LoopState | None:
        if self.checkpoint_dir is None:
            return None
        ckpt = load_checkpoint(self.checkpoint_dir / "last")
        if ckpt is None:
            return None
        if ckpt.fingerprint != self.run_id:
            log.info("checkpoint in %s belongs to another configuration or dataset; starting fresh",
                     self.checkpoint_dir)
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            return None
        self.model.load_state_dict(ckpt.model_state)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        if self.schedule is not None and ckpt.schedule_state is not None:
            self.schedule.load_state_dict(ckpt.schedule_state)
        torch.set_rng_state(ckpt.rng_state)
        if ckpt.stream_state is not None and hasattr(self.train_set, "load_state_dict"):
            self.train_set.load_state_dict(ckpt.stream_state)
        best_dir = self.checkpoint_dir / "best"
        if (best_dir / "model.safetensors").is_file():
            self.best_state = load_weights_file(best_dir)
        log.info("resuming from the checkpoint in %s", self.checkpoint_dir / "last")
        return LoopState.from_json(ckpt.loop)


def fit(model: Trainable, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig, *,
        evaluator: Evaluator | None = None, checkpoint_dir: Path | None = None, callbacks: Sequence[Callback] = (),
        data_fingerprint: str = "", on_step: Callable[[int, dict[str, float]], None] | None = None,
        desc: str = "train", show_progress: bool = True) -> TrainResult:
    """Train ``model`` in place (validation through ``evaluator`` when ``val_set`` has rows)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backend = LocalBackend(model, cfg, train_set, checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                               run_id=run_fingerprint(cfg, model, data_fingerprint))
        return run_rounds(model, train_set, val_set, cfg, backend, evaluator=evaluator, callbacks=callbacks,
                          on_step=on_step, desc=desc, show_progress=show_progress)
