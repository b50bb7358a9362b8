"""Every ``--pipeline`` name. A new detector is one line in DETECTOR_PIPELINES."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from genguard.pipelines import aigi_benchmark, aigi_data, detector

DETECTOR_PIPELINES: tuple[str, ...] = (
    "pin_clip",
    "univfd",
    "ns_net",
    "dgs_net",
)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {name: detector.create_pipeline(name) for name in DETECTOR_PIPELINES}
    pipelines["aigi_data"] = aigi_data.create_pipeline()
    pipelines["aigi_benchmark"] = aigi_benchmark.create_pipeline(DETECTOR_PIPELINES)
    pipelines["__default__"] = pipelines["pin_clip"]
    return pipelines
