"""Validation evaluators: binary numbers exactly the old loop's, specs round-trip, multi-class works."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from genguard.evaluation.evaluators import (
    EVALUATORS,
    BinaryEvaluator,
    MulticlassEvaluator,
    build_evaluator,
    monitor_direction,
    predict_outputs,
)
from genguard.evaluation.metrics import binary_metrics, multiclass_metrics


class Rows(torch.utils.data.Dataset):
    """Feature rows with a ``labels`` tensor, as every genguard dataset carries."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.features[index]}  # labels are read from `labels`, never from the rows


class LinearModel(nn.Module):
    def __init__(self, n_in: int, n_out: int, squeeze: bool) -> None:
        super().__init__()
        self.linear, self.squeeze = nn.Linear(n_in, n_out), squeeze
        self.dropout = nn.Dropout(0.5)  # would make outputs random if predict_outputs forgot eval()

    def predict_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.linear(self.dropout(batch["x"]))
        return out.squeeze(1) if self.squeeze else out


def _binary_setup(n: int = 50):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, 6, generator=generator)
    labels = (features[:, 0] > 0).long()
    return LinearModel(6, 1, squeeze=True), Rows(features, labels)


def test_binary_evaluator_equals_the_direct_computation():
    model, dataset = _binary_setup()
    model.train()
    metrics = BinaryEvaluator().evaluate(model, dataset, batch_size=16)
    assert model.training  # the previous mode is restored
    with torch.no_grad():
        logits = model.eval().linear(dataset.features).squeeze(1).float().numpy()
    labels = dataset.labels.numpy()
    # The formula of the training loop's earlier validation_metrics, verbatim.
    probs = 1.0 / (1.0 + np.exp(-logits))
    eps = 1e-7
    bce = float(-np.mean(labels * np.log(probs + eps) + (1 - labels) * np.log(1 - probs + eps)))
    detection = binary_metrics(labels, probs)
    reference = {"loss": bce, **{k: detection[k] for k in ("acc", "ap", "auc")}}
    assert metrics == reference  # bit for bit: model selection must not move
    assert list(metrics) == ["loss", "acc", "ap", "auc"]
    assert all(type(value) is float for value in metrics.values())


def test_binary_evaluator_accepts_b_by_1_and_refuses_b_by_c():
    _, dataset = _binary_setup()
    column = LinearModel(6, 1, squeeze=False)
    squeezed = LinearModel(6, 1, squeeze=True)
    squeezed.load_state_dict(column.state_dict())
    assert BinaryEvaluator().evaluate(column, dataset, batch_size=64) == \
        BinaryEvaluator().evaluate(squeezed, dataset, batch_size=64)
    with pytest.raises(ValueError, match="multiclass"):
        BinaryEvaluator().evaluate(LinearModel(6, 3, squeeze=False), dataset, batch_size=64)


def test_threshold_moves_only_accuracy():
    model, dataset = _binary_setup()
    low = BinaryEvaluator(threshold=0.01).evaluate(model, dataset, batch_size=64)
    high = BinaryEvaluator(threshold=0.99).evaluate(model, dataset, batch_size=64)
    assert low["auc"] == high["auc"] and low["loss"] == high["loss"] and low["acc"] != high["acc"]


def test_multiclass_evaluator_on_a_linear_model():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(40, 4, generator=generator)
    labels = features[:, :3].argmax(dim=1)
    model = LinearModel(4, 3, squeeze=False)
    with torch.no_grad():  # weights that read the class off the first three features: near perfect
        model.linear.weight.copy_(torch.eye(3, 4) * 5.0)
        model.linear.bias.zero_()
    metrics = MulticlassEvaluator().evaluate(model, Rows(features, labels), batch_size=7)
    logits = (features[:, :3] * 5.0).double()
    expected_loss = float(nn.functional.cross_entropy(logits, labels))
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)
    expected = multiclass_metrics(labels.numpy(), torch.softmax(logits, dim=1).numpy())
    assert metrics["acc"] == 1.0 and metrics["acc"] == expected["acc"]
    assert metrics["balanced_acc"] == pytest.approx(expected["balanced_acc"])
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert set(metrics) == set(MulticlassEvaluator.directions)


def test_predict_outputs_shapes_and_empty():
    model, dataset = _binary_setup(10)
    outputs = predict_outputs(model.double(), dataset, batch_size=3, dtype=torch.float64)  # as a bf16 engine
    assert outputs.shape == (10,) and outputs.dtype == np.float32
    empty = Rows(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    assert predict_outputs(model, empty, batch_size=3).shape == (0,)


def test_labels_are_required_and_checked():
    model, dataset = _binary_setup(10)

    class NoLabels(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {"x": dataset.features[index]}

    with pytest.raises(TypeError, match="labels"):
        BinaryEvaluator().evaluate(model, NoLabels(), batch_size=4)
    dataset.labels = dataset.labels[:5]
    with pytest.raises(ValueError, match="5 labels"):
        BinaryEvaluator().evaluate(model, dataset, batch_size=4)


@pytest.mark.parametrize("evaluator",
                         [BinaryEvaluator(), BinaryEvaluator(threshold=0.3), MulticlassEvaluator()])
def test_spec_round_trip_through_json(evaluator):
    spec = json.loads(json.dumps(evaluator.to_spec()))
    assert build_evaluator(spec) == evaluator
    assert spec["kind"] in EVALUATORS


def test_build_evaluator_errors():
    assert build_evaluator({"kind": "binary", "threshold": 0.5}) == BinaryEvaluator(0.5)
    with pytest.raises(KeyError, match="registered: binary, multiclass"):
        build_evaluator({"kind": "regression"})
    with pytest.raises(ValueError, match="kind"):
        build_evaluator({"threshold": 0.5})
    with pytest.raises(ValueError, match="bad options"):
        build_evaluator({"kind": "multiclass", "threshold": 0.5})


def test_directions_and_monitor():
    for evaluator in (BinaryEvaluator(), MulticlassEvaluator()):
        assert evaluator.directions["loss"] == "min"
        assert set(evaluator.directions.values()) <= {"min", "max"}
    assert monitor_direction(BinaryEvaluator(), "auc") == "max"
    with pytest.raises(ValueError, match="balanced_acc"):
        monitor_direction(BinaryEvaluator(), "balanced_acc")
    assert not math.isnan(BinaryEvaluator().evaluate(*_binary_setup(), batch_size=64)["auc"])
