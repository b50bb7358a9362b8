"""The one training loop every method uses (the DeepSpeed backend reuses its pieces).

Methods plug in through ``Detector.training_loss`` / ``parameter_groups`` / ``gradient_hook``; the
engine owns batching, the optimizer, validation, per-epoch checkpoints and exact resume:
each epoch's shuffle comes from a generator seeded with (seed, epoch) and the global torch RNG is
checkpointed, so a run killed after epoch k and restarted ends with the same weights as an
uninterrupted run (tested). Metrics go to callbacks; the engine knows nothing of MLflow.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from genguard.config import dataclass_from_dict
from genguard.methods.base import Detector
from genguard.training.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_weights_file,
    save_checkpoint,
    save_weights,
)

log = logging.getLogger(__name__)
BACKENDS = ("torch", "deepspeed")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    grad_clip_norm: float | None = None
    monitor: str = "auc"              # validation metric that selects the best epoch and the champion
    select_best: bool = True          # restore the best epoch's weights at the end (early-stopping style)
    num_workers: int = 0
    hflip: bool = True                # the only augmentation the NUIST recipes use
    backend: str = "torch"            # torch | deepspeed
    deepspeed: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: dict | None) -> TrainConfig:
        config = dataclass_from_dict(cls, cfg, "train")
        if config.backend not in BACKENDS:
            raise ValueError(f"train.backend must be one of {BACKENDS}, got {config.backend!r}")
        if config.epochs < 1 or config.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be >= 1")
        return config

    def to_dict(self) -> dict:
        return asdict(self)


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best: dict[str, Any]
    resumed_from_epoch: int | None
    seconds: float


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _collate(rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                num_workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, collate_fn=_collate)


@torch.no_grad()
def predict_logits(model: Detector, dataset: Dataset, batch_size: int = 128, num_workers: int = 0,
                   progress: str | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype | None = None) -> np.ndarray:
    """Logits for every row, in order. ``device``/``dtype`` match a model placed by DeepSpeed (bf16)."""
    model.eval()
    logits = []
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    for batch in tqdm(loader, desc=progress, disable=progress is None or None, leave=False):
        batch = {k: v.to(device, dtype) if (dtype is not None and v.is_floating_point()) else v.to(device)
                 for k, v in batch.items()}
        logits.append(model.logits_for(batch).float().cpu())
    return torch.cat(logits).numpy() if logits else np.zeros(0, dtype=np.float32)


def validation_metrics(model: Detector, dataset: Dataset, batch_size: int, device: torch.device | str = "cpu",
                       dtype: torch.dtype | None = None) -> dict[str, float]:
    from genguard.evaluation.metrics import binary_metrics

    logits = predict_logits(model, dataset, batch_size, device=device, dtype=dtype)
    labels = dataset.labels.numpy()  # both dataset types carry labels: never decode images for them
    probs = 1.0 / (1.0 + np.exp(-logits))
    eps = 1e-7
    bce = float(-np.mean(labels * np.log(probs + eps) + (1 - labels) * np.log(1 - probs + eps)))
    metrics = {k: float(v) for k, v in binary_metrics(labels, probs).items() if k in ("acc", "ap", "auc")}
    return {"loss": bce, **metrics}


def train_epoch(model: Detector, loader, *, backward: Callable[[torch.Tensor], None], step: Callable[[], None],
                zero_grad: Callable[[], None] = lambda: None, hook: Callable[[], None] | None = None,
                prepare: Callable[[dict], dict] = lambda batch: batch, desc: str | None = None) -> dict[str, float]:
    """One pass over ``loader``: loss -> backward -> gradient hook -> step; returns mean logs.

    Shared by the in-process loop and every DeepSpeed rank, which differ only in how they
    back-propagate and step (``loss.backward``/``optimizer.step`` vs ``engine.backward``/``engine.step``)
    and in how batches reach the device (``prepare``).
    """
    sums: dict[str, float] = {}
    steps = 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None)
    for batch in bar:
        loss, logs = model.training_loss(prepare(batch))
        zero_grad()
        backward(loss)
        if hook is not None:
            # After gradients exist, before the optimizer uses them (e.g. gradient surgery). A returned
            # tensor is a deferred loss: its gradient joins the others through the same ``backward``.
            deferred = hook()
            if deferred is not None:
                backward(deferred)
        step()
        steps += 1
        for key, value in {"loss": float(loss.detach()), **logs}.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}")
    return {key: value / max(steps, 1) for key, value in sums.items()} | {"steps": float(steps)}


def fit(model: Detector, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig, *,
        checkpoint_dir: Path | None = None, callbacks: Sequence[Callback] = (),
        data_fingerprint: str = "") -> TrainResult:
    """Train ``model`` in place; resume from ``checkpoint_dir/last`` when its fingerprint matches."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr)
    run_id = fingerprint(cfg.to_dict(), model.init_spec, data_fingerprint)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "value": -math.inf}
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch, resumed = 0, None

    last_dir = checkpoint_dir / "last" if checkpoint_dir else None
    best_dir = checkpoint_dir / "best" if checkpoint_dir else None
    if last_dir is not None:
        ckpt = load_checkpoint(last_dir)
        if ckpt is not None and ckpt.fingerprint == run_id:
            model.load_state_dict(ckpt.model_state)
            optimizer.load_state_dict(ckpt.optimizer_state)
            torch.set_rng_state(ckpt.rng_state)
            history, best, start_epoch, resumed = ckpt.history, ckpt.best, ckpt.epoch + 1, ckpt.epoch
            if best_dir is not None and (best_dir / "model.safetensors").is_file():
                best_state = load_weights_file(best_dir)
            log.info("resuming training from the checkpoint of epoch %d in %s", ckpt.epoch + 1, last_dir)
        elif ckpt is not None:
            log.info("checkpoint in %s belongs to another configuration or dataset; starting fresh", last_dir)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    hook = model.gradient_hook()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                             num_workers=cfg.num_workers)
        def step() -> None:
            if cfg.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()

        means = train_epoch(model, loader, backward=lambda loss: loss.backward(), step=step,
                            zero_grad=lambda: optimizer.zero_grad(set_to_none=True), hook=hook,
                            desc=f"epoch {epoch + 1}/{cfg.epochs}")
        record: dict[str, Any] = {"epoch": epoch + 1,
                                  **{f"train/{k}": v for k, v in means.items() if k != "steps"}}
        if val_set is not None and len(val_set):
            record.update({f"val/{k}": v for k, v in validation_metrics(model, val_set, cfg.eval_batch_size).items()})
        history.append(record)
        value = record.get(f"val/{cfg.monitor}", -record["train/loss"])
        if not (isinstance(value, float) and math.isnan(value)) and value > best["value"]:
            best = {"epoch": epoch + 1, "value": float(value), "metric": f"val/{cfg.monitor}"}
            best_state = copy.deepcopy(model.state_dict())
            if best_dir is not None:
                save_weights(best_dir, best_state)
        log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                 ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        for callback in callbacks:
            callback.on_epoch_end(epoch + 1, {k: v for k, v in record.items() if k != "epoch"})
        if last_dir is not None:
            save_checkpoint(last_dir, Checkpoint(epoch=epoch, fingerprint=run_id, history=history, best=best,
                                                 model_state=model.state_dict(),
                                                 optimizer_state=optimizer.state_dict(),
                                                 rng_state=torch.get_rng_state()))
    if cfg.select_best and best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(history=history, best=best, resumed_from_epoch=resumed,
                       seconds=time.perf_counter() - started)
