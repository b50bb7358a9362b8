"""Every ``--pipelines`` name, from each family's pipeline package (one list of methods per family).

Adding a method never touches this file: it joins its family's method list, and the family's
``create_pipelines`` (and DVC stages, and benchmark) follow.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from genguard.pipelines import aigi, face, t2i, video

#: Family pipeline packages, in the order ``kedro registry list`` and dvc.yaml show them.
FAMILY_PIPELINES = (aigi, face, t2i, video)
DEFAULT_PIPELINE = "pin_clip"


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {}
    for family in FAMILY_PIPELINES:
        for name, pipeline in family.create_pipelines().items():
            if name in pipelines:
                raise ValueError(f"pipeline name {name!r} is defined by two families")
            pipelines[name] = pipeline
    pipelines["__default__"] = pipelines[DEFAULT_PIPELINE]
    return pipelines
