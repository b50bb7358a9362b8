"""The train config: one typed block per method (``<method>.train`` in Kedro parameters).

Batch semantics: ``batch_size`` is the *global* batch, the number of rows behind one optimizer
step, whatever the hardware. In-process it is split into ``grad_accum_steps`` micro-batches; under
DeepSpeed into ``world size x grad_accum_steps`` micro-batches of ``batch_size / (world x accum)``
rows per rank. So the same config means the same optimisation on 1 CPU or 8 GPUs (only the
arithmetic order differs), and a paper's "batch 32" is written ``batch_size: 32`` everywhere.

Length: ``epochs`` (passes over the training set) or ``steps`` (optimizer steps; for streams
without epochs, e.g. random patch batches). A *round* is one epoch, or ``eval_every_steps`` steps
in step mode; validation, the monitored metric, checkpoints and callbacks happen once per round.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from genguard.config import dataclass_from_dict

BACKENDS = ("torch", "deepspeed")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
MONITOR_MODES = ("max", "min")
DEFAULT_EPOCHS = 3


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0          # sgd only

    @classmethod
    def from_dict(cls, cfg: dict | str | None) -> OptimizerConfig:
        cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg or {})
        if "betas" in cfg:
            cfg["betas"] = tuple(float(b) for b in cfg["betas"])
        config = dataclass_from_dict(cls, cfg, "train.optimizer")
        if config.name not in OPTIMIZERS:
            raise ValueError(f"train.optimizer.name must be one of {OPTIMIZERS}, got {config.name!r}")
        return config


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "constant"         # constant | cosine (to min_lr) | linear (to min_lr)
    warmup_steps: int = 0          # linear warmup from warmup_start_factor * lr
    warmup_start_factor: float = 0.01
    min_lr: float = 0.0

    @classmethod
    def from_dict(cls, cfg: dict | str | None) -> ScheduleConfig:
        cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg or {})
        config = dataclass_from_dict(cls, cfg, "train.schedule")
        if config.name not in SCHEDULES:
            raise ValueError(f"train.schedule.name must be one of {SCHEDULES}, got {config.name!r}")
        if config.warmup_steps < 0 or not 0 < config.warmup_start_factor <= 1:
            raise ValueError("train.schedule needs warmup_steps >= 0 and 0 < warmup_start_factor <= 1")
        return config


@dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = None         # None (and no steps): DEFAULT_EPOCHS
    steps: int | None = None          # optimizer steps; instead of epochs
    eval_every_steps: int | None = None  # step mode: a round every N steps (None: one round)
    batch_size: int = 32              # global batch (see the module docstring)
    grad_accum_steps: int = 1
    eval_batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    grad_clip_norm: float | None = None
    monitor: str = "auc"              # validation metric that picks the best round (and the champion)
    monitor_mode: str | None = None   # max | min; None: the evaluator's preferred direction
    select_best: bool = True          # end with the best round's weights (early-stopping style)
    num_workers: int = 0
    backend: str = "torch"            # torch | deepspeed
    deepspeed: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: dict | None) -> TrainConfig:
        return dataclass_from_dict(cls, dict(cfg or {}), "train")

    def __post_init__(self) -> None:
        # Blocks given as plain dicts (Kedro parameters, keyword arguments) become typed configs.
        if not isinstance(self.optimizer, OptimizerConfig):
            object.__setattr__(self, "optimizer", OptimizerConfig.from_dict(self.optimizer))
        if not isinstance(self.schedule, ScheduleConfig):
            object.__setattr__(self, "schedule", ScheduleConfig.from_dict(self.schedule))
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS)
        self.validate()

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"train.backend must be one of {BACKENDS}, got {self.backend!r}")
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("set exactly one of train.epochs and train.steps "
                             f"(got epochs={self.epochs}, steps={self.steps})")
        if (self.epochs is not None and self.epochs < 1) or (self.steps is not None and self.steps < 1):
            raise ValueError("train.epochs / train.steps must be >= 1")
        if self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("train.batch_size and train.grad_accum_steps must be >= 1")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"train.batch_size {self.batch_size} must be a multiple of train.grad_accum_steps "
                             f"{self.grad_accum_steps} (it is the global batch, split into micro-batches)")
        if self.eval_every_steps is not None and (self.steps is None or self.eval_every_steps < 1):
            raise ValueError("train.eval_every_steps needs train.steps and must be >= 1")
        if self.monitor_mode is not None and self.monitor_mode not in MONITOR_MODES:
            raise ValueError(f"train.monitor_mode must be one of {MONITOR_MODES} or null, got {self.monitor_mode!r}")

    @property
    def step_mode(self) -> bool:
        return self.steps is not None

    def micro_batch_size(self, world_size: int = 1) -> int:
        parts = self.grad_accum_steps * world_size
        if self.batch_size % parts:
            raise ValueError(f"train.batch_size {self.batch_size} must split evenly over grad_accum_steps "
                             f"{self.grad_accum_steps} x {world_size} ranks; use a multiple of {parts}")
        return self.batch_size // parts

    def rounds(self, steps_per_epoch: int | None) -> int:
        """How many rounds the run has (epochs, or step chunks of ``eval_every_steps``)."""
        if not self.step_mode:
            return int(self.epochs)
        return math.ceil(self.steps / (self.eval_every_steps or self.steps))

    def total_steps(self, steps_per_epoch: int | None) -> int:
        if self.step_mode:
            return int(self.steps)
        if steps_per_epoch is None:
            raise ValueError("an epoch-based run needs a dataset with a length; use train.steps for streams")
        return int(self.epochs) * steps_per_epoch

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["optimizer"]["betas"] = list(self.optimizer.betas)
        return out
