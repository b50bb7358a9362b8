"""Text-to-image pipelines: ``t2i_testbed``, ``ticoe`` and ``set``. Wiring only: nodes live in ``nodes.py``,
``ticoe_nodes.py`` and ``set_nodes.py``.

Every pipeline starts with the same four shared nodes (captioned set -> validation -> testbed -> evaluator);
the testbed and the concept classifier are cached model folders, so ``kedro run --pipelines=ticoe`` on a
fresh clone trains them once and every later run (and ``set``) reads them.

    t2i_testbed: shared -> evaluate_testbed -> register_testbed
    ticoe:       shared -> reference_images -> erase -> evaluate_erasure -> register_erased
    set:         shared -> inject_backdoors -> detect_backdoors -> register_set
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from genguard.pipelines.t2i import nodes, set_nodes, ticoe_nodes

T2I = "params:t2i"
TESTBED_PIPELINE, TICOE_PIPELINE, SET_PIPELINE = "t2i_testbed", "ticoe", "set"
#: What the shared nodes hand to every method pipeline (free inputs of the namespaced method nodes).
SHARED = {"manifest": "t2i_manifest", "testbed": "t2i_testbed_model", "summary": "t2i_testbed_summary",
          "evaluator": "t2i_evaluator", "evaluator_report": "t2i_evaluator_report"}


def shared_nodes() -> list[Node]:
    return [
        Node(nodes.build_captions, T2I, "t2i_raw_manifest", name="t2i_build_captions"),
        Node(nodes.validate_captions, ["t2i_raw_manifest", T2I, "params:t2i_reports_dir"], SHARED["manifest"],
             name="t2i_validate_captions"),
        Node(nodes.prepare_testbed, [SHARED["manifest"], T2I], [SHARED["testbed"], SHARED["summary"]],
             name="t2i_prepare_testbed"),
        Node(nodes.prepare_evaluator, [SHARED["manifest"], SHARED["testbed"], T2I],
             [SHARED["evaluator"], SHARED["evaluator_report"]], name="t2i_prepare_evaluator"),
    ]


def _method(nodes_: list[Node], namespace: str, parameters: set[str]) -> Pipeline:
    """Method nodes under ``namespace`` (their outputs become ``<namespace>.<name>``); the shared datasets and
    parameter blocks pass through un-prefixed."""
    method = Pipeline(nodes_)
    return Pipeline([*shared_nodes(), Pipeline(method, namespace=namespace, inputs=set(SHARED.values()) & method.inputs(),
                                                parameters=parameters)])


def testbed_pipeline() -> Pipeline:
    return _method([
        Node(nodes.evaluate_testbed, [SHARED["testbed"], SHARED["evaluator"], SHARED["manifest"], T2I],
             ["metrics", "evaluation", "plots"], name="evaluate"),
        Node(nodes.register_testbed,
             [SHARED["testbed"], SHARED["summary"], "metrics", "evaluation", "plots", SHARED["evaluator_report"],
              "params:t2i_testbed_registry"], "registration", name="register"),
    ], TESTBED_PIPELINE, {T2I, "params:t2i_testbed_registry"})


def ticoe_pipeline() -> Pipeline:
    config = f"params:{TICOE_PIPELINE}"
    return _method([
        Node(ticoe_nodes.reference_images, [SHARED["testbed"], SHARED["evaluator"], config, T2I],
             ["references", "reference_report"], name="reference_images"),
        Node(ticoe_nodes.erase, [SHARED["testbed"], "references", SHARED["evaluator"], config],
             ["edited", "erase_report"], name="erase"),
        Node(ticoe_nodes.evaluate_erasure, [SHARED["testbed"], "edited", SHARED["evaluator"], config, T2I],
             ["table", "table_md", "metrics", "plots"], name="evaluate"),
        Node(ticoe_nodes.register_erased,
             [SHARED["testbed"], "edited", "table", "table_md", "metrics", "plots", "erase_report",
              "reference_report", config], "registration", name="register"),
    ], TICOE_PIPELINE, {T2I, config})


def set_pipeline() -> Pipeline:
    config = f"params:{SET_PIPELINE}"
    return _method([
        Node(set_nodes.inject_backdoors, [SHARED["testbed"], SHARED["evaluator"], config, T2I],
             ["backdoored", "injection_report"], name="inject_backdoors"),
        Node(set_nodes.detect_backdoors, [SHARED["testbed"], "backdoored", "injection_report", config],
             ["table", "table_md", "metrics", "plots", "detector"], name="detect"),
        Node(set_nodes.register_set, ["detector", "table", "table_md", "metrics", "plots", "injection_report", config],
             "registration", name="register"),
    ], SET_PIPELINE, {T2I, config})


def create_pipelines() -> dict[str, Pipeline]:
    return {TESTBED_PIPELINE: testbed_pipeline(), TICOE_PIPELINE: ticoe_pipeline(), SET_PIPELINE: set_pipeline()}
