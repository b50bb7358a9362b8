"""Optimizer and learning-rate schedule from the train config, built from torch's own classes.

Schedules step once per optimizer step. ``cosine`` with no warmup is exactly torch's
``CosineAnnealingLR`` (no wrapper), so a run configured that way reproduces one written against
torch directly, bit for bit; warmup chains a ``LinearLR`` ramp in front with ``SequentialLR``.
"""

from __future__ import annotations

from typing import Any

import torch

from genguard.training.config import TrainConfig


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    opt = cfg.optimizer
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters in this stage (every parameter is frozen)")
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=opt.betas, eps=opt.eps)
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=opt.betas, eps=opt.eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=opt.momentum)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    sched = cfg.schedule
    warmup = min(sched.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    decay: torch.optim.lr_scheduler.LRScheduler | None
    if sched.name == "cosine":
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=sched.min_lr)
    elif sched.name == "linear":
        end = sched.min_lr / cfg.lr if cfg.lr else 0.0
        decay = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=end,
                                                  total_iters=decay_steps)
    else:
        decay = None
    if not warmup:
        return decay
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=sched.warmup_start_factor, end_factor=1.0,
                                             total_iters=warmup)
    if decay is None:
        return ramp
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
