"""The face-forgery family's DVC stages, generated from ``DETECTORS`` (never written by hand).

The crop cache (``data/02_intermediate/face_crops``, keyed by video sha256 and crop policy) is a
``persist`` output of the dataset stage: DVC would otherwise delete it before a rerun, and a rerun
would decode every video again.
"""

from __future__ import annotations

from typing import Any

from genguard.families.face import DETECTORS
from genguard.families.face.methods import MODULE_FILES
from genguard.families.face.sources import DEFAULT_FRAMES_DIR
from genguard.pipelines.face.pipeline import BENCHMARK_PIPELINE, DATA_PIPELINE

FAMILY_DIR = "src/genguard/families/face"
PIPELINE_DIR = "src/genguard/pipelines/face"
SHARED_PIPELINE = "src/genguard/pipelines/detection.py"
# Family code every detector runs through (not the other detectors' method modules).
SHARED_FAMILY_FILES = ("__init__.py", "detector.py", "schema.py", "evaluation.py", "inference.py", "sources.py",
                       "layouts.py", "frames.py", "faces.py", "embedded.py", "sbi.py", "forgeries.py",
                       "methods/__init__.py", "methods/_spectral.py", "methods/_vit.py")
DATASET_OUT = "data/02_intermediate/face_default"
DATA_PARAMS = {"conf/base/parameters_face_data.yml": ["face_data"]}


def _shared() -> list[str]:
    return [f"{FAMILY_DIR}/{name}" for name in SHARED_FAMILY_FILES]


def _detector_stage(method: str, core: list[str]) -> dict[str, Any]:
    return {
        "cmd": f"kedro run --pipelines={method}",
        "deps": [DATASET_OUT, *core, *_shared(), f"{FAMILY_DIR}/methods/{MODULE_FILES[method]}",
                 f"{PIPELINE_DIR}/nodes.py", f"{PIPELINE_DIR}/pipeline.py", SHARED_PIPELINE, "conf/base/catalog.yml"],
        "params": [DATA_PARAMS, {f"conf/base/parameters_{method}.yml": [method]}],
        "outs": [f"data/03_primary/{method}", f"data/04_feature/{method}", f"data/06_models/{method}",
                 f"data/07_model_output/{method}"],
        "metrics": [{f"data/08_reporting/{method}/metrics.json": {"cache": False}}],
        "plots": [{f"data/08_reporting/{method}/roc.json": {"cache": False, "x": "fpr", "y": "tpr"}}],
    }


def dvc_stages(core: list[str]) -> dict[str, dict[str, Any]]:
    """``{stage name: stage}`` for dvc.yaml: the dataset, one stage per detector, the benchmark."""
    stages: dict[str, dict[str, Any]] = {
        DATA_PIPELINE: {
            "cmd": f"kedro run --pipelines={DATA_PIPELINE}",
            "deps": [*core, *_shared(), f"{PIPELINE_DIR}/nodes.py", f"{PIPELINE_DIR}/pipeline.py", SHARED_PIPELINE],
            "params": [DATA_PARAMS],
            "outs": [DATASET_OUT, {DEFAULT_FRAMES_DIR: {"persist": True}}],
        }
    }
    for method in DETECTORS:
        stages[method] = _detector_stage(method, core)
    stages[BENCHMARK_PIPELINE] = {
        "cmd": f"kedro run --pipelines={BENCHMARK_PIPELINE}",
        "deps": [DATASET_OUT, *core, FAMILY_DIR, PIPELINE_DIR, SHARED_PIPELINE, "conf/base/catalog.yml"],
        "params": [DATA_PARAMS, {f"conf/base/parameters_{BENCHMARK_PIPELINE}.yml": [BENCHMARK_PIPELINE]},
                   *({f"conf/base/parameters_{method}.yml": [method]} for method in DETECTORS)],
        "outs": [f"data/03_primary/{BENCHMARK_PIPELINE}",
                 f"data/08_reporting/{BENCHMARK_PIPELINE}/leaderboard.csv",
                 f"data/08_reporting/{BENCHMARK_PIPELINE}/leaderboard.md",
                 f"data/08_reporting/{BENCHMARK_PIPELINE}/plots"],
        "metrics": [{f"data/08_reporting/{BENCHMARK_PIPELINE}/leaderboard_metrics.json": {"cache": False}}],
        "plots": [{f"data/08_reporting/{BENCHMARK_PIPELINE}/leaderboard_plot.json": {
            "cache": False, "template": "bar_horizontal", "x": "auc", "y": "group"}}],
    }
    return stages
