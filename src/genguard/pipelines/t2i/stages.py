"""The text-to-image family's DVC stages.

``t2i_testbed`` owns the captioned set and the two cached model folders (testbed, concept classifier) as
``persist`` outputs: DVC would otherwise delete them before a rerun, and the rerun would retrain. ``ticoe``
and ``set`` depend on them; their own nodes find them trained (same config and data) and never rewrite them.
"""

from __future__ import annotations

from typing import Any

from genguard.pipelines.t2i.pipeline import SET_PIPELINE, TESTBED_PIPELINE, TICOE_PIPELINE

FAMILY_DIR, PIPELINE_DIR = "src/genguard/families/t2i", "src/genguard/pipelines/t2i"
CAPTIONS_DIR = "data/02_intermediate/t2i_shapes"
TESTBED_DIR, EVALUATOR_DIR = "data/06_models/t2i_testbed", "data/06_models/t2i_evaluator"
SHARED = ("__init__.py", "shapes.py", "captioned_set.py", "tokenizer.py", "testbed.py", "evaluator.py", "prompts.py",
          "examples.py")
T2I_PARAMS = {"conf/base/parameters_t2i.yml": ["t2i"]}
#: Family modules each method stage runs on top of the shared ones.
METHOD_FILES = {TICOE_PIPELINE: ("erasure.py", "erasure_protocol.py", "prompt_attacks.py"),
                SET_PIPELINE: ("backdoors.py", "backdoor_protocol.py", "scaling_probe.py", "response_space.py")}
NODE_FILES = {TICOE_PIPELINE: "ticoe_nodes.py", SET_PIPELINE: "set_nodes.py"}


def _deps(core: list[str], *extra: str) -> list[str]:
    return [*core, *(f"{FAMILY_DIR}/{name}" for name in SHARED), f"{PIPELINE_DIR}/nodes.py",
            f"{PIPELINE_DIR}/pipeline.py", "conf/base/catalog.yml", *extra]


def dvc_stages(core: list[str]) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {
        TESTBED_PIPELINE: {
            "cmd": f"kedro run --pipelines={TESTBED_PIPELINE}",
            "deps": _deps(core),
            "params": [T2I_PARAMS, {"conf/base/parameters_t2i.yml": ["t2i_testbed_registry"]}],
            "outs": [{CAPTIONS_DIR: {"persist": True}}, {TESTBED_DIR: {"persist": True}},
                     {EVALUATOR_DIR: {"persist": True}}, f"data/08_reporting/{TESTBED_PIPELINE}/plots"],
            "metrics": [{f"data/08_reporting/{TESTBED_PIPELINE}/metrics.json": {"cache": False}}],
        },
    }
    for method in (TICOE_PIPELINE, SET_PIPELINE):
        report = f"data/08_reporting/{method}"
        stages[method] = {
            "cmd": f"kedro run --pipelines={method}",
            "deps": _deps(core, CAPTIONS_DIR, TESTBED_DIR, EVALUATOR_DIR,
                          *(f"{FAMILY_DIR}/{name}" for name in METHOD_FILES[method]),
                          f"{PIPELINE_DIR}/{NODE_FILES[method]}"),
            "params": [T2I_PARAMS, {f"conf/base/parameters_{method}.yml": [method]}],
            "outs": [f"{report}/table.csv", f"{report}/table.md", f"{report}/plots"],
            "metrics": [{f"{report}/metrics.json": {"cache": False}}],
        }
    return stages
