"""Kedro wiring of the AIGI family: ``create_pipelines()`` and its DVC stages (``stages.py``)."""

from genguard.pipelines.aigi.pipeline import create_pipelines
from genguard.pipelines.aigi.stages import dvc_stages

__all__ = ["create_pipelines", "dvc_stages"]
