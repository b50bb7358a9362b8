"""The AIGI family's DVC stages, generated from ``DETECTORS`` (never written by hand)."""

from __future__ import annotations

from typing import Any

from genguard.families.aigi import DETECTORS
from genguard.families.aigi.methods import MODULE_FILES
from genguard.pipelines.aigi.pipeline import BENCHMARK_PIPELINE, DATA_PIPELINE
from genguard.pipelines.detection import DetectorFamilyStages

PRIOR_DIR = "data/06_models/priors/genguard-lit-effnet-lite0"  # conf/base: backbone_prior.backbone.pretrained

STAGES = DetectorFamilyStages(
    family_dir="src/genguard/families/aigi",
    pipeline_dir="src/genguard/pipelines/aigi",
    detectors=DETECTORS,
    module_files=MODULE_FILES,
    # Family code every detector runs through (not the other detectors' method modules).
    shared_family_files=("__init__.py", "detector.py", "schema.py", "captions.py", "inference.py", "sources.py",
                         "layouts.py", "embedded.py", "photos.py", "methods/__init__.py"),
    dataset_out="data/02_intermediate/aigi_default",
    data_params={"conf/base/parameters.yml": ["data"]},
    data_pipeline=DATA_PIPELINE,
    benchmark_pipeline=BENCHMARK_PIPELINE,
    data_stage_params=[{"conf/base/parameters.yml": ["data.embedded", "backbone_prior"]}],
    plot_metric="acc",
    prior_out=PRIOR_DIR,
    extra_pipeline_files=("prior.py",),
)


def dvc_stages(core: list[str]) -> dict[str, dict[str, Any]]:
    """``{stage name: stage}`` for dvc.yaml: the dataset, one stage per detector, the benchmark."""
    return STAGES.stages(core)
