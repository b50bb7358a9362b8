"""AIGI pipelines: the detector template (one namespaced instance per detector), ``aigi_data`` and
``aigi_benchmark``. Wiring only: the nodes live in ``nodes.py`` and ``benchmark.py``.

detector: ingest -> validate -> prepare_backbone (the LiT prior, built once and cached) -> cache_features
(frozen backbones only) -> train -> evaluate -> register.
``params:data`` stays un-namespaced so every detector reads the same data block and
``kedro run --pipelines=<any detector> --params=data.source=/my/folder`` works as typed.
"""

from __future__ import annotations

from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from genguard.families.aigi import DETECTORS
from genguard.pipelines.aigi import benchmark, nodes

DATA_PIPELINE, BENCHMARK_PIPELINE = "aigi_data", "aigi_benchmark"


def data_nodes() -> list[Node]:
    return [
        Node(nodes.ingest_images, "params:data", ["raw_manifest", "bad_files"], name="ingest"),
        Node(nodes.validate_dataset, ["raw_manifest", "bad_files", "params:data", "params:reports_dir"],
             "manifest", name="validate"),
    ]


def detector_template() -> Pipeline:
    return Pipeline([
        *data_nodes(),
        Node(nodes.prepare_backbone, ["manifest", "params:model", "params:backbone_prior"], "backbone_prior",
             name="prepare_backbone"),
        Node(nodes.cache_features, ["manifest", "params:model", "params:data", "params:evaluation.conditions",
                                    "params:augment", "backbone_prior"], "features", name="cache_features"),
        Node(nodes.train_detector,
             ["manifest", "features", "params:model", "params:train", "params:augment", "params:data",
              "params:checkpoint_dir", "backbone_prior"],
             ["model", "train_summary"], name="train"),
        Node(nodes.evaluate_detector, ["model", "manifest", "features", "params:evaluation", "params:data"],
             ["scores", "evaluation", "metrics", "per_generator", "plots", "roc"], name="evaluate"),
        Node(nodes.register_detector,
             ["model", "train_summary", "evaluation", "per_generator", "plots", "params:registry"],
             "registration", name="register"),
    ])


SHARED_PARAMS = {"params:data": "params:data", "params:backbone_prior": "params:backbone_prior"}


def detector_pipeline(method: str) -> Pipeline:
    return Pipeline(detector_template(), namespace=method, parameters=SHARED_PARAMS)


def data_pipeline() -> Pipeline:
    """Build + validate the dataset and the embedded default's prior on their own (one DVC stage);
    detectors then find both cached."""
    return Pipeline([*data_nodes(),
                     Node(nodes.prepare_default_backbone, ["manifest", "params:backbone_prior"], "backbone_prior",
                          name="prepare_backbone")],
                    namespace=DATA_PIPELINE, parameters=SHARED_PARAMS)


def benchmark_pipeline(detectors: Sequence[str] = DETECTORS) -> Pipeline:
    """ingest -> validate -> shared features -> one node per detector -> leaderboard.

    Datasets live under the ``aigi_benchmark`` namespace; the ``data`` block and each detector's own
    parameter block stay global, so the benchmark trains exactly what ``--pipelines=<detector>`` trains.
    """
    config = f"params:{BENCHMARK_PIPELINE}"
    blocks = [f"params:{d}" for d in detectors]
    wiring = Pipeline([
        *data_nodes(),
        Node(benchmark.prepare_backbones, ["manifest", "params:backbone_prior", *blocks], "backbone_priors",
             name="prepare_backbones"),
        Node(benchmark.encode_shared_features, ["manifest", "params:data", config, "backbone_priors", *blocks],
             "shared_features", name="encode_shared_features"),
        *[Node(benchmark.benchmark_detector, ["manifest", "shared_features", f"params:{d}", "params:data", config],
               f"results_{d}", name=f"benchmark_{d}") for d in detectors],
        Node(benchmark.build_leaderboard,
             ["manifest", "params:data", config, "shared_features", *[f"results_{d}" for d in detectors]],
             ["leaderboard", "leaderboard_md", "leaderboard_plots", "leaderboard_metrics", "leaderboard_plot"],
             name="leaderboard"),
    ])
    global_params = {"params:data", "params:backbone_prior", config, *blocks}
    return Pipeline(wiring, namespace=BENCHMARK_PIPELINE, parameters={name: name for name in global_params})


def create_pipelines() -> dict[str, Pipeline]:
    """Every AIGI ``--pipelines`` name: one per detector of ``DETECTORS``, the data stage, the benchmark."""
    pipelines = {method: detector_pipeline(method) for method in DETECTORS}
    pipelines[DATA_PIPELINE] = data_pipeline()
    pipelines[BENCHMARK_PIPELINE] = benchmark_pipeline(DETECTORS)
    return pipelines
