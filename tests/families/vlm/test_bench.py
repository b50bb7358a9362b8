"""REVEAL-Bench construction end to end on a small toy manifest: records pass their schema, an unreadable
image stops the build by name (or is excluded and listed), a record that breaks the schema is named, and a
rerun reads every expert from the cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from genguard.data.manifest import DataValidationError
from genguard.families.vlm.bench import build_bench, select_rows, validate_records
from genguard.families.vlm.coe import TemplateWriter
from genguard.families.vlm.experts import build_experts

EXPERTS = ("spectrum", "noise_residual", "local_artifacts", "texture_frequency")


def _image(seed: int, fake: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(64, 64)), 3)
    gray = 128 + 50 * field / (field.std() + 1e-9) + rng.normal(0, 2, (64, 64))
    if fake:  # a period-2 up-sampling grid: what the spectrum and residual experts are built to see
        y, x = np.indices(gray.shape)
        gray = gray + 6 * ((x + y) % 2 * 2 - 1)
    return np.repeat(np.clip(gray, 0, 255)[..., None], 3, axis=2).astype(np.uint8)


@pytest.fixture()
def manifest(tmp_path) -> pd.DataFrame:
    rows = []
    for i in range(32):
        label, split = i % 2, ("train" if i < 20 else "test")
        path = tmp_path / "images" / f"{split}_{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(_image(i, bool(label))).save(path)
        rows.append({"path": str(path), "label": label, "split": split, "generator": "grid", "sha256": f"{i:064x}"})
    return pd.DataFrame(rows)


def _build(manifest, tmp_path, **options):
    return build_bench(manifest, build_experts(EXPERTS), TemplateWriter(), tmp_path / "bench", tmp_path / "cache",
                       **options)


def test_records_pass_their_schema_and_the_rerun_reads_experts_from_cache(manifest, tmp_path):
    records, report = _build(manifest, tmp_path)
    assert report["records"] + report["rejected"] == len(manifest) and report["records"] >= 24
    assert report["experts"]["spectrum"]["accuracy"]["test"] >= 0.9  # the grid is what the spectrum sees
    schema = validate_records(records, tmp_path / "bench")
    assert schema["failed"] == {} and schema["engine"] == "great_expectations"
    record = records[0]
    assert (tmp_path / "bench" / record["image"]).is_file()
    assert all((tmp_path / "bench" / path).is_file() for e in record["experts"].values() for path in e["views"].values())
    json.dumps(records)  # one JSON line each

    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "bench").rglob("*.png")}
    again, report_again = _build(manifest, tmp_path)
    assert report_again["expert_cache"]["misses"] == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "bench").rglob("*.png")} == written  # nothing rewritten
    assert report_again["expert_cache"]["hits"] == len(manifest) * len(EXPERTS)
    assert [r["solution"] for r in again] == [r["solution"] for r in records]


def test_an_unreadable_image_is_named_and_fails_or_is_excluded(manifest, tmp_path):
    broken = manifest.loc[3, "path"]
    with open(broken, "wb") as handle:
        handle.write(b"not a png")
    with pytest.raises(DataValidationError, match=rf"1 image\(s\) no expert can read:\n  {broken}"):
        _build(manifest, tmp_path)
    assert not (tmp_path / "bench" / "images").exists()  # nothing half-built
    records, report = _build(manifest, tmp_path, on_bad_image="exclude")
    assert [p["path"] for p in report["unreadable"]] == [broken]
    assert report["records"] + report["rejected"] == len(manifest) - 1
    assert broken not in {r["image"] for r in records}


def test_a_record_that_breaks_the_schema_is_named_with_its_check(manifest, tmp_path):
    records, _ = _build(manifest, tmp_path)
    records[1] = {**records[1], "solution": records[1]["solution"] + "\n"}  # the strict format: no trailing text
    records[2] = {**records[2], "label": 2}
    with pytest.raises(DataValidationError) as error:
        validate_records(records, tmp_path / "bench")
    message = str(error.value)
    assert "solution_format" in message and records[1]["id"] in message
    assert "label_binary" in message and records[2]["id"] in message


def test_select_rows_caps_every_split_generator_label_group(manifest):
    chosen = select_rows(manifest, 3, seed=0)
    assert chosen.groupby(["split", "generator", "label"]).size().tolist() == [3, 3, 3, 3]
    assert select_rows(manifest, 3, seed=0).equals(chosen) and len(select_rows(manifest, None, 0)) == len(manifest)
