"""Face-forgery detection: Effort, SeLop and MASM on aligned face crops of video frames; face-video data
sources (published layouts, the embedded default), self-blended and other pseudo-fakes.

Importing the package registers its detectors (:data:`genguard.registry.MODELS`), data sources
(:data:`genguard.data.sources.SOURCES`) and pyfunc predictor (:data:`genguard.registry.PREDICTORS`).
"""

from genguard.families.face import examples, inference, sources  # noqa: F401  (registration)
from genguard.families.face.detector import FAMILY, FaceDetector
from genguard.families.face.methods import DETECTORS, build_detector
from genguard.families.face.schema import FACE_SCHEMA, GROUP, REAL

METHODS = DETECTORS

__all__ = ["DETECTORS", "FACE_SCHEMA", "FAMILY", "GROUP", "METHODS", "REAL", "FaceDetector", "build_detector",
           "examples"]
