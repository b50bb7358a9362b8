"""Per-rank entry point started by the DeepSpeed launcher (see deepspeed_backend.py).

Every rank rebuilds the model through the one model registry and the datasets from their specs,
then runs the same loop as in-process training (:func:`genguard.training.loop.run_rounds`) with
:class:`DeepSpeedBackend`. Rank 0 alone validates, logs to MLflow and writes files; the record of
each round (validation included) is broadcast so every rank takes the same best-round decision.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset

from genguard.data.datasets import dataset_from_spec
from genguard.data.loaders import move_batch
from genguard.evaluation.evaluators import build_evaluator
from genguard.io.atomic import write_json_atomic
from genguard.registry import build_model
from genguard.tracking.callbacks import MlflowEpochLogger
from genguard.training.batches import steps_per_epoch
from genguard.training.config import TrainConfig
from genguard.training.loop import LoopState, run_rounds
from genguard.training.optim import build_optimizer, build_schedule

log = logging.getLogger(__name__)


def _on_cpu() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


class DeepSpeedBackend:
    """One DeepSpeed rank. Micro-batches are padded to equal sizes (DeepSpeed averages per-rank
    means and scales by 1/accumulation itself, so the loop's loss weights are not applied)."""

    pads_last_batch = True

    def __init__(self, engine: Any, job: Path, fingerprint: str, dtype: torch.dtype | None) -> None:
        self.engine, self.job, self.fingerprint, self.dtype = engine, job, fingerprint, dtype
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.zero_stage = engine.zero_optimization_stage()
        self.checkpoints = job / "ds_checkpoint"
        self.use_best = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ optimisation
    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        return move_batch(batch, self.engine.device, self.dtype)

    def zero_grad(self) -> None:
        """The engine zeroes gradients itself after each optimizer step."""

    def backward(self, loss: torch.Tensor, weight: float, deferred: bool = False) -> None:
        # A deferred loss carries a gradient that the first backward already scaled by 1/accumulation.
        self.engine.backward(loss, scale_wrt_gas=not deferred)

    def after_micro_batch(self, last: bool) -> None:
        self.engine.step()  # steps the optimizer (and all-reduces) only at the accumulation boundary

    # ------------------------------------------------------------------ rounds
    def reduce_means(self, means: dict[str, float]) -> dict[str, float]:
        # Each rank's logs are weighted by its micro-batches' share of the global batch (1/world of it),
        # so the sum over ranks is the mean over every row of the step.
        keys = sorted(means)
        values = torch.tensor([means[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return {k: float(v) for k, v in zip(keys, values.tolist(), strict=True)}

    def share(self, record: dict[str, Any]) -> dict[str, Any]:
        box = [record]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def validate(self, evaluator: Any, val_set: Any, batch_size: int) -> dict[str, float]:
        if not self.is_main:
            return {}
        return evaluator.evaluate(self.engine.module, val_set, batch_size=batch_size, device=self.engine.device,
                                  dtype=self.dtype)

    def _full_state(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (ZeRO-3 gathers its shards: every rank must call this)."""
        if self.zero_stage == 3:  # needs "stage3_gather_16bit_weights_on_model_save": true
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        return state if self.is_main else None

    def remember_best(self) -> None:
        state = self._full_state()
        if state is not None:
            _save_weights(self.job / "best", state)

    def restore_best(self) -> None:
        self.use_best = True

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: LoopState) -> None:
        self.engine.save_checkpoint(str(self.checkpoints), tag=f"round{state.round}",
                                    client_state={"loop": state.to_json()})
        if self.is_main:
            write_json_atomic(self.checkpoints / "fingerprint.json", {"fingerprint": self.fingerprint})
        dist.barrier()

    def load_checkpoint(self) -> LoopState | None:
        stored = self.checkpoints / "fingerprint.json"
        same = stored.is_file() and json.loads(stored.read_text()).get("fingerprint") == self.fingerprint
        if not (same and (self.checkpoints / "latest").is_file()):
            dist.barrier()
            if self.is_main and self.checkpoints.exists():
                log.info("DeepSpeed checkpoint in %s belongs to another configuration; starting fresh",
                         self.checkpoints)
                shutil.rmtree(self.checkpoints, ignore_errors=True)
                shutil.rmtree(self.job / "best", ignore_errors=True)
            dist.barrier()
            return None
        _, client_state = self.engine.load_checkpoint(str(self.checkpoints))
        return LoopState.from_json(client_state["loop"])

    def write_final(self) -> None:
        state = None if self.use_best else self._full_state()
        if not self.is_main:
            return
        final = self.job / "final"
        if self.use_best:
            final.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.job / "best" / "model.safetensors", final / "model.safetensors")
        else:
            _save_weights(final, state)

    def ranks_in_sync(self) -> bool | None:
        """Ranks must end with identical trainable weights (every gradient, hook-edited ones included,
        was reduced): compare a checksum across ranks (ZeRO-3 shards them: not comparable)."""
        if self.zero_stage >= 3:
            return None
        trainable = [p.detach().float().sum() for p in self.engine.module.parameters() if p.requires_grad]
        checksum = torch.stack(trainable).sum().cpu().reshape(1) if trainable else torch.zeros(1)
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        return bool((high - low).abs() <= 1e-4 * (1.0 + checksum.abs()))


def _save_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, str(folder / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    args = parser.parse_args()
    job = Path(args.job)
    spec = json.loads((job / "job.json").read_text())
    cfg = TrainConfig.from_dict(spec["train"])

    import deepspeed

    if _on_cpu() and os.environ.get("GENGUARD_DS_SHM_ALLREDUCE") != "1":
        # DeepSpeed JIT-compiles a shared-memory all-reduce kernel (1.5+ min) the first time its CPU
        # comm backend starts; gloo's own all-reduce is enough for CPU runs and CI.
        # (importlib: the attribute ``deepspeed.comm.torch`` is shadowed by the torch package itself)
        import importlib

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo" if _on_cpu() else "nccl")
    rank = dist.get_rank()
    torch.manual_seed(cfg.seed + rank)  # each rank its own stream; rank 0 = the in-process stream

    model = build_model(spec["init_spec"])
    model.load_state_dict(load_file(str(job / "init" / "model.safetensors")))
    train_set = dataset_from_spec(spec["train_data"])
    val_set = dataset_from_spec(spec["val_data"]) if spec.get("val_data") else None
    evaluator = build_evaluator(spec["evaluator"]) if spec.get("evaluator") else None
    model.begin_stage(spec.get("stage", "main"), train_set)  # before the optimizer: stages (un)freeze parts
    optimizer = build_optimizer(model.parameter_groups(cfg.lr, cfg.weight_decay), cfg)
    per_epoch = None if isinstance(train_set, IterableDataset) else steps_per_epoch(len(train_set), cfg)
    schedule = build_schedule(optimizer, cfg, cfg.total_steps(per_epoch))
    engine, optimizer, _, schedule = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                                          config=spec["deepspeed_config"])
    hook = model.gradient_hook()
    if hook is not None and engine.zero_optimization_stage() >= 1:
        # ZeRO moves parameter gradients into its own buffers during backward: in-place edits miss them,
        # and a second (deferred) backward loses the first one's (measured on ZeRO-1).
        raise ValueError("this method edits parameter gradients (gradient_hook), which ZeRO stages >= 1 move "
                         "into their own buffers; use zero_optimization.stage 0 for it, or edit the gradient "
                         "of an activation with a tensor hook inside training_loss (as DGS-Net does)")
    if hook is not None and engine.fp16_enabled():
        raise ValueError("this method's deferred loss would be loss-scaled twice under fp16; use bf16 or fp32")
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else (torch.float16 if engine.fp16_enabled() else None)
    backend = DeepSpeedBackend(engine, job, spec["fingerprint"], dtype)

    callbacks, run = [], None
    if rank == 0 and os.environ.get("MLFLOW_RUN_ID"):
        import mlflow

        run = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
        callbacks.append(MlflowEpochLogger(prefix=spec.get("log_prefix", "")))
    started = time.perf_counter()
    result = run_rounds(engine.module, train_set, val_set, cfg, backend, evaluator=evaluator, callbacks=callbacks,
                        desc=spec.get("desc", "train"))
    in_sync = backend.ranks_in_sync()
    backend.write_final()
    if rank == 0:
        write_json_atomic(job / "summary.json", {
            "history": result.history, "best": result.best, "world_size": backend.world_size,
            "zero_stage": backend.zero_stage, "resumed_from_epoch": result.resumed_from_epoch,
            "ranks_in_sync": in_sync, "steps": result.steps, "selected": "best" if backend.use_best else "last",
            "seconds": time.perf_counter() - started})
        if run is not None:
            import mlflow

            mlflow.end_run()
    dist.barrier()


if __name__ == "__main__":
    main()
