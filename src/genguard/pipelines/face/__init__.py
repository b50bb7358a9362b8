"""Kedro wiring of the face-forgery family: ``create_pipelines()`` and its DVC stages (``stages.py``)."""

from genguard.pipelines.face.pipeline import create_pipelines
from genguard.pipelines.face.stages import dvc_stages

__all__ = ["create_pipelines", "dvc_stages"]
