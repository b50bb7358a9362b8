"""Every ``--pipelines`` name, from each family's pipeline package (one list of methods per family).

Adding a method never touches this file: it joins its family's method list, and the family's
``create_pipelines`` (and DVC stages, and benchmark) follow. A family package may declare ``UPSTREAM``
(``{its pipeline: (pipelines of other families to run first, by name)}``): family pipelines never import
each other, so the composition happens here.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from genguard.pipelines import aigi, face, t2i, video, vlm

#: Family pipeline packages, in the order ``kedro registry list`` and dvc.yaml show them.
FAMILY_PIPELINES = (aigi, face, t2i, video, vlm)
DEFAULT_PIPELINE = "pin_clip"


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {}
    upstream: dict[str, tuple[str, ...]] = {}
    for family in FAMILY_PIPELINES:
        for name, pipeline in family.create_pipelines().items():
            if name in pipelines:
                raise ValueError(f"pipeline name {name!r} is defined by two families")
            pipelines[name] = pipeline
        upstream.update(getattr(family, "UPSTREAM", {}))
    for name, before in upstream.items():
        missing = [b for b in before if b not in pipelines]
        if missing:
            raise ValueError(f"pipeline {name!r} needs {missing} in front, and no family defines them")
        pipelines[name] = sum((pipelines[b] for b in before), Pipeline([])) + pipelines[name]
    pipelines["__default__"] = pipelines[DEFAULT_PIPELINE]
    return pipelines
