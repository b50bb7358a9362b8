"""Kedro wiring of the video MoE robustness family: ``create_pipelines()`` and its DVC stage (``stages.py``)."""

from genguard.pipelines.video.pipeline import create_pipelines
from genguard.pipelines.video.stages import dvc_stages

__all__ = ["create_pipelines", "dvc_stages"]
