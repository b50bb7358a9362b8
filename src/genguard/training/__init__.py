"""The one training loop (in-process or on DeepSpeed ranks) for every family's trainable models."""

from genguard.training.config import TrainConfig
from genguard.training.engine import fingerprint, fit
from genguard.training.loop import TrainResult
from genguard.training.trainable import Trainable, count_parameters

__all__ = ["TrainConfig", "TrainResult", "Trainable", "count_parameters", "fingerprint", "fit"]
