"""Serving a trained face-forgery detector: P(fake) per aligned face crop, P(fake) per video.

The MLflow pyfunc takes face crops (as the pipeline made them: aligned by ``FramePolicy``), not raw
video: detection and alignment stay a preprocessing step the caller runs once
(:func:`genguard.families.face.frames.extract_faces`). A video's score is the mean of its frames'
scores, the aggregation every face-forgery paper reports video-level AUC with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from genguard.models.detector import DetectorPredictor, TrainedDetector
from genguard.registry import PREDICTORS


def video_score(detector: TrainedDetector, crops: Sequence[Image.Image] | np.ndarray) -> float:
    """Mean P(fake) over one video's face crops."""
    if len(crops) == 0:
        raise ValueError("no face crops: a video without a detected face has no score")
    return float(np.mean(detector.predict_proba(crops)))


class FacePredictor(DetectorPredictor):
    """Face crops (uint8 [N, H, W, 3], PIL images, or a DataFrame with ``path``) -> P(fake) per crop."""


PREDICTORS.register("face")(FacePredictor)
