"""What the MLflow pyfunc of a video MoE folder does (``genguard.registry.PREDICTORS["video"]``): float clips
(N, 3, T, H, W) in [0, 1] -> class probabilities (N, K) with top-1 routing, as at inference in the paper."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genguard.io.model_files import load_model_dir
from genguard.registry import PREDICTORS


class VideoPredictor:
    def __init__(self, model_dir: str) -> None:
        self.model = load_model_dir(model_dir).model.eval()

    def predict(self, model_input: Any) -> np.ndarray:
        clips = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if clips.ndim != 5 or clips.shape[1] != 3:
            raise ValueError(f"a video MoE takes clips of shape (N, 3, T, H, W), got {tuple(clips.shape)}")
        if clips.min() < 0 or clips.max() > 1:
            raise ValueError("clips must be in [0, 1] (the model normalises inside)")
        with torch.no_grad():
            return self.model(clips).softmax(dim=1).numpy()


PREDICTORS.register("video")(VideoPredictor)
