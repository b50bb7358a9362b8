"""Manifest validation: each check's verdict, the JSON report, bad-file policies, GX == pandas."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genguard.data.manifest import BadFile, DataValidationError, image_schema, normalise_manifest, sha256_file
from genguard.data.validation import validate_manifest

# A family-like schema: images grouped by generator; no file and no source photo in two splits.
SCHEMA = image_schema("test", {"generator": "str"}, group_column="generator", leakage_groups=("sha256", "origin"),
                      sort_by=("split", "generator", "label", "path"))

_counter = itertools.count()


def _image(path: Path, size: tuple[int, int] = (40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(next(_counter))
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(path)
    return path


def _row(path: Path, label: int, split: str, generator: str = "gan") -> dict:
    with Image.open(path) as image:
        width, height = image.size
    return {"path": str(path), "label": label, "generator": generator, "split": split,
            "sha256": sha256_file(path), "width": width, "height": height,
            "source": f"data/{path.name}", "licence": "unknown"}


def _manifest(tmp_path: Path, per_class: int = 2) -> pd.DataFrame:
    """A valid manifest: ``per_class`` real and fake images in each of train, val, test."""
    rows = [_row(_image(tmp_path / "data" / f"{split}_{label}_{i}.png"), label, split)
            for split in ("train", "val", "test") for label in (0, 1) for i in range(per_class)]
    return normalise_manifest(pd.DataFrame(rows), SCHEMA)


def _validate(manifest, bad_files=(), tmp_path=None, **kw):
    kw.setdefault("expectations", False)
    kw.setdefault("schema", SCHEMA)
    return validate_manifest(manifest, list(bad_files), report_path=tmp_path / "report.json", **kw)


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())


def _check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


# --------------------------------------------------------------------------------------------------
# Verdicts (pandas engine)


def test_valid_manifest_passes_and_report_is_written(tmp_path):
    manifest = _manifest(tmp_path)
    validated, report = _validate(manifest, tmp_path=tmp_path)
    pd.testing.assert_frame_equal(validated, manifest)
    on_disk = _report(tmp_path)
    assert on_disk == report
    assert report["success"] is True and report["engine"] == "pandas"
    assert all(c["success"] for c in report["checks"])
    assert report["counts"]["by_split"] == {"test": 4, "train": 4, "val": 4}
    assert report["counts"]["by_label"] == {"0": 6, "1": 6}
    assert report["counts"]["by_generator"] == {"gan": 12}


def test_duplicate_across_splits_fails_naming_both_paths(tmp_path):
    manifest = _manifest(tmp_path)
    train_file = Path(manifest.loc[manifest["split"] == "train", "path"].iloc[0])
    leaked = tmp_path / "data" / "copy_in_test.png"
    shutil.copy(train_file, leaked)
    manifest = pd.concat([manifest, pd.DataFrame([_row(leaked, 0, "test")])], ignore_index=True)

    with pytest.raises(DataValidationError) as err:
        _validate(manifest, tmp_path=tmp_path)
    message = str(err.value)
    assert "no_split_leakage:sha256" in message
    assert str(train_file) in message and str(leaked) in message
    assert str(tmp_path / "report.json") in message
    leak = _check(_report(tmp_path), "no_split_leakage:sha256")
    assert not leak["success"]
    assert {r["path"] for r in leak["offending"]} == {str(train_file), str(leaked)}


def test_missing_class_in_train_fails(tmp_path):
    manifest = _manifest(tmp_path)
    manifest = manifest[~((manifest["split"] == "train") & (manifest["label"] == 1))]
    with pytest.raises(DataValidationError, match="classes_in_train") as err:
        _validate(manifest, tmp_path=tmp_path)
    assert "label=1" in str(err.value)


def test_bad_label_fails_naming_the_row(tmp_path):
    manifest = _manifest(tmp_path)
    manifest.loc[0, "label"] = 2
    with pytest.raises(DataValidationError, match="label_values") as err:
        _validate(manifest, tmp_path=tmp_path)
    assert f"{manifest.loc[0, 'path']} (label=2)" in str(err.value)


def test_required_split_missing_and_missing_file_fail(tmp_path):
    manifest = _manifest(tmp_path)
    manifest = manifest[manifest["split"] != "test"].reset_index(drop=True)
    Path(manifest.loc[0, "path"]).unlink()
    with pytest.raises(DataValidationError) as err:
        _validate(manifest, tmp_path=tmp_path)
    message = str(err.value)
    assert "required_splits" in message and "split=test" in message
    assert "paths_exist" in message and manifest.loc[0, "path"] in message
    # A test-only requirement (evaluation manifests) skips the train checks.
    evaluation = _manifest(tmp_path / "eval")
    _validate(evaluation[evaluation["split"] == "test"], tmp_path=tmp_path, require_splits=("test",))


def test_sizes_generator_and_duplicate_paths_are_checked(tmp_path):
    manifest = _manifest(tmp_path)
    manifest.loc[0, "width"] = 16
    manifest.loc[1, "generator"] = None
    manifest = pd.concat([manifest, manifest.iloc[[2]]], ignore_index=True)
    with pytest.raises(DataValidationError) as err:
        _validate(manifest, tmp_path=tmp_path)
    message = str(err.value)
    for check in ("image_size", "generator_present", "unique_paths"):
        assert check in message
    assert "no_split_leakage" not in message  # the same path twice in one split is no leakage


def test_message_is_capped_but_names_the_count(tmp_path):
    manifest = _manifest(tmp_path, per_class=15)
    manifest["label"] = 7
    with pytest.raises(DataValidationError) as err:
        _validate(manifest, tmp_path=tmp_path)
    assert "and 70 more" in str(err.value)  # 90 rows, 20 shown
    assert len(_check(_report(tmp_path), "label_values")["offending"]) == 50


# --------------------------------------------------------------------------------------------------
# Bad files


def _bad_files(tmp_path: Path) -> list[BadFile]:
    folder = tmp_path / "data"
    return [BadFile(str(folder / "broken.png"), "truncated PNG: image file is truncated (10 bytes)"),
            BadFile(str(folder / "empty.jpg"), "empty file (0 bytes)")]


def test_bad_files_fail_by_default_listing_every_file(tmp_path):
    manifest = _manifest(tmp_path)
    with pytest.raises(DataValidationError) as err:
        _validate(manifest, _bad_files(tmp_path), tmp_path=tmp_path)
    for bad in _bad_files(tmp_path):
        assert str(bad) in str(err.value)
    assert "on_bad_file=exclude" in str(err.value)
    assert _report(tmp_path)["success"] is False


def test_exclude_drops_bad_files_and_warns(tmp_path, caplog):
    manifest = _manifest(tmp_path)
    bad = [BadFile(manifest.loc[0, "path"], "too small: 8x8 px"), *_bad_files(tmp_path)]
    with caplog.at_level(logging.WARNING, logger="genguard.data.validation"):
        validated, report = _validate(manifest, bad, tmp_path=tmp_path, on_bad_file="exclude")
    assert len(validated) == len(manifest) - 1
    assert manifest.loc[0, "path"] not in set(validated["path"])
    for item in bad:
        assert str(item) in caplog.text
    assert report["success"] is True
    assert [f["path"] for f in _report(tmp_path)["bad_files"]["files"]] == sorted(b.path for b in bad)


def test_unknown_bad_file_policy_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"\['fail', 'exclude'\]"):
        _validate(_manifest(tmp_path), tmp_path=tmp_path, on_bad_file="ignore")


# --------------------------------------------------------------------------------------------------
# Great Expectations engine: one test, so the GX import (seconds) is paid once. Select with `-k gx`.


def _cases(tmp_path: Path) -> dict[str, pd.DataFrame]:
    base = _manifest(tmp_path)
    train_path = base.loc[base["split"] == "train", "path"].iloc[0]
    cases = {"valid": base}
    cases["bad_label"] = base.assign(label=[2, *base["label"][1:]])
    cases["null_label"] = base.astype({"label": "float64"}).assign(label=[np.nan, *base["label"][1:]])
    cases["bad_split"] = base.assign(split=["holdout", *base["split"][1:]])
    cases["no_fake_in_train"] = base[~((base["split"] == "train") & (base["label"] == 1))]
    cases["no_test"] = base[base["split"] != "test"]
    cases["blank_generator"] = base.assign(generator=["nan", " ", *base["generator"][2:]])
    cases["too_small"] = base.assign(width=[16, *base["width"][1:]], height=[*base["height"][:-1], 9000])
    cases["duplicate_path"] = pd.concat([base, base[base["path"] == train_path]], ignore_index=True)
    cases["leak"] = base.assign(sha256=[base["sha256"].iloc[-1], *base["sha256"][1:]])
    cases["empty"] = base.iloc[0:0]
    return cases


def test_gx_and_pandas_engines_agree(tmp_path):
    pytest.importorskip("great_expectations")
    for name, manifest in _cases(tmp_path).items():
        outcomes = {}
        for expectations in (False, True):
            report_path = tmp_path / f"{name}_{expectations}.json"
            with contextlib.suppress(DataValidationError):
                validate_manifest(manifest, [], schema=SCHEMA, report_path=report_path,
                                  expectations=expectations)
            outcomes[expectations] = json.loads(report_path.read_text())
        pandas_report, gx_report = outcomes[False], outcomes[True]
        assert gx_report["engine"] == "great_expectations"
        assert pandas_report["success"] == gx_report["success"] == (name == "valid"), name
        for pandas_check, gx_check in zip(pandas_report["checks"], gx_report["checks"], strict=True):
            assert pandas_check["name"] == gx_check["name"]
            assert pandas_check["success"] == gx_check["success"], (name, gx_check["name"])
            assert pandas_check["offending"] == gx_check["offending"], (name, gx_check["name"])


# --------------------------------------------------------------------------------------------------
# Groups and family columns


def test_a_group_shared_by_two_splits_fails_even_when_every_file_differs(tmp_path):
    """Two crops of one photo (different files, same origin) in train and test: leakage by group."""
    manifest = _manifest(tmp_path)
    manifest["origin"] = [f"photo{i}" for i in range(len(manifest))]
    train_row = manifest.index[manifest["split"] == "train"][0]
    test_row = manifest.index[manifest["split"] == "test"][0]
    manifest.loc[test_row, "origin"] = manifest.loc[train_row, "origin"]
    with pytest.raises(DataValidationError, match="no_split_leakage:origin") as err:
        _validate(manifest, tmp_path=tmp_path)
    assert manifest.loc[train_row, "path"] in str(err.value) and manifest.loc[test_row, "path"] in str(err.value)
    assert _check(_report(tmp_path), "no_split_leakage:sha256")["success"]
    manifest.loc[test_row, "origin"] = ""  # rows without a group (a folder that records none) never leak
    _validate(manifest, tmp_path=tmp_path)


def test_family_columns_survive_normalisation_and_validation(tmp_path):
    manifest = _manifest(tmp_path)
    manifest["video_id"] = [f"v{i // 2}" for i in range(len(manifest))]
    manifest["frame_index"] = np.arange(len(manifest)) % 2
    normalised = normalise_manifest(manifest, SCHEMA)
    assert list(normalised.columns[:len(SCHEMA.column_names)]) == list(SCHEMA.column_names)
    assert {"video_id", "frame_index"} <= set(normalised.columns)
    validated, _ = _validate(manifest, tmp_path=tmp_path)
    assert {"video_id", "frame_index"} <= set(validated.columns)


def test_multiclass_schema_accepts_class_indices_and_requires_them_in_train(tmp_path):
    schema = image_schema("clips", {"generator": "str"}, group_column="generator", leakage_groups=("sha256",),
                          sort_by=("split", "label", "path"), label_values=(0, 1, 2))
    manifest = _manifest(tmp_path)
    manifest.loc[manifest.groupby("split").head(1).index, "label"] = 2  # class 2 in every split
    _validate(manifest, tmp_path=tmp_path, schema=schema)
    manifest.loc[manifest["split"] == "train", "label"] = 0
    with pytest.raises(DataValidationError, match="classes_in_train"):
        _validate(manifest, tmp_path=tmp_path, schema=schema)
