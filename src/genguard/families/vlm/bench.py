"""REVEAL-Bench construction (arXiv 2511.23158, the "expert-grounded evidence annotation" and
"Chain-of-Evidence synthesis" stages): every image of an AIGI manifest goes through the forensic experts,
their readings are calibrated on the training split, turned into evidence (score, verdict, maps, one
sentence each), and a writer chains that evidence into numbered reasoning steps and a verdict. A trace that
fails quality control (format, conclusion = label, no contradiction of an expert, >= 3 steps) is rejected
and counted, as the paper filters its synthesised traces.

The bench is a folder: ``records.jsonl`` (one record per image, spec'd by :data:`RECORD_CHECKS`),
``images/`` (a copy of every image, so the folder alone trains a model) and ``views/`` (the experts' maps).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genguard.data.manifest import DataValidationError
from genguard.families.vlm.coe import make_record, record_frame
from genguard.families.vlm.experts import Calibration, evidence_for, read_experts
from genguard.io.atomic import atomic_path
from genguard.progress import progress

ON_BAD_IMAGE = ("fail", "exclude")


def select_rows(manifest: pd.DataFrame, max_per_group: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_per_group`` images per (split, generator, label), drawn with ``seed`` (all when None)."""
    frame = manifest.sort_values("path").reset_index(drop=True)
    if not max_per_group:
        return frame
    keys = [c for c in ("split", "generator", "label") if c in frame.columns]
    shuffled = frame.sample(frac=1.0, random_state=seed)
    return shuffled.groupby(keys, sort=False).head(int(max_per_group)).sort_values("path").reset_index(drop=True)


def _image_ids(manifest: pd.DataFrame) -> list[str]:
    """Ids from image content (the sha256 column, else the path), so that adding images to the manifest
    leaves every existing record, view and image file where it was; a repeated image gets a suffix."""
    ids, seen = [], {}
    for sha, path in zip(manifest.get("sha256", [None] * len(manifest)), manifest["path"], strict=True):
        key = str(sha) if isinstance(sha, str) and sha else hashlib.sha256(str(path).encode()).hexdigest()
        base = f"rb-{key[:16]}"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def build_bench(manifest: pd.DataFrame, experts: Sequence[Any], writer: Any, out_dir: str | Path,
                cache_dir: str | Path, *, on_bad_image: str = "fail", calibration_split: str = "train",
                margin: float = 0.1) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records for every readable image of ``manifest`` (rows: path, label, split, generator[, sha256]) and
    a report (counts, rejections, unreadable images, expert accuracy, images/s)."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"reveal_bench.on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    out_dir = Path(out_dir)
    began = time.perf_counter()
    readings, problems, stats = read_experts(list(manifest["path"]), experts, cache_dir)
    read_seconds = time.perf_counter() - began
    if problems and on_bad_image == "fail":
        listing = "\n".join(f"  {p['path']}: {p['reason']}" for p in problems[:20])
        raise DataValidationError(
            f"{len(problems)} image(s) no expert can read:\n{listing}\nFix or delete them, or set "
            "reveal_bench.on_bad_image: exclude to build the bench without them (they stay listed in the report)")

    readable = [i for i, r in enumerate(readings) if r is not None]
    labels = manifest["label"].to_numpy()
    splits = manifest["split"].astype(str).to_numpy()
    train = [i for i in readable if splits[i] == calibration_split] or readable
    calibrations = {expert.name: Calibration.fit([readings[i][expert.name].statistic for i in train],
                                                 [int(labels[i]) for i in train], margin=margin)
                    for expert in experts}

    records, rejected = [], []
    image_ids = _image_ids(manifest)
    for i in progress(readable, desc="reveal_bench chains of evidence", unit="img"):
        row = manifest.iloc[i]
        image_id = image_ids[i]
        evidence = evidence_for(readings[i], calibrations, out_dir / "views", image_id, root=out_dir)
        coe = writer.write(evidence, int(row["label"]), image_id)
        problems_of_trace = coe.qc["problems"]  # every writer runs check_trace on what it wrote
        if problems_of_trace:
            rejected.append({"id": image_id, "path": str(row["path"]), "problems": problems_of_trace})
            continue
        image_path = Path("images") / f"{image_id}{Path(str(row['path'])).suffix.lower() or '.png'}"
        _copy(Path(str(row["path"])), out_dir / image_path)
        records.append(make_record(image_id, str(row["split"]), int(row["label"]), str(row.get("generator") or ""),
                                   image_path.as_posix(), evidence, coe))

    seconds = time.perf_counter() - began
    report = {
        "images": len(manifest), "records": len(records), "rejected": len(rejected), "rejected_examples": rejected[:20],
        "rejection_rate": len(rejected) / max(len(readable), 1),
        "unreadable": problems, "expert_cache": stats,
        "experts": {name: {"calibration": c.to_dict(), "accuracy": _expert_accuracy(readings, c, name,
                                                                                labels, splits, readable)}
                    for name, c in calibrations.items()},
        "seconds": seconds, "expert_seconds": read_seconds, "images_per_s": len(manifest) / seconds if seconds else 0.0,
        "writer": getattr(writer, "name", type(writer).__name__),
    }
    return records, report


