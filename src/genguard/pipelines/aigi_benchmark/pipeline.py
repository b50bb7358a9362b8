"""``aigi_benchmark``: ingest -> validate -> shared features -> one node per detector -> leaderboard.

Datasets live under the ``aigi_benchmark`` namespace; the ``data`` block and each detector's own
parameter block stay global, so the benchmark trains exactly what ``--pipeline=<detector>`` trains.
"""

from __future__ import annotations

from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from genguard.pipelines.aigi_benchmark import nodes
from genguard.pipelines.detector import nodes as detector_nodes

NAME = "aigi_benchmark"
BENCHMARK = f"params:{NAME}"


def create_pipeline(detectors: Sequence[str]) -> Pipeline:
    models = [f"params:{d}.model" for d in detectors]
    wiring = Pipeline([
        Node(detector_nodes.ingest_images, "params:data", ["raw_manifest", "bad_files"], name="ingest"),
        Node(detector_nodes.validate_dataset, ["raw_manifest", "bad_files", "params:data", "params:reports_dir"],
             "manifest", name="validate"),
        Node(nodes.encode_shared_features, ["manifest", "params:data", BENCHMARK, *models], "shared_features",
             name="encode_shared_features"),
        *[Node(nodes.benchmark_detector, ["manifest", "shared_features", f"params:{d}", "params:data", BENCHMARK],
               f"results_{d}", name=f"benchmark_{d}") for d in detectors],
        Node(nodes.build_leaderboard,
             ["manifest", "params:data", BENCHMARK, "shared_features", *[f"results_{d}" for d in detectors]],
             ["leaderboard", "leaderboard_md", "leaderboard_plots", "leaderboard_metrics", "leaderboard_plot"],
             name="leaderboard"),
    ])
    global_params = {"params:data", BENCHMARK, *models, *[f"params:{d}" for d in detectors]}
    return Pipeline(wiring, namespace=NAME, parameters={name: name for name in global_params})
