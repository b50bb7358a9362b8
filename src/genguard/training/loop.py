"""The one training loop. Backends (in-process torch, DeepSpeed ranks) differ only in how they
back-propagate, step, reduce logs across ranks and store checkpoints; the rounds, the monitored
metric, best-round selection, resume and callbacks are this one function for both.

Per optimizer step: for each micro-batch, ``training_loss`` -> backward (loss weighted by the
micro-batch's share of the step) -> the model's gradient hook (its deferred loss, if any, goes
through the same backward) ; then the backend steps (clip, optimizer, LR schedule). Per round
(an epoch, or ``eval_every_steps`` steps): mean training logs, validation through the evaluator
the caller passed in (main process only; the result is shared with every rank), the monitor,
callbacks, a checkpoint. The monitor is ``val/<train.monitor>`` in the configured (or the
evaluator's) direction; a run with no validation split monitors ``train/loss`` (min) and records
it under that name, never as a ``val/`` metric.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset, IterableDataset

from genguard.progress import progress
from genguard.training.batches import Position, iterate_steps, steps_per_epoch
from genguard.training.config import TrainConfig
from genguard.training.trainable import Trainable

log = logging.getLogger(__name__)


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...


class Evaluator(Protocol):
    directions: dict[str, str]

    def evaluate(self, model: Any, dataset: Dataset, *, batch_size: int, device: Any = "cpu",
                 dtype: torch.dtype | None = None) -> dict[str, float]: ...


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best: dict[str, Any]
    resumed_from_epoch: int | None
    seconds: float
    steps: int = 0


@dataclass
class Monitor:
    """Which round is best: ``metric`` in direction ``mode``; NaN never wins."""

    metric: str
    mode: str
    best: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_run(cls, cfg: TrainConfig, evaluator: Evaluator | None, validates: bool) -> Monitor:
        if not validates:
            return Monitor("train/loss", "min")
        directions = getattr(evaluator, "directions", {}) or {}
        mode = cfg.monitor_mode or directions.get(cfg.monitor, "max")
        return Monitor(f"val/{cfg.monitor}", mode)

    def __post_init__(self) -> None:
        if not self.best:
            self.best = {"epoch": -1, "step": 0, "metric": self.metric, "mode": self.mode,
                         "value": -math.inf if self.mode == "max" else math.inf}

    def update(self, record: dict[str, Any]) -> bool:
        if self.metric not in record:
            available = sorted(k for k in record if k.startswith("val/"))
            raise ValueError(f"train.monitor names {self.metric!r}, which validation does not report; "
                             f"it reports {available}. Fix: set train.monitor to one of "
                             f"{[a.removeprefix('val/') for a in available]}")
        value = float(record[self.metric])
        if math.isnan(value):
            return False
        better = value > self.best["value"] if self.mode == "max" else value < self.best["value"]
        if better:
            self.best = {"epoch": record["epoch"], "step": record["step"], "value": value,
                         "metric": self.metric, "mode": self.mode}
        return better


@dataclass
class LoopState:
    """What a checkpoint must hold for a resumed run to end exactly like an uninterrupted one."""

    round: int = 0                     # rounds completed
    step: int = 0                      # optimizer steps completed
    position: Position = field(default_factory=Position)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "step": self.step, "history": self.history, "best": self.best,
                "position": {"epoch": self.position.epoch, "step_in_epoch": self.position.step_in_epoch}}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> LoopState:
        return cls(round=values["round"], step=values["step"], history=values["history"], best=values["best"],
                   position=Position(**values["position"]))


class Backend(Protocol):
    """How one process trains: the in-process torch backend or one DeepSpeed rank."""

    rank: int
    world_size: int
    pads_last_batch: bool

    @property
    def is_main(self) -> bool: ...
    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]: ...
    def zero_grad(self) -> None: ...
    def backward(self, loss: torch.Tensor, weight: float, deferred: bool = False) -> None: ...
    def after_micro_batch(self, last: bool) -> None: ...
    def reduce_means(self, means: dict[str, float]) -> dict[str, float]: ...
    def share(self, record: dict[str, Any]) -> dict[str, Any]: ...
    def validate(self, evaluator: Evaluator, val_set: Dataset, batch_size: int) -> dict[str, float]: ...
    def remember_best(self) -> None: ...
    def restore_best(self) -> None: ...
    def save_checkpoint(self, state: LoopState) -> None: ...
    def load_checkpoint(self) -> LoopState | None: ...


def run_rounds(model: Trainable, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig, backend: Backend,
               *, evaluator: Evaluator | None = None, callbacks: Sequence[Callback] = (),
               on_step: Callable[[int, dict[str, float]], None] | None = None,
               desc: str = "train", show_progress: bool = True) -> TrainResult:
    started = time.perf_counter()
    validates = val_set is not None and len(val_set) > 0 and evaluator is not None
    per_epoch = None if isinstance(train_set, IterableDataset) else steps_per_epoch(len(train_set), cfg)
    total_steps, rounds = cfg.total_steps(per_epoch), cfg.rounds(per_epoch)
    steps_per_round = per_epoch if not cfg.step_mode else (cfg.eval_every_steps or cfg.steps)
    monitor = Monitor.for_run(cfg, evaluator, validates)

    state = backend.load_checkpoint() or LoopState(best=monitor.best)
    resumed = state.round - 1 if state.round else None
    if resumed is not None:
        log.info("resuming training after round %d (step %d)", state.round, state.step)
    monitor.best = state.best
    hook = model.gradient_hook()
    stream = iterate_steps(train_set, cfg, state.position, world=backend.world_size, rank=backend.rank,
                           pad=backend.pads_last_batch)
    for round_index in range(state.round, rounds):
        model.train()
        n_steps = min(steps_per_round, total_steps - state.step)
        sums: dict[str, float] = {}
        bar = progress(total=n_steps, desc=f"{desc} {round_index + 1}/{rounds}", unit="step",
                       enabled=backend.is_main and show_progress)
        for _ in range(n_steps):
            micro_batches, weights = next(stream)
            backend.zero_grad()
            step_logs: dict[str, float] = {}
            for position, (batch, weight) in enumerate(zip(micro_batches, weights, strict=True)):
                loss, logs = model.training_loss(backend.prepare(batch))
                backend.backward(loss, weight)
                if hook is not None:
                    # After gradients exist, before the optimizer uses them (e.g. gradient surgery).
                    deferred = hook()
                    if deferred is not None:
                        backend.backward(deferred, 1.0, deferred=True)
                backend.after_micro_batch(last=position == len(micro_batches) - 1)
                for key, value in {"loss": float(loss.detach()), **logs}.items():
                    step_logs[key] = step_logs.get(key, 0.0) + weight * value
            state.step += 1
            for key, value in step_logs.items():
                sums[key] = sums.get(key, 0.0) + value
            if on_step is not None:
                on_step(state.step, step_logs)
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / (bar.n or 1):.4f}")
        bar.close()
        means = backend.reduce_means({key: value / max(n_steps, 1) for key, value in sums.items()})
        record: dict[str, Any] = {"epoch": round_index + 1, "step": state.step,
                                  **{f"train/{key}": value for key, value in means.items()}}
        if validates:
            record.update({f"val/{key}": value for key, value in
                           backend.validate(evaluator, val_set, cfg.eval_batch_size).items()})
        record = backend.share(record)
        if monitor.update(record):
            backend.remember_best()
        state.round, state.best = round_index + 1, monitor.best
        state.history.append(record)
        if backend.is_main:
            log.info("%s round %d/%d: %s", desc, round_index + 1, rounds,
                     ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch", "step")))
            for callback in callbacks:
                callback.on_epoch_end(round_index + 1, {k: v for k, v in record.items() if k not in ("epoch", "step")})
        backend.save_checkpoint(state)
    if cfg.select_best and state.best.get("epoch", -1) > 0:
        backend.restore_best()
    return TrainResult(history=state.history, best=state.best, resumed_from_epoch=resumed,
                       seconds=time.perf_counter() - started, steps=state.step)
