"""Face-forgery detector methods: plain PyTorch, no Kedro, no files, no MLflow. Build any of them by name.

Each module defines a ``build_<name>(backbone=..., **options)`` factory, registered here in the one
model registry (:data:`genguard.registry.MODELS`) so any process can rebuild a detector from the
``init_spec`` it recorded. ``DETECTORS`` lists this family's methods.
"""

from __future__ import annotations

from typing import Any

from genguard.families.face.detector import FaceDetector
from genguard.families.face.methods.effort import build_effort
from genguard.families.face.methods.masm import build_masm
from genguard.families.face.methods.selop import build_selop
from genguard.registry import MODELS

_FACTORIES = {"effort": build_effort, "selop": build_selop, "masm": build_masm}
for _name, _factory in _FACTORIES.items():
    MODELS.register(_name)(_factory)

#: The face-forgery detectors, in the order pipelines and leaderboards list them.
DETECTORS: tuple[str, ...] = tuple(_FACTORIES)
#: Each detector's module file (what its DVC stage depends on).
MODULE_FILES: dict[str, str] = {name: f"{factory.__module__.rsplit('.', 1)[-1]}.py"
                                for name, factory in _FACTORIES.items()}


def build_detector(method: str, backbone: dict | None = None, **options: Any) -> FaceDetector:
    if method not in DETECTORS:
        raise KeyError(f"unknown face detector {method!r}; registered: {', '.join(DETECTORS)}")
    return MODELS.build(method, backbone=backbone, **options)


__all__ = ["DETECTORS", "FaceDetector", "build_detector"]
