"""Per-rank entry point started by the DeepSpeed launcher (see deepspeed_backend.py).

Every rank builds the model through the same registry and trains with ``Detector.training_loss``;
rank 0 alone validates, logs to MLflow and writes files. Resumes from the DeepSpeed checkpoint in the
job folder when one exists.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, DistributedSampler

from genguard.data.transforms import FeatureRows, ManifestImages, Preprocess
from genguard.io.atomic import write_json_atomic
from genguard.methods import build_from_spec
from genguard.training.engine import TrainConfig, _collate, train_epoch, validation_metrics


def _dataset(spec: dict):
    extras = load_file(spec["extras_file"]) if spec.get("extras_file") else None
    if spec["kind"] == "features":
        tensors = load_file(spec["file"])
        return FeatureRows(tensors["features"], tensors["labels"], extras=extras)
    import pandas as pd

    frame = pd.DataFrame({"path": spec["paths"], "label": spec["labels"]})
    return ManifestImages(frame, Preprocess.from_dict(spec["preprocess"]), hflip=spec["hflip"],
                          train=spec.get("train"), extras=extras)


def _to_device(value: torch.Tensor, device, dtype: torch.dtype | None) -> torch.Tensor:
    """Float inputs follow the engine's precision (bf16/fp16); labels and indices keep theirs."""
    return value.to(device, dtype) if (dtype is not None and value.is_floating_point()) else value.to(device)


def _on_cpu() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


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
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.seed)

    model = build_from_spec(spec["init_spec"])
    model.load_state_dict(load_file(str(job / "init" / "model.safetensors")))
    train_set = _dataset(spec["train_data"])
    val_set = _dataset(spec["val_data"]) if spec.get("val_data") else None
    model.begin_stage(spec.get("stage", "main"), train_set)  # before the optimizer: stages (un)freeze parts
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                   config=spec["deepspeed_config"])
    stage = engine.zero_optimization_stage()
    hook = model.gradient_hook()
    if hook is not None and stage >= 2:
        raise ValueError("this method edits gradients (gradient_hook); ZeRO stage >= 2 partitions them. "
                         "Use zero_optimization.stage 0 or 1 for it.")
    if hook is not None and engine.fp16_enabled():
        raise ValueError("this method edits gradients (gradient_hook) and its deferred loss would be loss-scaled "
                         "twice under fp16; use bf16 (conf/gpu/deepspeed/zero1_bf16.json)")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=_collate,
                        num_workers=cfg.num_workers)
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else (torch.float16 if engine.fp16_enabled() else None)

    run = None
    if rank == 0 and os.environ.get("MLFLOW_RUN_ID"):
        import mlflow

        run = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    ckpt_dir = job / "ds_checkpoint"
    start_epoch, history, best, resumed = 0, [], {"epoch": -1, "value": -math.inf}, None
    if (ckpt_dir / "latest").is_file():
        _, client_state = engine.load_checkpoint(str(ckpt_dir))
        start_epoch, history, best = client_state["epoch"] + 1, client_state["history"], client_state["best"]
        resumed = client_state["epoch"]
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        engine.train()
        means = train_epoch(engine.module, loader, backward=engine.backward, step=engine.step, hook=hook,
                            prepare=lambda batch: {k: _to_device(v, engine.device, dtype) for k, v in batch.items()})
        totals = torch.tensor([means.get("loss", 0.0) * means["steps"], means["steps"]])
        dist.all_reduce(totals)  # mean train loss over every rank's batches
        record = {"epoch": epoch + 1, "train/loss": float(totals[0] / max(float(totals[1]), 1.0))}
        record.update({f"train/{k}": v for k, v in means.items() if k not in ("loss", "steps")})
        if rank == 0 and val_set is not None:
            metrics = validation_metrics(engine.module, val_set, cfg.eval_batch_size, engine.device, dtype)
            record.update({f"val/{k}": v for k, v in metrics.items()})
        value = record.get(f"val/{cfg.monitor}", -record["train/loss"])
        if rank == 0:
            if value > best["value"]:
                best = {"epoch": epoch + 1, "value": float(value), "metric": f"val/{cfg.monitor}"}
            history.append(record)
            if run is not None:
                import mlflow

                prefix = spec.get("log_prefix", "")
                mlflow.log_metrics({prefix + k: float(v) for k, v in record.items() if k != "epoch" and v == v},
                                   step=epoch + 1)
            print(f"[rank 0] epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k}={v:.4f}" for k, v in record.items()
                                                                       if k != "epoch"), flush=True)
        state = [history, best]
        dist.broadcast_object_list(state, src=0)  # every rank saves the same client state
        history, best = state
        engine.save_checkpoint(str(ckpt_dir), tag=f"epoch{epoch + 1}",
                               client_state={"epoch": epoch, "history": history, "best": best})
    # Ranks must end with identical weights (every gradient, hook-edited ones included, was reduced):
    # compare a checksum of the trainable tensors across ranks (ZeRO-3 shards them: not comparable).
    in_sync = None
    if stage < 3:
        trainable = [p.detach().float().sum() for p in engine.module.parameters() if p.requires_grad]
        checksum = torch.stack(trainable).sum().cpu().reshape(1) if trainable else torch.zeros(1)
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        in_sync = bool((high - low).abs() <= 1e-4 * (1.0 + checksum.abs()))
    # ZeRO-3 shards parameters: gather a full copy (rank 0) before writing the final weights.
    if stage == 3:  # needs "stage3_gather_16bit_weights_on_model_save": true (conf/gpu/deepspeed/zero3.json)
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    if rank == 0:
        final = job / "final"
        final.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, str(final / "model.safetensors"))
        write_json_atomic(job / "summary.json", {"history": history, "best": best, "world_size": world,
                                                 "zero_stage": stage, "resumed_from_epoch": resumed,
                                                 "ranks_in_sync": in_sync,
                                                 "seconds": time.perf_counter() - started})
        if run is not None:
            import mlflow

            mlflow.end_run()
    dist.barrier()


if __name__ == "__main__":
    main()
