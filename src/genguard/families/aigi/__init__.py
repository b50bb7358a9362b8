"""AI-generated image detection: CLIP-based detectors (PiN-CLIP, DGS-Net, NS-Net, UnivFD), their
data sources (the embedded default, published folder layouts), captions, inference.

Importing the package registers its detectors (:data:`genguard.registry.MODELS`), data sources
(:data:`genguard.data.sources.SOURCES`) and pyfunc predictor (:data:`genguard.registry.PREDICTORS`).
"""

from genguard.families.aigi import examples, inference, sources  # noqa: F401  (registration)
from genguard.families.aigi.detector import FAMILY
from genguard.families.aigi.methods import DETECTORS, Detector, build_detector
from genguard.families.aigi.schema import AIGI_SCHEMA, GROUP

METHODS = DETECTORS

__all__ = ["AIGI_SCHEMA", "DETECTORS", "FAMILY", "GROUP", "METHODS", "Detector", "build_detector", "examples"]
