"""Every ``--pipeline`` name. A new detector is one line in DETECTOR_PIPELINES."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from genguard.pipelines import aigi_data, detector

DETECTOR_PIPELINES: tuple[str, ...] = (
    "pin_clip",
    "univfd",
)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {name: detector.create_pipeline(name) for name in DETECTOR_PIPELINES}
    pipelines["aigi_data"] = aigi_data.create_pipeline()
    pipelines["__default__"] = pipelines["pin_clip"]
    return pipelines
