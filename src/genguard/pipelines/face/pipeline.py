"""Face-forgery pipelines: the detector template (one namespaced instance per detector: ``effort``,
``selop``, ``masm``), ``face_dataset`` and ``deepfake_benchmark``. Wiring only: nodes live in ``nodes.py``
and ``benchmark.py``.

detector: ingest -> validate -> cache_features (frozen backbones only) -> train -> evaluate -> register.
``params:face_data`` stays un-namespaced, so every face detector reads the same data block and
``kedro run --pipelines=effort --params=face_data.source=/data/FaceForensics++`` works as typed.
"""

from __future__ import annotations

from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from genguard.families.face import DETECTORS
from genguard.pipelines.face import benchmark, nodes

DATA = "params:face_data"
DATA_PIPELINE, BENCHMARK_PIPELINE = "face_dataset", "deepfake_benchmark"


def data_nodes() -> list[Node]:
    return [
        Node(nodes.ingest_faces, DATA, ["raw_manifest", "bad_files"], name="ingest"),
        Node(nodes.validate_faces, ["raw_manifest", "bad_files", DATA, "params:reports_dir"], "manifest",
             name="validate"),
    ]


def detector_template() -> Pipeline:
    return Pipeline([
        *data_nodes(),
        Node(nodes.cache_features, ["manifest", "params:model", DATA, "params:evaluation.conditions"], "features",
             name="cache_features"),
        Node(nodes.train_detector,
             ["manifest", "features", "params:model", "params:train", "params:augment", DATA, "params:checkpoint_dir"],
             ["model", "train_summary"], name="train"),
        Node(nodes.evaluate_detector, ["model", "manifest", "features", "params:evaluation", DATA],
             ["scores", "evaluation", "metrics", "per_forgery", "plots", "roc"], name="evaluate"),
        Node(nodes.register_detector,
             ["model", "train_summary", "evaluation", "per_forgery", "plots", "params:registry"],
             "registration", name="register"),
    ])


def detector_pipeline(method: str) -> Pipeline:
    return Pipeline(detector_template(), namespace=method, parameters={DATA: DATA})


def data_pipeline() -> Pipeline:
    """Decode, crop and validate on its own (its own DVC stage); detectors then find the crops cached."""
    return Pipeline(data_nodes(), namespace=DATA_PIPELINE, parameters={DATA: DATA})


def benchmark_pipeline(detectors: Sequence[str] = DETECTORS) -> Pipeline:
    """ingest -> validate -> one node per detector (a child MLflow run each) -> leaderboard."""
    config = f"params:{BENCHMARK_PIPELINE}"
    blocks = [f"params:{d}" for d in detectors]
    wiring = Pipeline([
        *data_nodes(),
        *[Node(benchmark.benchmark_detector, ["manifest", f"params:{d}", DATA, config], f"results_{d}",
               name=f"benchmark_{d}") for d in detectors],
        Node(benchmark.build_leaderboard, ["manifest", DATA, config, *[f"results_{d}" for d in detectors]],
             ["leaderboard", "leaderboard_md", "leaderboard_plots", "leaderboard_metrics", "leaderboard_plot"],
             name="leaderboard"),
    ])
    return Pipeline(wiring, namespace=BENCHMARK_PIPELINE, parameters={name: name for name in {DATA, config, *blocks}})


def create_pipelines() -> dict[str, Pipeline]:
    """Every face ``--pipelines`` name: one per detector of ``DETECTORS``, the data stage, the benchmark."""
    pipelines = {method: detector_pipeline(method) for method in DETECTORS}
    pipelines[DATA_PIPELINE] = data_pipeline()
    pipelines[BENCHMARK_PIPELINE] = benchmark_pipeline(DETECTORS)
    return pipelines
