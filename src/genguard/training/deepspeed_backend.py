"""DeepSpeed backend of the one training loop: the Kedro node launches the ranks as a subprocess.

Why a subprocess: ``deepspeed -m kedro run`` would make every rank execute the whole Kedro session
(all nodes N times, N MLflow runs, N writers per catalog file). Instead the train node writes a
*job* folder (model spec + initial weights, each dataset as a spec, the evaluator's spec, the train
and DeepSpeed configs, the run fingerprint), starts ``python -m deepspeed.launcher.runner ...
--module genguard.training.distributed_entry --job <dir>``, waits, and reads back the final weights
and the history. Every rank runs :func:`genguard.training.loop.run_rounds` (the same loop as
in-process) with a DeepSpeed backend; rank 0 alone validates, logs to the node's MLflow run
(``MLFLOW_RUN_ID``) and writes files. Best-round selection and the resume fingerprint behave
exactly as in-process.

Batch: ``train.batch_size`` is the global batch; each rank's micro-batch is
``batch_size / (num_gpus x num_nodes x grad_accum_steps)`` (see ``genguard.training.config``).

Multi-node: ``train.deepspeed.hostfile`` (MPI style, ``worker-0 slots=8``), ``num_nodes`` and
``num_gpus`` (per node); optional ``master_addr``, ``launcher`` (pdsh, openmpi, slurm, ...) and
``launcher_args``. The job folder (under the checkpoint folder) must be on storage every node sees.

CPU (tests, CI): ``num_gpus`` counts CPU ranks over gloo; ZeRO-2/3 need ``overlap_comm``,
``reduce_scatter`` and ``contiguous_gradients`` false there (they hang otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from genguard.data.datasets import dataset_to_spec
from genguard.io.atomic import write_json_atomic
from genguard.training.config import TrainConfig
from genguard.training.engine import run_fingerprint
from genguard.training.loop import TrainResult
from genguard.training.trainable import Trainable

log = logging.getLogger(__name__)

ENTRY_MODULE = "genguard.training.distributed_entry"
# Keys the train config owns, so a DeepSpeed JSON cannot contradict it.
_MANAGED_KEYS = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                 "gradient_clipping")
_DS_OPTIONS = ("config_file", "config", "num_gpus", "num_nodes", "hostfile", "master_addr", "master_port",
               "launcher", "launcher_args")


def world_size(ds: dict[str, Any]) -> int:
    return int(ds.get("num_gpus", 1)) * int(ds.get("num_nodes", 1))


def _check_options(ds: dict[str, Any]) -> None:
    unknown = sorted(set(ds) - set(_DS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown train.deepspeed options {unknown}; allowed: {list(_DS_OPTIONS)}")
    if int(ds.get("num_gpus", 1)) < 1 or int(ds.get("num_nodes", 1)) < 1:
        raise ValueError("train.deepspeed.num_gpus and num_nodes must be >= 1")
    if int(ds.get("num_nodes", 1)) > 1 and not ds.get("hostfile"):
        raise ValueError("train.deepspeed.num_nodes > 1 needs train.deepspeed.hostfile (MPI style: "
                         "'worker-0 slots=8' per line) naming the nodes")


def load_deepspeed_config(ds: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config for a run: ``ds.config_file`` (JSON) updated by ``ds.config`` (dict).

    Batch sizes, accumulation and clipping come from the train config (global batch split over
    the world size); the optimizer and LR schedule are the loop's own, so a DeepSpeed
    ``optimizer``/``scheduler`` block is refused rather than silently ignored.
    """
    _check_options(ds)
    config: dict[str, Any] = {}
    if ds.get("config_file"):
        path = Path(ds["config_file"])
        if not path.is_file():
            raise FileNotFoundError(f"train.deepspeed.config_file {path} does not exist "
                                    "(see conf/gpu/deepspeed/ for ZeRO-1/2/3 examples)")
        config = json.loads(path.read_text())
    config = _merge(config, ds.get("config") or {})
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ValueError(f"the DeepSpeed config must not define a {key!r}: the method's parameter groups "
                             "(several learning rates) and train.schedule drive the loop's own")
    for key in _MANAGED_KEYS:
        config.pop(key, None)
    config["train_batch_size"] = cfg.batch_size
    config["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size(world_size(ds))
    config["gradient_accumulation_steps"] = cfg.grad_accum_steps
    # Always explicit: DeepSpeed's own default clips gradients at norm 1.0, which the in-process loop
    # never does; train.grad_clip_norm (None: no clipping) decides for both backends.
    config["gradient_clipping"] = float(cfg.grad_clip_norm or 0.0)
    if cfg.optimizer.name == "sgd":
        # ZeRO wraps any torch optimizer; DeepSpeed merely has not "tested" SGD and refuses it by default.
        config.setdefault("zero_allow_untested_optimizer", True)
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


def launcher_command(ds: dict[str, Any], job: Path, *, python: str = sys.executable,
                     master_port: int | None = None) -> list[str]:
    """The ``deepspeed.launcher.runner`` command line for ``ds`` (one node, or several via a hostfile)."""
    _check_options(ds)
    command = [python, "-m", "deepspeed.launcher.runner"]
    nodes = int(ds.get("num_nodes", 1))
    if ds.get("hostfile"):
        command += ["--hostfile", str(ds["hostfile"]), "--num_nodes", str(nodes)]
        if ds.get("launcher"):
            command += ["--launcher", str(ds["launcher"])]
        if ds.get("launcher_args"):
            command += ["--launcher_args", str(ds["launcher_args"])]
    command += ["--num_gpus", str(int(ds.get("num_gpus", 1)))]
    master_addr = ds.get("master_addr") or (None if ds.get("hostfile") else "127.0.0.1")
    if master_addr:  # with a hostfile and no address, the launcher takes the first host's
        command += ["--master_addr", str(master_addr)]
    command += ["--master_port", str(master_port or ds.get("master_port") or _free_port()),
                "--module", ENTRY_MODULE, "--job", str(job)]
    return command


def write_job(model: Trainable, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig, job: Path, *,
              evaluator: Any = None, stage: str = "main", log_prefix: str = "", data_fingerprint: str = "",
              run_name: str = "train") -> dict[str, Any]:
    """Everything a rank needs, written under ``job``; the DeepSpeed checkpoint folder is kept."""
    for stale in ("init", "train", "val", "final", "best", "summary.json"):
        path = job / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (job / "init").mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(job / "init" / "model.safetensors"))
    validates = val_set is not None and len(val_set) > 0 and evaluator is not None
    spec = {"init_spec": model.init_spec, "train": cfg.to_dict(), "stage": stage, "log_prefix": log_prefix,
            "deepspeed_config": load_deepspeed_config(dict(cfg.deepspeed or {}), cfg),
            "fingerprint": run_fingerprint(cfg, model, data_fingerprint), "desc": run_name,
            "train_data": dataset_to_spec(train_set, job / "train"),
            "val_data": dataset_to_spec(val_set, job / "val") if validates else None,
            "evaluator": evaluator.to_spec() if validates else None}
    write_json_atomic(job / "job.json", spec)
    return spec


