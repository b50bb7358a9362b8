"""Every ``--pipeline`` name. A new AIGI detector is one line in AIGI_DETECTORS."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from genguard.pipelines import aigi_benchmark, aigi_data, detector

#: AI-generated-image detectors: each its own pipeline, and all of them in ``aigi_benchmark``.
AIGI_DETECTORS: tuple[str, ...] = (
    "pin_clip",
    "univfd",
    "ns_net",
    "dgs_net",
)
DETECTOR_PIPELINES: tuple[str, ...] = AIGI_DETECTORS


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {name: detector.create_pipeline(name) for name in DETECTOR_PIPELINES}
    pipelines["aigi_data"] = aigi_data.create_pipeline()
    pipelines["aigi_benchmark"] = aigi_benchmark.create_pipeline(AIGI_DETECTORS)
    pipelines["__default__"] = pipelines["pin_clip"]
    return pipelines
