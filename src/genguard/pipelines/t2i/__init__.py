"""Kedro wiring of the text-to-image family: ``create_pipelines()`` and its DVC stages (``stages.py``)."""

from genguard.pipelines.t2i.pipeline import create_pipelines
from genguard.pipelines.t2i.stages import dvc_stages

__all__ = ["create_pipelines", "dvc_stages"]
