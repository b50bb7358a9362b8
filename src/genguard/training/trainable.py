"""What the one training loop asks of a model: the contract every family's trainable models satisfy.

An AIGI detector, a diffusion UNet being erased, a video mixture-of-experts under adversarial
training and the project's own dataset generators all train through :func:`genguard.training.fit`.
The loop only ever calls:

- ``training_loss(batch) -> (scalar loss, {name: float})``: the method's objective for one batch;
- ``predict_step(batch) -> Tensor``: raw outputs for evaluation (one logit per row for a binary
  task, N x C logits for a multi-class one); evaluators turn them into metrics;
- ``parameter_groups(lr, weight_decay) -> optimizer groups`` (methods with several learning rates);
- ``gradient_hook() -> None | callable``: run after each backward, before the optimizer uses the
  gradients. It may edit ``.grad`` in place, or return a *deferred* loss whose gradient the loop
  back-propagates too, through the same backward (DGS-Net's gradient surgery plugs in here);
- ``training_stages()`` / ``begin_stage(name, train_set)``: models trained in stages (a teacher,
  then a student) get one loop run per stage, each with its own overrides of the train config.

``init_spec`` is what :func:`genguard.registry.build_model` needs to rebuild the exact module in
another process (DeepSpeed ranks, model files): no pickling anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

GradientHook = Callable[[], "torch.Tensor | None"]


class Trainable(nn.Module):
    def __init__(self, init_spec: dict[str, Any]) -> None:
        super().__init__()
        self.init_spec = init_spec

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no predict_step: it cannot be evaluated")

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    def gradient_hook(self) -> GradientHook | None:
        return None

    def training_stages(self) -> list[tuple[str, dict[str, Any]]]:
        """(stage name, overrides of the train config) in order; one loop run each."""
        return [("main", {})]

    def begin_stage(self, name: str, train_set: Any) -> None:
        """Called before each stage's run (freeze/unfreeze parts, fit data-derived buffers)."""


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
