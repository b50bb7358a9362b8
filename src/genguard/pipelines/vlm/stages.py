"""The explainable-AIGI family's DVC stages. ``reveal_bench`` owns the bench folder (records, images, expert
maps) and the expert cache (``persist``: a rerun computes experts for new images only); ``reveal`` reads the
bench as a dependency and starts at the first training node, so it never rebuilds it. Model folders are
``persist`` too: they are cached by key, and DVC would otherwise delete them before a rerun."""

from __future__ import annotations

from typing import Any

from genguard.pipelines.vlm.pipeline import BENCH, FIRST_TRAINING_NODE, REVEAL

FAMILY_DIR, PIPELINE_DIR = "src/genguard/families/vlm", "src/genguard/pipelines/vlm"
BENCH_FILES = ("__init__.py", "chain_text.py", "experts.py", "coe.py", "bench.py")
TRAINING_FILES = ("__init__.py", "chain_text.py", "policy.py", "samples.py", "training.py", "rewards.py", "judges.py", "evaluation.py",
                  "report.py", "inference.py")
BENCH_DIR, BENCH_REPORT, REPORT = "data/03_primary/reveal_bench", "data/08_reporting/reveal_bench", "data/08_reporting/reveal"
PARAMS_FILE = "conf/base/parameters_reveal.yml"


def dvc_stages(core: list[str]) -> dict[str, dict[str, Any]]:
    wiring = [f"{PIPELINE_DIR}/nodes.py", f"{PIPELINE_DIR}/pipeline.py", "conf/base/catalog.yml"]
    return {
        BENCH: {
            "cmd": f"kedro run --pipelines={BENCH}",
            "deps": [*core, *(f"{FAMILY_DIR}/{name}" for name in BENCH_FILES), *wiring,
                     "data/02_intermediate/aigi_default"],
            "params": [{PARAMS_FILE: [BENCH, "reveal_bench_registry"]}],
            "outs": [{BENCH_DIR: {"persist": True}}, {"data/02_intermediate/reveal_experts": {"persist": True}},
                     f"{BENCH_REPORT}/report.json", f"{BENCH_REPORT}/schema.json"],
        },
        REVEAL: {
            "cmd": f"kedro run --pipelines={REVEAL} --from-nodes={FIRST_TRAINING_NODE}",
            "deps": [*core, *(f"{FAMILY_DIR}/{name}" for name in TRAINING_FILES), *wiring, BENCH_DIR,
                     f"{BENCH_REPORT}/schema.json"],
            "params": [{PARAMS_FILE: [REVEAL, "reveal_registry"]}],
            "outs": [{"data/06_models/reveal": {"persist": True}}, f"{REPORT}/per_generator.csv",
                     f"{REPORT}/completions.parquet", f"{REPORT}/plots"],
            "metrics": [{f"{REPORT}/metrics.json": {"cache": False}}],
        },
    }