def _expert_accuracy(readings: list[Any], calibration: Calibration, name: str, labels: np.ndarray,
                     splits: np.ndarray, readable: list[int]) -> dict[str, float]:
    """How often the expert's own verdict is right, per split (uncertain counts as wrong)."""
    out = {}
    for split in sorted(set(splits[readable])):
        rows = [i for i in readable if splits[i] == split]
        verdicts = [calibration.verdict(calibration.score(readings[i][name].statistic)) for i in rows]
        right = [v == ("fake" if labels[i] else "real") for v, i in zip(verdicts, rows, strict=True)]
        out[split] = float(np.mean(right)) if right else float("nan")
    return out


def _copy(source: Path, target: Path) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return  # a rerun over cached images keeps the files already in the bench
    with atomic_path(target) as partial:
        shutil.copyfile(source, partial)


# ------------------------------------------------------------------------------------------ schema
#: The record schema, one expectation per line of the report (GX runs them on :func:`record_frame`).
RECORD_CHECKS: dict[str, str] = {
    "id_unique": "every record id is unique",
    "label_binary": "label is 0 (real) or 1 (AI-generated)",
    "split_known": "split is train, val or test",
    "solution_format": "solution is <think>numbered steps</think><answer>0|1</answer>",
    "steps_3_to_8": "the chain has 3 to 8 numbered steps",
    "experts_present": "at least 3 experts gave evidence",
    "image_exists": "the record's image is in the bench folder",
}


def validate_records(records: Sequence[dict[str, Any]], bench_root: str | Path) -> dict[str, Any]:
    """Run the record schema through Great Expectations; a failing record is named with the failed check and
    the fix, and nothing is trained on a bench that fails."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from genguard.families.vlm.chain_text import FORMAT_PATTERN

    frame = record_frame(records)
    frame["image_exists"] = [(Path(bench_root) / path).is_file() for path in frame["image"]]
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("reveal").add_dataframe_asset("records")
             .add_batch_definition_whole_dataframe("all"))
    expectations = {
        "id_unique": gxe.ExpectColumnValuesToBeUnique(column="id"),
        "label_binary": gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        "split_known": gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
        "solution_format": gxe.ExpectColumnValuesToMatchRegex(column="solution", regex=FORMAT_PATTERN.pattern),
        "steps_3_to_8": gxe.ExpectColumnValuesToBeBetween(column="n_steps", min_value=3, max_value=8),
        "experts_present": gxe.ExpectColumnValuesToBeBetween(column="n_experts", min_value=3),
        "image_exists": gxe.ExpectColumnValuesToBeInSet(column="image_exists", value_set=[True]),
    }
    suite = context.suites.add(gx.ExpectationSuite(name="reveal_bench_records"))
    for name, expectation in expectations.items():
        expectation.meta = {"check": name}
        suite.add_expectation(expectation)
    data = frame.reset_index(drop=True)
    result = batch.get_batch(batch_parameters={"dataframe": data}).validate(
        suite, result_format={"result_format": "COMPLETE"})
    failed = {}
    for item in result.results:
        if not item.success:
            rows = (item.result or {}).get("unexpected_index_list") or []
            failed[item.expectation_config.meta["check"]] = [str(data.loc[r, "id"]) for r in rows][:20]
    report = {"records": len(frame), "engine": "great_expectations", "checks": RECORD_CHECKS, "failed": failed}
    if failed or frame.empty:
        listing = "\n".join(f"  {name} ({RECORD_CHECKS[name]}): {ids}" for name, ids in failed.items())
        raise DataValidationError(
            f"the REVEAL-Bench records fail their schema{' (no records)' if frame.empty else ''}:\n{listing}\n"
            "Rebuild the bench (kedro run --pipeline=reveal_bench) or fix/remove the named records in records.jsonl")
    return report
