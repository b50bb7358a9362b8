"""Training-loop callbacks that report to MLflow (the loop itself never imports mlflow)."""

from __future__ import annotations

from genguard.tracking.mlflow_tracking import safe_metric_name


class MlflowEpochLogger:
    """Logs each round's metrics (an epoch, or a chunk of steps) to the active MLflow run, step = round.

    ``prefix`` names a training stage other than the last (DGS-Net's ``teacher/``), so its curves do
    not interleave with the final stage's ``train/*`` and ``val/*``.
    """

    def __init__(self, prefix: str = "") -> None:
        self.logged_epochs: set[int] = set()
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        clean = {safe_metric_name(self.prefix + k): float(v) for k, v in metrics.items() if v == v}  # drop NaN
        mlflow.log_metrics(clean, step=epoch)
        self.logged_epochs.add(epoch)

    def backfill(self, history: list[dict]) -> None:
        """Epochs trained before a resume were logged by the killed run; log them to this one too."""
        for record in history:
            if record["epoch"] not in self.logged_epochs:
                self.on_epoch_end(record["epoch"], {k: v for k, v in record.items() if k != "epoch"})


def trainer_metrics_logger(prefix: str) -> object:
    """A transformers ``TrainerCallback`` that logs every ``on_log`` record (TRL's loss, rewards per term, KL,
    ...) to the active MLflow run under ``prefix`` (``sft/``, ``grpo/``), step = the trainer's global step.

    Rather than transformers' own MLflow integration: that one logs every TrainingArguments field as a run
    parameter, and two stages in one run (SFT then GRPO, different learning rates) would collide on
    MLflow's immutable parameters. Rank 0 alone logs.
    """
    from transformers import TrainerCallback

    epochs = MlflowEpochLogger(prefix)  # the same naming and NaN handling, step = the trainer's global step

    class TrainerMetricsLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if state.is_world_process_zero and metrics:
                epochs.on_epoch_end(int(state.global_step), metrics)

    return TrainerMetricsLogger()
