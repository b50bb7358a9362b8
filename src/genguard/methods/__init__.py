"""Detector methods: plain PyTorch, no Kedro, no files, no MLflow. Build any of them by name.

Adding a detector = a module here with a ``build_<name>(backbone=..., **options)`` factory
registered below, a ``conf/base/parameters_<name>.yml`` and its name in the pipeline registry.
"""

from __future__ import annotations

from typing import Any

from genguard.methods.base import Detector
from genguard.methods.dgs_net import build_dgs_net
from genguard.methods.ns_net import build_ns_net
from genguard.methods.pin_clip import build_pin_clip
from genguard.methods.univfd import build_univfd
from genguard.registry import Registry

DETECTORS: Registry[Detector] = Registry("detector")
DETECTORS.register("univfd")(build_univfd)
DETECTORS.register("pin_clip")(build_pin_clip)
DETECTORS.register("ns_net")(build_ns_net)
DETECTORS.register("dgs_net")(build_dgs_net)


def build_detector(method: str, backbone: dict | None = None, **options: Any) -> Detector:
    return DETECTORS.build(method, backbone=backbone, **options)


def build_from_spec(init_spec: dict[str, Any]) -> Detector:
    """Rebuild a detector from the ``init_spec`` it recorded (what model files store)."""
    spec = dict(init_spec)
    return build_detector(spec.pop("method"), **spec)


__all__ = ["DETECTORS", "Detector", "build_detector", "build_from_spec"]
