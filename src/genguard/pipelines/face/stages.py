"""The face-forgery family's DVC stages, generated from ``DETECTORS`` (never written by hand).

The crop cache (``data/02_intermediate/face_crops``, keyed by video sha256 and crop policy) is a
``persist`` output of the dataset stage: DVC would otherwise delete it before a rerun, and the rerun
would decode every video again.
"""

from __future__ import annotations

from typing import Any

from genguard.families.face import DETECTORS
from genguard.families.face.methods import MODULE_FILES
from genguard.families.face.sources import DEFAULT_FRAMES_DIR
from genguard.pipelines.detection import DetectorFamilyStages
from genguard.pipelines.face.pipeline import BENCHMARK_PIPELINE, DATA_PIPELINE

DATA_PARAMS = {"conf/base/parameters_face_data.yml": ["face_data"]}
STAGES = DetectorFamilyStages(
    family_dir="src/genguard/families/face",
    pipeline_dir="src/genguard/pipelines/face",
    detectors=DETECTORS,
    module_files=MODULE_FILES,
    # Family code every detector runs through (not the other detectors' method modules).
    shared_family_files=("__init__.py", "detector.py", "schema.py", "evaluation.py", "inference.py", "sources.py",
                         "layouts.py", "frames.py", "faces.py", "embedded.py", "sbi.py", "forgeries.py",
                         "methods/__init__.py", "methods/_spectral.py", "methods/_vit.py"),
    dataset_out="data/02_intermediate/face_default",
    data_params=DATA_PARAMS,
    data_pipeline=DATA_PIPELINE,
    benchmark_pipeline=BENCHMARK_PIPELINE,
    data_stage_params=[DATA_PARAMS],
    data_stage_extra_outs=({DEFAULT_FRAMES_DIR: {"persist": True}},),
    plot_metric="auc",
)


def dvc_stages(core: list[str]) -> dict[str, dict[str, Any]]:
    """``{stage name: stage}`` for dvc.yaml: the dataset, one stage per detector, the benchmark."""
    return STAGES.stages(core)
