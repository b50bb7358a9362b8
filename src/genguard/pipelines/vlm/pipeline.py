"""The explainable-AIGI pipelines ``reveal_bench`` and ``reveal``. Wiring only: nodes live in ``nodes.py``.

    reveal_bench: build_reveal_bench -> validate_reveal_bench -> register_reveal_bench
    reveal:       reveal_bench's nodes -> prepare_policy -> coe_tuning -> r_grpo -> evaluate_reveal -> register_reveal

Both read the AIGI image manifest ``aigi_data.manifest``: :data:`UPSTREAM` asks the pipeline registry to put
the ``aigi_data`` pipeline in front (by name: family pipelines never import each other), so each runs alone
from a clean clone. The bench is a file (``reveal_bench_records``), so DVC's ``reveal`` stage starts from
:data:`FIRST_TRAINING_NODE` and reads the bench the ``reveal_bench`` stage wrote.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from genguard.pipelines.vlm import nodes

BENCH, REVEAL = "reveal_bench", "reveal"
FIRST_TRAINING_NODE = "reveal_prepare_policy"
#: Pipelines (by name) that must run before each of this package's pipelines.
UPSTREAM = {BENCH: ("aigi_data",), REVEAL: ("aigi_data",)}
BENCH_PARAMS, REVEAL_PARAMS, BENCH_DIR = f"params:{BENCH}", f"params:{REVEAL}", f"params:{BENCH}.out_dir"


def bench_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.build_reveal_bench, ["aigi_data.manifest", BENCH_PARAMS],
             ["reveal_bench_records", "reveal_bench_report"], name="reveal_bench_build"),
        Node(nodes.validate_reveal_bench, ["reveal_bench_records", BENCH_PARAMS], "reveal_bench_schema",
             name="reveal_bench_validate"),
        Node(nodes.register_reveal_bench, ["reveal_bench_records", "reveal_bench_report", "reveal_bench_schema",
                                           BENCH_PARAMS, "params:reveal_bench_registry"],
             "reveal_bench_dataset", name="reveal_bench_register"),
    ])


def training_pipeline() -> Pipeline:
    return Pipeline([
        # The schema report is an input so that no model trains on a bench that failed validation.
        Node(nodes.prepare_policy, ["reveal_bench_records", "reveal_bench_schema", REVEAL_PARAMS], "reveal_policy", name=FIRST_TRAINING_NODE),
        Node(nodes.coe_tuning, ["reveal_bench_records", "reveal_policy", REVEAL_PARAMS, BENCH_DIR], "reveal_sft",
             name="reveal_coe_tuning"),
        Node(nodes.r_grpo, ["reveal_bench_records", "reveal_sft", REVEAL_PARAMS, BENCH_DIR], "reveal_grpo",
             name="reveal_r_grpo"),
        Node(nodes.evaluate_reveal, ["reveal_bench_records", "reveal_policy", "reveal_sft", "reveal_grpo",
                                     REVEAL_PARAMS, BENCH_DIR],
             ["reveal_per_generator", "reveal_completions", "reveal_metrics", "reveal_plots"], name="reveal_evaluate"),
        Node(nodes.register_reveal, ["reveal_grpo", "reveal_per_generator", "reveal_completions", "reveal_metrics",
                                     "reveal_plots", "reveal_sft", REVEAL_PARAMS, "params:reveal_registry"],
             "reveal_registration", name="reveal_register"),
    ])


def create_pipelines() -> dict[str, Pipeline]:
    return {BENCH: bench_pipeline(), REVEAL: bench_pipeline() + training_pipeline()}
