"""The video MoE robustness pipeline ``tlga``. Wiring only: nodes live in ``nodes.py``.

    ingest_clips -> validate_clips -> decode_clips -> train_models -> evaluate_grid -> register_tlga
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from genguard.pipelines.video import nodes

TLGA = "tlga"
PARAMS = f"params:{TLGA}"


def tlga_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.ingest_clips, PARAMS, ["tlga_raw_manifest", "tlga_ingest_report"], name="tlga_ingest_clips"),
        Node(nodes.validate_clips, ["tlga_raw_manifest", "tlga_ingest_report", PARAMS, "params:tlga.reports_dir"],
             "tlga_manifest", name="tlga_validate_clips"),
        Node(nodes.decode_clips, ["tlga_manifest", PARAMS], "tlga_clips", name="tlga_decode_clips"),
        Node(nodes.train_models, ["tlga_clips", PARAMS], ["tlga_models", "tlga_training"], name="tlga_train_models"),
        Node(nodes.evaluate_grid, ["tlga_models", "tlga_clips", "tlga_training", PARAMS],
             ["tlga_grid", "tlga_table", "tlga_table_md", "tlga_metrics", "tlga_plots", "tlga_cost"],
             name="tlga_evaluate_grid"),
        Node(nodes.register_tlga, ["tlga_models", "tlga_grid", "tlga_table_md", "tlga_metrics", "tlga_plots",
                                   "tlga_cost", "tlga_training", PARAMS, "params:tlga_registry"],
             "tlga_registration", name="tlga_register"),
    ])


def create_pipelines() -> dict[str, Pipeline]:
    return {TLGA: tlga_pipeline()}