def fit_distributed(model: Trainable, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig, *,
                    checkpoint_dir: Path, evaluator: Any = None, stage: str = "main", log_prefix: str = "",
                    data_fingerprint: str = "", desc: str = "train") -> TrainResult:
    """Train on DeepSpeed ranks; ``model`` ends with the weights the ranks chose (best or last round)."""
    ds = dict(cfg.deepspeed or {})
    job = Path(checkpoint_dir) / "deepspeed_job"
    write_job(model, train_set, val_set, cfg, job, evaluator=evaluator, stage=stage, log_prefix=log_prefix,
              data_fingerprint=data_fingerprint, run_name=desc)
    env = dict(os.environ)
    import mlflow

    if mlflow.active_run() is not None:
        env["MLFLOW_RUN_ID"] = mlflow.active_run().info.run_id
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    command = launcher_command(ds, job)
    log.info("launching DeepSpeed: %s", " ".join(command))
    completed = subprocess.run(command, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"DeepSpeed training failed (exit {completed.returncode}); its log is above. "
                           f"Job folder: {job}")
    summary = json.loads((job / "summary.json").read_text())
    state = load_file(str(job / "final" / "model.safetensors"))
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    return TrainResult(history=summary["history"], best=summary["best"],
                       resumed_from_epoch=summary.get("resumed_from_epoch"), seconds=summary["seconds"],
                       steps=summary.get("steps", 0))
