"""Using a trained AIGI detector: P(fake) for images (captioned where the method reads captions),
and the family's MLflow pyfunc predictor.

:class:`CaptionedDetector` is the core :class:`~genguard.models.detector.TrainedDetector` plus the
caption inputs of NS-Net (per_sample): captions passed in, or made from the images with the template
captioner the model was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genguard.evaluation.metrics import sigmoid
from genguard.families.aigi.captions import captions_for_images
from genguard.models.detector import DetectorPredictor, TrainedDetector
from genguard.registry import PREDICTORS


def fake_probability(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """P(fake) = sigmoid(logit) in float64, for test scores and inference alike."""
    values = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    return sigmoid(values, dtype=np.float64)


class CaptionedDetector(TrainedDetector):
    def batch_inputs(self, images: Sequence[Image.Image] | np.ndarray, captions: Sequence[str] | None = None,
                     **inputs: Any) -> dict[str, Any]:
        batch = super().batch_inputs(images)
        if getattr(self.model, "needs_captions_at_inference", False) and captions is None:
            captions = captions_for_images(images, self.extra.get("captions"))
        if captions is not None:
            if len(captions) != len(images):
                raise ValueError(f"{len(captions)} captions for {len(images)} images")
            if getattr(self.model, "uses_captions", False):
                batch["text_features"] = self.model.encode_captions(list(captions))
        return batch

    def predict_proba(self, images: Sequence[Image.Image] | np.ndarray, batch_size: int = 64,
                      captions: Sequence[str] | None = None) -> np.ndarray:
        """P(fake) per image; NS-Net (per_sample) classifies with each image's caption: pass
        ``captions``, or they are made from the images as in training (template captions only)."""
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        return super().predict_proba(images, batch_size, captions=captions)


def as_trained_detector(model: Any) -> CaptionedDetector:
    return CaptionedDetector.coerce(model)


def load_detector(model_dir: str | Path, *, for_inference: bool = True) -> CaptionedDetector:
    return CaptionedDetector.load(model_dir, for_inference=for_inference)


class AigiPredictor(DetectorPredictor):
    """Images or a DataFrame of paths -> P(fake); an optional ``caption`` column feeds NS-Net."""

    trained_type = CaptionedDetector
    input_columns = {"caption": "captions"}


PREDICTORS.register("aigi")(AigiPredictor)
