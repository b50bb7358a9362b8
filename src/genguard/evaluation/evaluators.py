"""What the family-agnostic training loop calls on the validation split.

Protocol: an evaluator has ``evaluate(model, dataset, *, batch_size, device="cpu", dtype=None) ->
dict[str, float]``, a ``directions`` mapping (metric -> "max" or "min", so the loop can check a
configured monitor with :func:`monitor_direction`) and ``to_spec()`` - a JSON-able dict that
:func:`build_evaluator` turns back into an equal evaluator, so the choice travels to DeepSpeed
worker processes as configuration rather than as a pickled object.

What evaluators need from their inputs:

* the model exposes ``predict_step(batch) -> Tensor`` with raw outputs: one logit per row for binary
  tasks (shape ``(B,)`` or ``(B, 1)``; logit of P(fake), fake = positive class), ``B x C`` logits for
  multi-class tasks;
* the dataset exposes ``labels`` (a LongTensor, one per row), so evaluators never decode images
  just to learn the labels.

Evaluators are core: they know nothing of families, MLflow or Kedro.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from genguard.data.loaders import make_loader, move_batch
from genguard.evaluation.metrics import binary_metrics, multiclass_metrics, sigmoid
from genguard.progress import progress
from genguard.registry import Registry

DIRECTIONS = ("max", "min")


class Evaluator(Protocol):
    kind: ClassVar[str]
    directions: ClassVar[Mapping[str, str]]

    def evaluate(self, model: Any, dataset: Any, *, batch_size: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> dict[str, float]: ...

    def to_spec(self) -> dict[str, Any]: ...


EVALUATORS: Registry[Evaluator] = Registry("evaluator")


@torch.no_grad()
def predict_outputs(model: Any, dataset: Any, *, batch_size: int, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, desc: str | None = None) -> np.ndarray:
    """``model.predict_step`` over ``dataset`` in order, as one float32 numpy array.

    Runs in eval mode without gradients and restores the model's previous mode afterwards (a
    validation pass must not change how training continues). ``device``/``dtype`` match a model
    placed by DeepSpeed (bf16); outputs are cast to float32 on the CPU. ``desc`` shows a progress bar.
    """
    was_training = model.training
    model.eval()
    outputs = []
    try:
        loader = make_loader(dataset, batch_size, shuffle=False)
        for batch in progress(loader, desc=desc or "predict", enabled=desc is not None, unit="batch"):
            outputs.append(model.predict_step(move_batch(batch, device, dtype)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float32)


def dataset_labels(dataset: Any, n_rows: int) -> np.ndarray:
    """``dataset.labels`` as int64 numpy, checked against the number of predicted rows."""
    labels = getattr(dataset, "labels", None)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{type(dataset).__name__} has no `labels` tensor; evaluators read labels from it "
                        "instead of decoding every item")
    labels = labels.detach().cpu().numpy()
    if labels.shape[0] != n_rows:
        raise ValueError(f"dataset has {labels.shape[0]} labels but the model produced {n_rows} outputs")
    return labels


def _binary_logits(outputs: np.ndarray) -> np.ndarray:
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.ndim != 1:
        raise ValueError(f"a binary model returns one logit per row, got outputs of shape {outputs.shape}; "
                         "use the multiclass evaluator for B x C logits")
    return outputs


@EVALUATORS.register("binary")
@dataclass(frozen=True)
class BinaryEvaluator:
    """Binary detection (fake = positive class): ``loss`` (mean BCE), ``acc``, ``ap``, ``auc``.

    ``threshold`` applies to P(fake) (fake iff ``P > threshold``) and only moves ``acc``.
    """

    threshold: float = 0.5
    kind: ClassVar[str] = "binary"
    directions: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"loss": "min", "acc": "max", "ap": "max", "auc": "max"})

    def evaluate(self, model: Any, dataset: Any, *, batch_size: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> dict[str, float]:
        outputs = predict_outputs(model, dataset, batch_size=batch_size, device=device, dtype=dtype)
        logits = _binary_logits(outputs)
        labels = dataset_labels(dataset, logits.shape[0])
        # Exactly the arithmetic (float32 sigmoid, eps 1e-7) of the training loop's earlier validation,
        # so the selected epoch and the champion model do not move when the loop switches to evaluators.
        probs = sigmoid(logits, dtype=None)
        eps = 1e-7
        bce = float(-np.mean(labels * np.log(probs + eps) + (1 - labels) * np.log(1 - probs + eps)))
        metrics = binary_metrics(labels, probs, self.threshold)
        return {"loss": bce, **{name: float(metrics[name]) for name in ("acc", "ap", "auc")}}

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # no overflow in exp
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@EVALUATORS.register("multiclass")
@dataclass(frozen=True)
class MulticlassEvaluator:
    """Multi-class classification from B x C logits: ``loss`` (mean cross-entropy, natural log),
    ``acc``, ``balanced_acc``, ``macro_f1`` (see :func:`~genguard.evaluation.metrics.multiclass_metrics`)."""

    kind: ClassVar[str] = "multiclass"
    directions: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"loss": "min", "acc": "max", "balanced_acc": "max", "macro_f1": "max"})

    def evaluate(self, model: Any, dataset: Any, *, batch_size: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> dict[str, float]:
        logits = predict_outputs(model, dataset, batch_size=batch_size, device=device, dtype=dtype)
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"a multi-class model returns B x C logits (C >= 2), got shape {logits.shape}")
        labels = dataset_labels(dataset, logits.shape[0])
        log_probs = _log_softmax(logits.astype(np.float64))  # float64: rows sum to 1 for the metric checks
        loss = float(-log_probs[np.arange(labels.shape[0]), labels].mean()) if labels.size else float("nan")
        metrics = multiclass_metrics(labels, np.exp(log_probs))
        return {"loss": loss, **{name: float(metrics[name]) for name in ("acc", "balanced_acc", "macro_f1")}}

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


def build_evaluator(spec: Mapping[str, Any]) -> Evaluator:
    """``{"kind": "binary", "threshold": 0.5}`` -> ``BinaryEvaluator(threshold=0.5)``; inverse of
    ``to_spec``."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError(f"an evaluator spec is a mapping with a 'kind' (one of {EVALUATORS.names()}), "
                         f"got {spec!r}")
    options = {key: value for key, value in spec.items() if key != "kind"}
    factory = EVALUATORS.get(str(spec["kind"]))
    try:
        return factory(**options)
    except TypeError as error:
        raise ValueError(f"bad options for evaluator {spec['kind']!r}: {options} ({error})") from None


def monitor_direction(evaluator: Evaluator, monitor: str) -> str:
    """``"max"`` or ``"min"`` for a metric the evaluator reports; ValueError naming the choices otherwise."""
    if monitor not in evaluator.directions:
        raise ValueError(f"the {evaluator.kind} evaluator reports {sorted(evaluator.directions)}; "
                         f"cannot monitor {monitor!r}")
    return evaluator.directions[monitor]
