"""AIGI detector methods: plain PyTorch, no Kedro, no files, no MLflow. Build any of them by name.

Each module defines a ``build_<name>(backbone=..., **options)`` factory, registered here in the
one model registry (:data:`genguard.registry.MODELS`) so any process can rebuild a detector from
the ``init_spec`` it recorded. ``DETECTORS`` lists this family's methods: the pipelines, the
``aigi_benchmark`` members and the DVC stages all follow it (see the README's recipe).
"""

from __future__ import annotations

from typing import Any

from genguard.families.aigi.detector import Detector
from genguard.families.aigi.methods.dgs_net import build_dgs_net
from genguard.families.aigi.methods.ns_net import build_ns_net
from genguard.families.aigi.methods.pin_clip import build_pin_clip
from genguard.families.aigi.methods.univfd import build_univfd
from genguard.registry import MODELS

_FACTORIES = {"pin_clip": build_pin_clip, "univfd": build_univfd, "ns_net": build_ns_net, "dgs_net": build_dgs_net}
for _name, _factory in _FACTORIES.items():
    MODELS.register(_name)(_factory)

#: The AIGI detectors, in the order pipelines and leaderboards list them.
DETECTORS: tuple[str, ...] = tuple(_FACTORIES)
#: Each detector's module file (what its DVC stage depends on).
MODULE_FILES: dict[str, str] = {name: f"{factory.__module__.rsplit('.', 1)[-1]}.py"
                                for name, factory in _FACTORIES.items()}


def build_detector(method: str, backbone: dict | None = None, **options: Any) -> Detector:
    if method not in DETECTORS:
        raise KeyError(f"unknown AIGI detector {method!r}; registered: {', '.join(DETECTORS)}")
    return MODELS.build(method, backbone=backbone, **options)


__all__ = ["DETECTORS", "Detector", "build_detector"]
