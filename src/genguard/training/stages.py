"""A model's training stages, run one after the other with the one loop (in-process or DeepSpeed).

Methods trained in stages (DGS-Net: a linear-probe teacher, then the student; a head warm-up, then
the adapters) declare ``training_stages()``; each stage gets its train-config overrides, its own
checkpoint folder (``checkpoint_dir/<stage>`` when there are several) and its own data fingerprint,
and is logged under ``<stage>/`` except the last, whose ``train/*`` and ``val/*`` are the run's.
Every family's train node calls this, so no family writes its own stage loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from genguard.training.config import TrainConfig
from genguard.training.engine import fingerprint, fit
from genguard.training.loop import Callback, Evaluator, TrainResult
from genguard.training.trainable import Trainable


def run_stages(model: Trainable, train_set: Dataset, val_set: Dataset | None, config: TrainConfig, *,
               evaluator: Evaluator | None, checkpoint_dir: str | Path, data_fingerprint: str,
               logger: Callable[[str], Callback] | None = None, desc: str = "train"
               ) -> tuple[TrainResult, list[dict[str, Any]], float, int | None]:
    """Train every stage; returns (the last stage's result, the history of all stages, seconds, resumed).

    ``logger(prefix)`` builds a callback per stage (``""`` for the last stage, ``"<stage>/"`` before).
    """
    stages = model.training_stages()
    history: list[dict[str, Any]] = []
    seconds, resumed, result = 0.0, None, None
    for position, (stage, overrides) in enumerate(stages):
        last = position == len(stages) - 1
        stage_config = config.with_overrides(overrides)
        stage_dir = Path(checkpoint_dir) if len(stages) == 1 else Path(checkpoint_dir) / stage
        model.begin_stage(stage, train_set)
        prefix = "" if last else f"{stage}/"
        callback = logger(prefix) if logger is not None else None
        stage_key = fingerprint(data_fingerprint, stage, position)
        if stage_config.backend == "deepspeed":
            from genguard.training.deepspeed_backend import fit_distributed

            result = fit_distributed(model, train_set, val_set, stage_config, checkpoint_dir=stage_dir,
                                     evaluator=evaluator, stage=stage, log_prefix=prefix,
                                     data_fingerprint=stage_key, desc=f"{desc} {stage}")
        else:
            result = fit(model, train_set, val_set, stage_config, evaluator=evaluator, checkpoint_dir=stage_dir,
                         callbacks=[callback] if callback is not None else [], data_fingerprint=stage_key,
                         desc=f"{desc} {stage}")
        if callback is not None and hasattr(callback, "backfill"):
            callback.backfill(result.history)
        history.extend({"stage": stage, **record} for record in result.history)
        seconds += result.seconds
        resumed = result.resumed_from_epoch if resumed is None else resumed
    return result, history, seconds, resumed
