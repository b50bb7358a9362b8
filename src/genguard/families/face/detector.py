"""Face-forgery detectors: :class:`genguard.models.detector.BinaryDetector` on aligned face crops."""

from __future__ import annotations

from typing import Any

from genguard.models.detector import BinaryDetector

FAMILY = "face"


class FaceDetector(BinaryDetector):
    def __init__(self, init_spec: dict[str, Any]) -> None:
        super().__init__(FAMILY, init_spec)
