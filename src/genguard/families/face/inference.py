"""Serving a trained face-forgery detector: P(fake) per aligned face crop.

The MLflow pyfunc takes face crops (as the pipeline made them: aligned by ``FramePolicy``), not raw
video: detection and alignment stay a preprocessing step the caller runs once
(:func:`genguard.families.face.frames.extract_faces`). A video's score is the mean of its frames'
scores (:func:`genguard.families.face.evaluation.video_scores`), as every face-forgery paper reports.
"""

from __future__ import annotations

from genguard.models.detector import DetectorPredictor
from genguard.registry import PREDICTORS


class FacePredictor(DetectorPredictor):
    """Face crops (uint8 [N, H, W, 3], PIL images, or a DataFrame with ``path``) -> P(fake) per crop."""


PREDICTORS.register("face")(FacePredictor)
