"""DeepSpeed backend of the training engine: the Kedro node launches the ranks as a subprocess.

Why a subprocess: running ``deepspeed -m kedro run`` would make every rank execute the whole Kedro
session (all nodes N times, N MLflow runs, N writers per catalog file). Instead the train node
writes a *job* folder (model spec + initial weights, the prepared dataset, the DeepSpeed config),
starts ``python -m deepspeed.launcher.runner ... --module genguard.training.distributed_entry``, waits,
and reads back the final weights and the history. Rank 0 alone logs to the node's MLflow run
(``MLFLOW_RUN_ID``) and writes files. Same method registry, same ``training_loss``, same hooks.

Multi-GPU: ``train.deepspeed.num_gpus: 8`` (conf/gpu). CPU (tests): ``num_gpus`` counts CPU ranks over
gloo; ZeRO-2/3 need ``overlap_comm``/``reduce_scatter``/``contiguous_gradients`` false there
(they hang otherwise, see specs/mlops_stack.md §5.1).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from genguard.data.transforms import FeatureRows, ManifestImages
from genguard.io.atomic import write_json_atomic
from genguard.methods.base import Detector
from genguard.training.engine import TrainConfig, TrainResult

log = logging.getLogger(__name__)

# Keys we own: the engine's config decides them, so a DeepSpeed JSON cannot contradict it.
_MANAGED_KEYS = ("train_micro_batch_size_per_gpu", "train_batch_size")


def load_deepspeed_config(ds: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config for a run: ``ds.config_file`` (JSON) updated by ``ds.config`` (dict).

    ``train_micro_batch_size_per_gpu`` comes from ``train.batch_size`` (per rank); an explicit
    ``train_batch_size`` in the file is dropped so DeepSpeed derives it for any world size.
    """
    config: dict[str, Any] = {}
    if ds.get("config_file"):
        path = Path(ds["config_file"])
        if not path.is_file():
            raise FileNotFoundError(f"train.deepspeed.config_file {path} does not exist "
                                    "(see conf/gpu/deepspeed/ for ZeRO-1/2/3 examples)")
        config = json.loads(path.read_text())
    config = _merge(config, ds.get("config") or {})
    for key in _MANAGED_KEYS:
        config.pop(key, None)
    config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    config.setdefault("gradient_accumulation_steps", 1)
    if cfg.grad_clip_norm:
        config["gradient_clipping"] = cfg.grad_clip_norm
    if "optimizer" in config:
        raise ValueError("the DeepSpeed config must not define an optimizer: the method's parameter groups "
                         "(several learning rates) need the engine's client optimizer")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_optimization.stage must be 0-3, got {stage}")
    return config


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_dataset(dataset: Dataset, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    extras = getattr(dataset, "extras", {}) or {}
    extras_file = None
    if extras:
        extras_file = str(folder / "extras.safetensors")
        save_file({k: v.contiguous() for k, v in extras.items()}, extras_file)
    if isinstance(dataset, FeatureRows):
        save_file({"features": dataset.features.contiguous(), "labels": dataset.labels.contiguous()},
                  str(folder / "features.safetensors"))
        return {"kind": "features", "file": str(folder / "features.safetensors"), "extras_file": extras_file}
    if isinstance(dataset, ManifestImages):
        return {"kind": "images", "paths": dataset.paths, "labels": dataset.labels.tolist(),
                "preprocess": dataset.preprocess.to_dict(), "hflip": dataset.hflip, "train": dataset.train,
                "extras_file": extras_file}
    raise TypeError(f"the DeepSpeed backend cannot ship a {type(dataset).__name__}")


def fit_distributed(model: Detector, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig, *,
                    checkpoint_dir: Path, stage: str = "main", log_prefix: str = "") -> TrainResult:
    ds = dict(cfg.deepspeed or {})
    job = Path(checkpoint_dir) / "deepspeed_job"
    (job / "init").mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(job / "init" / "model.safetensors"))
    spec = {"init_spec": model.init_spec, "train": cfg.to_dict(), "stage": stage, "log_prefix": log_prefix,
            "deepspeed_config": load_deepspeed_config(ds, cfg),
            "train_data": write_dataset(train_set, job / "train"),
            "val_data": write_dataset(val_set, job / "val") if val_set is not None and len(val_set) else None}
    write_json_atomic(job / "job.json", spec)

    env = dict(os.environ)
    import mlflow

    if mlflow.active_run() is not None:
        env["MLFLOW_RUN_ID"] = mlflow.active_run().info.run_id
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    ranks = int(ds.get("num_gpus", 1))
    device_flag = "--num_gpus" if torch.cuda.is_available() else "--num_accelerators"
    command = [sys.executable, "-m", "deepspeed.launcher.runner", device_flag, str(ranks),
               "--master_addr", "127.0.0.1", "--master_port", str(ds.get("master_port") or _free_port()),
               "--module", "genguard.training.distributed_entry", "--job", str(job)]
    log.info("launching DeepSpeed: %s", " ".join(command))
    completed = subprocess.run(command, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"DeepSpeed training failed (exit {completed.returncode}); its log is above. "
                           f"Job folder: {job}")
    summary = json.loads((job / "summary.json").read_text())
    state = load_file(str(job / "final" / "model.safetensors"))
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()})
    return TrainResult(history=summary["history"], best=summary["best"],
                       resumed_from_epoch=summary.get("resumed_from_epoch"), seconds=summary["seconds"])
