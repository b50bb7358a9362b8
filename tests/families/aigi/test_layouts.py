"""Reading published AIGI folder layouts: detection, labels, generators, splits and per-file checks."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from genguard.families.aigi.layouts import check_image_file, detect_layout, ingest, read_layout
from genguard.data.manifest import SPLITS, BadFile, DataValidationError
from genguard.families.aigi.schema import AIGI_SCHEMA

_counter = itertools.count()


def _image(path: Path, size: tuple[int, int] = (40, 40)) -> Path:
    """Write a small noise image (distinct bytes per call, so no accidental duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(next(_counter))
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(path)
    return path


def _fill(folder: Path, n: int, suffix: str = ".png") -> list[Path]:
    return [_image(folder / f"img{i:03d}{suffix}") for i in range(n)]


def _read(root: Path, layout: str = "auto", **kw) -> tuple[pd.DataFrame, list[BadFile]]:
    return read_layout(root, layout, workers=1, progress=False, **kw)


def _rows_under(manifest: pd.DataFrame, folder: Path) -> pd.DataFrame:
    return manifest[manifest["path"].str.startswith(str(folder.resolve()) + "/")]


# --------------------------------------------------------------------------------------------------
# Layouts


def test_forensynths_with_and_without_class_level(tmp_path):
    root = tmp_path / "ufd"
    _fill(root / "guided" / "0_real", 3)
    _fill(root / "guided" / "1_fake", 4)
    for cls in ("car", "cat"):
        _fill(root / "progan" / cls / "0_real", 2)
        _fill(root / "progan" / cls / "1_fake", 2)
    (root / "README.md").write_text("ignored")
    (root / "guided" / "0_real" / ".DS_Store").write_bytes(b"\x00\x01")

    assert detect_layout(root) == "forensynths"
    manifest, bad = _read(root)

    assert bad == []
    assert list(manifest.columns) == list(AIGI_SCHEMA.column_names)
    assert manifest.groupby(["generator", "label"]).size().to_dict() == {
        ("guided", 0): 3, ("guided", 1): 4, ("progan", 0): 4, ("progan", 1): 4}
    assert set(manifest["split"]) <= set(SPLITS)
    assert (manifest["licence"] == "unknown").all()
    assert manifest["source"].str.startswith("ufd/").all()
    fake = _rows_under(manifest, root / "progan" / "car" / "1_fake")
    assert (fake["label"] == 1).all() and len(fake) == 2
    assert (manifest[["width", "height"]] == 40).all().all()
    assert manifest["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()


def test_single_subset_root_takes_root_name_as_generator(tmp_path):
    root = tmp_path / "dalle"
    _fill(root / "0_real", 2)
    _fill(root / "1_fake", 2)
    assert detect_layout(root) == "forensynths"
    manifest, _ = _read(root)
    assert set(manifest["generator"]) == {"dalle"}
    assert sorted(manifest["label"]) == [0, 0, 1, 1]


def test_genimage_val_becomes_test_and_val_is_carved_from_train(tmp_path):
    root = tmp_path / "genimage"
    for generator in ("sdv4", "midjourney"):
        _fill(root / generator / "train" / "ai", 12)
        _fill(root / generator / "train" / "nature", 12)
        _fill(root / generator / "val" / "ai", 2)
        _fill(root / generator / "val" / "nature", 2)

    assert detect_layout(root) == "genimage"
    manifest, bad = _read(root, split_fractions={"train": 0.5, "val": 0.5, "test": 0.0})
    assert bad == []
    assert set(manifest["generator"]) == {"sdv4", "midjourney"}
    from_val = _rows_under(manifest, root / "sdv4" / "val")
    assert (from_val["split"] == "test").all() and len(from_val) == 4
    from_train = _rows_under(manifest, root / "sdv4" / "train")
    assert set(from_train["split"]) == {"train", "val"}  # 24 files, half/half: both appear
    nature = _rows_under(manifest, root / "midjourney" / "train" / "nature")
    assert (nature["label"] == 0).all()
    assert (_rows_under(manifest, root / "midjourney" / "train" / "ai")["label"] == 1).all()


def test_genimage_single_generator_root_with_test_folder_maps_one_to_one(tmp_path):
    root = tmp_path / "sdv5"
    for split in ("train", "val", "test"):
        _fill(root / split / "ai", 2)
        _fill(root / split / "nature", 2)
    assert detect_layout(root) == "genimage"
    manifest, _ = _read(root)
    assert set(manifest["generator"]) == {"sdv5"}
    for split in ("train", "val", "test"):
        assert (_rows_under(manifest, root / split)["split"] == split).all()


def test_real_fake_generator_is_root_name_and_split_is_hashed(tmp_path):
    root = tmp_path / "my_gan"
    _fill(root / "real", 15)
    _fill(root / "fake", 15)
    assert detect_layout(root) == "real_fake"
    manifest, _ = _read(root, split_fractions={"train": 0.4, "val": 0.3, "test": 0.3})
    assert set(manifest["generator"]) == {"my_gan"}
    assert manifest.groupby("label").size().to_dict() == {0: 15, 1: 15}
    assert set(manifest["split"]) == {"train", "val", "test"}


def test_split_folders_aigibench_training_root(tmp_path):
    root = tmp_path / "aigibench_train"
    for split, n in (("train", 10), ("val", 2)):
        for cls in ("car", "sdv1.4"):
            _fill(root / split / cls / "0_real", n)
            _fill(root / split / cls / "1_fake", n)

    assert detect_layout(root) == "split_folders:forensynths"
    manifest, _ = _read(root)
    assert set(manifest["generator"]) == {"car", "sdv1.4"}
    assert (_rows_under(manifest, root / "val")["split"] == "test").all()  # no test folder: val → test
    assert set(_rows_under(manifest, root / "train")["split"]) <= {"train", "val"}


def test_split_folders_real_fake_uses_root_name_and_folder_splits(tmp_path):
    root = tmp_path / "faces"
    for split in ("train", "val", "test"):
        _fill(root / split / "real", 2)
        _fill(root / split / "fake", 2)
    assert detect_layout(root) == "split_folders:real_fake"
    manifest, _ = _read(root)
    assert set(manifest["generator"]) == {"faces"}
    assert manifest.groupby("split").size().to_dict() == {"test": 4, "train": 4, "val": 4}


# --------------------------------------------------------------------------------------------------
# Splits


def test_hash_split_is_deterministic_seeded_and_stable_when_files_are_added(tmp_path):
    root = tmp_path / "gan"
    _fill(root / "real", 20)
    _fill(root / "fake", 20)
    first, _ = _read(root, seed=3)
    again, _ = _read(root, seed=3)
    other_seed, _ = _read(root, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first.set_index("path")["split"].equals(other_seed.set_index("path")["split"])

    _image(root / "real" / "new.png")
    grown, _ = _read(root, seed=3)
    before = first.set_index("path")["split"]
    assert grown.set_index("path")["split"].loc[before.index].equals(before)


def test_identical_files_share_one_split(tmp_path):
    root = tmp_path / "gan"
    originals = _fill(root / "real", 20)
    _fill(root / "fake", 20)
    for i, original in enumerate(originals):  # a byte-identical copy of every real image
        shutil.copy(original, root / "real" / f"copy{i:03d}.png")
    manifest, _ = _read(root)
    assert (manifest.groupby("sha256")["split"].nunique() == 1).all()


def test_split_fractions_are_validated(tmp_path):
    root = tmp_path / "gan"
    _fill(root / "real", 1)
    _fill(root / "fake", 1)
    with pytest.raises(DataValidationError, match="unknown splits"):
        _read(root, split_fractions={"train": 0.8, "holdout": 0.2})
    manifest, _ = _read(root, split_fractions={"train": 1.0})
    assert set(manifest["split"]) == {"train"}


# --------------------------------------------------------------------------------------------------
# Structure errors


def test_unknown_structure_shows_trees_and_the_layout_option(tmp_path):
    root = tmp_path / "photos"
    _fill(root / "holiday", 2)
    with pytest.raises(DataValidationError) as err:
        detect_layout(root)
    message = str(err.value)
    assert "data.layout=" in message
    assert "{0_real,1_fake}" in message and "{ai,nature}" in message and "{real,fake}" in message
    assert "holiday/" in message


@pytest.mark.parametrize(("tree", "wrong"), [
    (("progan/0_real", "progan/2_fake"), "2_fake"),
    (("progan/car/0_real", "progan/car/fakes"), "fakes"),
    (("real", "fakes"), "fakes"),
    (("sdv4/train/ai", "sdv4/train/natural"), "natural"),
])
def test_wrongly_named_class_folder_is_named_with_accepted_names(tmp_path, tree, wrong):
    root = tmp_path / "data"
    for folder in tree:
        _fill(root / folder, 1)
    with pytest.raises(DataValidationError) as err:
        _read(root)
    message = str(err.value)
    assert f"'{wrong}' is not a class folder name" in message
    assert "accepted:" in message and "data.layout=" in message


def test_unknown_layout_name_lists_accepted_names(tmp_path):
    root = tmp_path / "gan"
    _fill(root / "real", 1)
    with pytest.raises(DataValidationError, match="split_folders:forensynths"):
        _read(root, "imagefolder")


def test_ingest_missing_folder_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataValidationError) as err:
        ingest(missing)
    assert str(missing) in str(err.value) and "data.source=" in str(err.value)


# --------------------------------------------------------------------------------------------------
# Per-file checks


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_bad_files_are_reported_with_precise_reasons(tmp_path):
    root = tmp_path / "gan"
    good = _fill(root / "real", 3) + _fill(root / "fake", 3)
    truncated_png = _truncate(_image(root / "real" / "truncated.png"))
    truncated_jpg = _truncate(_image(root / "fake" / "truncated.jpg", size=(64, 64)))
    empty = root / "fake" / "empty.png"
    empty.write_bytes(b"")
    text = root / "real" / "notes_saved_as.jpg"
    text.write_text("this is not a picture")
    small = _image(root / "fake" / "small.png", size=(31, 64))
    (root / "real" / "notes.txt").write_text("obvious non-data is ignored")
    stray = _image(root / "stray.png")

    manifest, bad = _read(root)
    reasons = {Path(b.path).name: b.reason for b in bad}
    assert set(reasons) == {"truncated.png", "truncated.jpg", "empty.png", "notes_saved_as.jpg", "small.png",
                            "stray.png"}
    assert reasons["truncated.png"].startswith("truncated PNG: image file is truncated (")
    assert "of at least" in reasons["truncated.png"]
    assert reasons["truncated.jpg"].startswith("truncated JPEG: image file is truncated (")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["notes_saved_as.jpg"].startswith("not an image: content is text")
    assert reasons["small.png"].startswith("too small: 31x64 px")
    assert "no label" in reasons["stray.png"]
    assert {Path(b.path) for b in bad} >= {truncated_png, truncated_jpg, empty, text, small, stray}
    assert sorted(manifest["path"]) == sorted(str(p) for p in good)


def test_min_side_is_configurable(tmp_path):
    small = _image(tmp_path / "a.png", size=(20, 20))
    assert isinstance(check_image_file(small), BadFile)
    info = check_image_file(small, min_side=16)
    assert (info.width, info.height) == (20, 20)


def test_truncation_is_caught_even_if_someone_enabled_padding(tmp_path):
    path = _truncate(_image(tmp_path / "gan" / "fake" / "t.jpg", size=(64, 64)))
    _image(tmp_path / "gan" / "real" / "ok.png")
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        _, bad = _read(tmp_path / "gan")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever switched it on
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert [b.path for b in bad] == [str(path)]


def test_non_image_content_is_described(tmp_path):
    lfs = tmp_path / "lfs.png"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n")
    html = tmp_path / "page.jpg"
    html.write_text("<!DOCTYPE html><html><body>403</body></html>")
    binary = tmp_path / "blob.webp"
    binary.write_bytes(bytes(range(256)))
    assert "Git LFS pointer" in check_image_file(lfs).reason
    assert "HTML page" in check_image_file(html).reason
    assert check_image_file(binary).reason.startswith("not an image: content is unknown")


def test_read_then_validate_end_to_end(tmp_path):
    from genguard.data.validation import validate_manifest

    root = tmp_path / "gan"
    for split in ("train", "test"):
        for cls in ("real", "fake"):
            for i in range(2):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(i + 10 * (cls == "fake") + 100 * (split == "test"))
                Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(path)
    (root / "train" / "fake" / "empty.png").write_bytes(b"")
    manifest, bad = read_layout(root, progress=False, split_fractions={"train": 1.0})
    report = tmp_path / "report.json"
    with pytest.raises(DataValidationError, match=r"empty\.png: empty file"):
        validate_manifest(manifest, bad, schema=AIGI_SCHEMA, report_path=report, expectations=False)
    validated, _ = validate_manifest(manifest, bad, schema=AIGI_SCHEMA, report_path=report, expectations=False,
                                     on_bad_file="exclude")
    assert validated.groupby("split").size().to_dict() == {"test": 4, "train": 4}
