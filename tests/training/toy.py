"""A core-only trainable for the training tests: a linear binary classifier on 2-d features."""

import torch
import torch.nn.functional as F

from genguard.data.datasets import FeatureRows
from genguard.registry import MODELS
from genguard.training import Trainable


class ToyClassifier(Trainable):
    """Enough to test the loop, fast enough to run many times; deterministic (no dropout, no noise)."""

    def __init__(self, width: int = 2):
        super().__init__({"method": "toy_classifier", "width": width})
        self.head = torch.nn.Linear(width, 1)

    def predict_step(self, batch):
        return self.head(batch["features"]).squeeze(-1)

    def training_loss(self, batch):
        loss = F.binary_cross_entropy_with_logits(self.predict_step(batch), batch["label"].float())
        return loss, {"bce": float(loss.detach())}


if "toy_classifier" not in MODELS:
    MODELS.register("toy_classifier")(ToyClassifier)


def toy_data(n=128, seed=0, width=2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    features = torch.randn(n, width, generator=g)
    features[:, 0] += labels * 2.0
    features[:, 1] -= labels * 1.0
    return FeatureRows(features, labels)
