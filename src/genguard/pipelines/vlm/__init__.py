"""Kedro wiring of the explainable-AIGI family (REVEAL): ``create_pipelines()``, the pipelines each one needs
in front (``UPSTREAM``) and its DVC stages (``stages.py``)."""

from genguard.pipelines.vlm.pipeline import UPSTREAM, create_pipelines
from genguard.pipelines.vlm.stages import dvc_stages

__all__ = ["UPSTREAM", "create_pipelines", "dvc_stages"]
