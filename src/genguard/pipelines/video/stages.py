"""The video family's DVC stage: ``tlga`` owns the embedded clips, the decoded-clip cache and the cached model
folders as ``persist`` outputs (DVC would otherwise delete them before a rerun, and the rerun would rebuild
and retrain); the grid's reports are its outputs and metrics."""

from __future__ import annotations

from typing import Any

from genguard.pipelines.video.pipeline import TLGA

FAMILY_DIR, PIPELINE_DIR = "src/genguard/families/video", "src/genguard/pipelines/video"
FAMILY_FILES = ("__init__.py", "motion.py", "clips.py", "layouts.py", "networks.py", "moe.py", "attacks.py",
                "regimes.py", "robustness.py", "report.py", "examples.py", "inference.py")
REPORT = f"data/08_reporting/{TLGA}"


def dvc_stages(core: list[str]) -> dict[str, dict[str, Any]]:
    return {TLGA: {
        "cmd": f"kedro run --pipelines={TLGA}",
        "deps": [*core, *(f"{FAMILY_DIR}/{name}" for name in FAMILY_FILES), f"{PIPELINE_DIR}/nodes.py",
                 f"{PIPELINE_DIR}/pipeline.py", "conf/base/catalog.yml"],
        "params": [{"conf/base/parameters_tlga.yml": [TLGA, "tlga_registry"]}],
        "outs": [{"data/02_intermediate/video_motion": {"persist": True}},
                 {"data/03_primary/video_clips": {"persist": True}}, {"data/06_models/tlga": {"persist": True}},
                 f"{REPORT}/table.csv", f"{REPORT}/grid.csv", f"{REPORT}/table.md", f"{REPORT}/plots"],
        "metrics": [{f"{REPORT}/metrics.json": {"cache": False}}, {f"{REPORT}/cost.json": {"cache": False}}],
    }}
