"""The video family's data: the moving-shapes generator, the embedded build, the decoded-clip cache, file checks
and the published UCF-101 / HMDB-51 layouts (tiny fake trees written with PyAV)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genguard.data.manifest import DataValidationError
from genguard.data.validation import validate_manifest
from genguard.data.video import write_video
from genguard.families.video import clips as clips_module
from genguard.families.video import motion
from genguard.families.video.clips import VIDEO_SCHEMA, ClipSet, check_clip_files, decode_clip_cache
from genguard.families.video.layouts import read_hmdb51, read_layout, read_ucf101
from genguard.families.video.motion import (
    MotionWorld,
    build_motion_set,
    render_motion_clips,
    split_seed,
    world_from_params,
)

# 24 px, 8 frames, 2 speeds: the smallest world with all 8 classes (2*3 + 2*7 = 20 < 24).
TINY = MotionWorld(frames=8, size=24, speeds=(1, 2), radius=(2, 3))
TINY_COUNTS = {"train": 16, "test": 8}


def _geometry(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per clip and frame: object centroid x, y and bounding-box width, height, from pixels alone.

    Noise-free worlds only: foreground channels are >= 0.4*255 and background ones <= 0.3*255, so the
    channel mean separates them exactly.
    """
    mask = clips.astype(np.float32).mean(-1) > 89.0  # (N, T, H, W)
    size = clips.shape[2]
    coords = np.arange(size)
    count = mask.sum((2, 3))
    assert (count > 0).all(), "every frame shows the object"
    cx = (mask * coords[None, None, None, :]).sum((2, 3)) / count
    cy = (mask * coords[None, None, :, None]).sum((2, 3)) / count
    cols, rows = mask.any(2), mask.any(3)  # (N, T, W), (N, T, H)
    width = size - cols[..., ::-1].argmax(-1) - cols.argmax(-1)
    height = size - rows[..., ::-1].argmax(-1) - rows.argmax(-1)
    return cx, cy, width, height


@pytest.fixture(scope="module")
def noise_free() -> tuple[MotionWorld, np.ndarray, list[dict]]:
    world = MotionWorld(noise=0.0)
    clips, metadata = render_motion_clips(world, 1600, seed=1)
    return world, clips, metadata


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out_dir = tmp_path_factory.mktemp("motion") / "set"
    return out_dir, build_motion_set(out_dir, TINY, TINY_COUNTS, seed=3)


# --------------------------------------------------------------------------------------------------
# The generator


def test_class_order_puts_the_direction_in_label_mod_directions(noise_free):
    world, clips, metadata = noise_free
    assert world.n_classes == 8
    assert world.class_names == ["right_slow", "left_slow", "down_slow", "up_slow",
                                 "right_fast", "left_fast", "down_fast", "up_fast"]
    assert clips.shape == (1600, 8, 32, 32, 3) and clips.dtype == np.uint8
    for meta in metadata:
        assert world.directions[meta["label"] % 4] == meta["direction"]
        assert world.speed_names[meta["label"] // 4] == meta["speed"]
        assert world.class_names[meta["label"]] == meta["class_name"]
    counts = np.bincount([m["label"] for m in metadata], minlength=8)
    assert (counts == 200).all()  # balanced
    assert {m["shape"] for m in metadata} == set(world.shapes)


def test_the_class_is_the_motion_between_frames_and_the_object_stays_inside(noise_free):
    world, clips, metadata = noise_free
    cx, cy, width, height = _geometry(clips)
    step_x, step_y = (cx[:, -1] - cx[:, 0]) / 7, (cy[:, -1] - cy[:, 0]) / 7
    vectors = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
    speeds = dict(zip(world.speed_names, world.speeds, strict=True))
    for i, meta in enumerate(metadata):
        dx, dy = vectors[meta["direction"]]
        speed = speeds[meta["speed"]]
        assert (step_x[i], step_y[i]) == pytest.approx((dx * speed, dy * speed), abs=1e-6)
        # Never cut by the frame edge: the full 2r+1 extent is visible in every frame.
        assert (width[i] == 2 * meta["radius"] + 1).all() and (height[i] == 2 * meta["radius"] + 1).all()


def test_frames_without_their_order_do_not_reveal_the_direction(noise_free):
    """A clip played backwards is a clip of the opposite direction: the pooled positions along the motion
    axis match between right/left and down/up, and starts spread over the whole valid range."""
    _, clips, metadata = noise_free
    cx, cy, _, _ = _geometry(clips)
    labels = np.array([m["label"] for m in metadata])
    for speed_index in range(2):
        for forward, backward, axis in ((0, 1, cx), (2, 3, cy)):
            a = axis[labels == speed_index * 4 + forward].ravel()
            b = axis[labels == speed_index * 4 + backward].ravel()
            assert abs(a.mean() - b.mean()) < 1.5 and abs(a.mean() - 15.5) < 1.5
            assert abs(a.std() - b.std()) < 1.0
            histogram_a = np.histogram(a, bins=8, range=(0, 32))[0] / a.size
            histogram_b = np.histogram(b, bins=8, range=(0, 32))[0] / b.size
            assert np.abs(histogram_a - histogram_b).sum() < 0.25
    # Slow objects start anywhere the trajectory fits: across the frame, not at one spot.
    slow_right = cx[labels == 0, 0]
    assert slow_right.max() - slow_right.min() >= 15


def test_render_is_deterministic_in_its_seed():
    a, meta_a = render_motion_clips(TINY, 24, seed=5)
    b, meta_b = render_motion_clips(TINY, 24, seed=5)
    c, _ = render_motion_clips(TINY, 24, seed=6)
    assert a.tobytes() == b.tobytes() and meta_a == meta_b
    assert a.tobytes() != c.tobytes()
    assert split_seed(5, "train") != split_seed(5, "test")


def test_invalid_worlds_and_params_are_named():
    with pytest.raises(ValueError, match="2\\*radius_max"):
        MotionWorld(size=24)  # 2*5 + 3*7 = 31 >= 24
    with pytest.raises(ValueError, match="speed_names"):
        MotionWorld(speed_names=("slow",))
    with pytest.raises(ValueError, match="directions"):
        MotionWorld(directions=("right", "sideways"))
    world = world_from_params({"frames": 8, "speeds": [1, 2], "speed_names": ["a", "b"], "radius": [2, 3]})
    assert world.speeds == (1, 2) and world.radius == (2, 3)
    with pytest.raises(ValueError, match="allowed:.*noise"):
        world_from_params({"fps": 8})


# --------------------------------------------------------------------------------------------------
# The embedded build and the decoded cache


def test_built_set_decodes_back_to_the_rendered_clips(built, tmp_path):
    out_dir, manifest = built
    assert list(manifest.columns[:len(VIDEO_SCHEMA.columns)]) == list(VIDEO_SCHEMA.column_names)
    assert len(manifest) == 24 and set(manifest["split"]) == {"train", "test"}
    assert (manifest["source"] == "genguard.motion").all() and manifest["video_group"].is_unique
    assert set(manifest["group"]) == {"slow", "fast"}
    first = manifest.iloc[0]
    assert Path(first["path"]).relative_to(out_dir).parts == (first["split"], first["class_name"],
                                                               Path(first["path"]).name)
    validate_manifest(manifest, check_clip_files(manifest, min_frames=8, workers=1), schema=VIDEO_SCHEMA,
                      report_path=tmp_path / "report.json", min_side=8, expectations=False)

    decoded = decode_clip_cache(manifest, tmp_path / "cache", frames=8, size=24, workers=1)
    assert decoded.clips.shape == (24, 3, 8, 24, 24) and decoded.clips.dtype == torch.uint8
    assert decoded.labels.tolist() == manifest["label"].tolist()
    test_rows = manifest.index[manifest["split"] == "test"]
    rendered, metadata = render_motion_clips(TINY, 8, split_seed(3, "test"))
    by_index = {int(Path(manifest.loc[i, "path"]).stem): i for i in test_rows}
    for index, (clip, meta) in enumerate(zip(rendered, metadata, strict=True)):
        row = by_index[index]
        assert manifest.loc[row, "label"] == meta["label"]
        got = decoded.clips[row].permute(1, 2, 3, 0).float()  # T, H, W, 3
        # Lossless luma, 4:2:0 chroma: small mean error (the noise makes chroma differ pixel by pixel).
        assert (got - torch.from_numpy(rendered[index]).float()).abs().mean() < 8.0


def test_build_and_decode_reruns_come_from_their_caches(built, tmp_path, monkeypatch):
    out_dir, manifest = built
    first = decode_clip_cache(manifest, tmp_path, frames=4, size=12, workers=2)  # the process pool path
    assert first.clips.shape == (24, 3, 4, 12, 12)

    def fail(*args, **kwargs):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(motion, "render_motion_clips", fail)
    monkeypatch.setattr(clips_module, "_decode_task", fail)
    again = build_motion_set(out_dir, TINY, TINY_COUNTS, seed=3)
    pd.testing.assert_frame_equal(again, manifest)
    reloaded = decode_clip_cache(manifest, tmp_path, frames=4, size=12, workers=1)
    assert torch.equal(reloaded.clips, first.clips) and reloaded.cache_key == first.cache_key
    with pytest.raises(AssertionError, match="from the cache"):  # other options: decoded again
        decode_clip_cache(manifest, tmp_path, frames=8, size=12, workers=1)
    with pytest.raises(AssertionError, match="from the cache"):  # another seed: rendered again
        build_motion_set(tmp_path / "other", TINY, TINY_COUNTS, seed=4)


def test_clip_sets_give_float_clips_and_labels(built, tmp_path):
    _, manifest = built
    decoded = decode_clip_cache(manifest, tmp_path, frames=2, size=8, workers=1)
    test_set = decoded.split("test")
    assert len(test_set) == 8 and test_set.labels.dtype == torch.int64 and len(test_set.groups) == 8
    item = test_set[0]
    assert item["clips"].dtype == torch.float32 and item["clips"].shape == (3, 2, 8, 8)
    assert 0.0 <= float(item["clips"].min()) and float(item["clips"].max()) <= 1.0
    assert torch.equal(item["clips"] * 255, test_set.clips[0].float())
    adversarial = ClipSet(torch.rand(3, 3, 2, 8, 8, dtype=torch.float64), [0, 1, 2])
    assert adversarial[2]["clips"].dtype == torch.float32 and int(adversarial[2]["label"]) == 2
    with pytest.raises(DataValidationError, match="no clips in split 'val'"):
        decoded.split("val")


def test_unusable_videos_are_named_by_checks_validation_and_decoding(built, tmp_path):
    _, manifest = built
    good = Path(manifest.iloc[0]["path"])
    truncated, garbage, short = tmp_path / "truncated.mp4", tmp_path / "garbage.mp4", tmp_path / "short.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage.write_bytes(b"\x00not a video at all" * 50)
    write_video(short, [np.full((24, 24, 3), 100, np.uint8)] * 3, fps=8, crf=0)
    extra = pd.DataFrame([{**manifest.iloc[0].to_dict(), "path": str(p), "sha256": p.name, "video_group": p.name}
                          for p in (truncated, garbage, short)])
    with_bad = pd.concat([manifest, extra], ignore_index=True)

    bad = check_clip_files(with_bad, min_frames=8, workers=1)
    reasons = {Path(b.path).name: b.reason for b in bad}
    assert set(reasons) == {"truncated.mp4", "garbage.mp4", "short.mp4"}
    assert "too short" in reasons["short.mp4"] and "not a video" in reasons["garbage.mp4"]
    with pytest.raises(DataValidationError) as raised:
        validate_manifest(with_bad, bad, schema=VIDEO_SCHEMA, report_path=tmp_path / "report.json", min_side=8,
                          expectations=False)
    assert all(name in str(raised.value) for name in reasons)
    kept, _ = validate_manifest(with_bad, bad, schema=VIDEO_SCHEMA, report_path=tmp_path / "report.json",
                                min_side=8, on_bad_file="exclude", expectations=False)
    assert len(kept) == len(manifest)

    # Skipping validation: decoding names the file and the fix instead of padding the clip.
    with pytest.raises(DataValidationError, match="short.mp4.*\n.*fix: validate"):
        decode_clip_cache(with_bad.iloc[[0, len(with_bad) - 1]], tmp_path / "cache", frames=8, size=24,
                          workers=1)


# --------------------------------------------------------------------------------------------------
# Published layouts


def _tiny_video(path: Path, frames: int = 4) -> None:
    """A distinct video per path (identical files would be one sha256 in two splits: leakage)."""
    rng = np.random.default_rng(list(path.name.encode()))
    write_video(path, list(rng.integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8)), fps=8, crf=0)


def _ucf_tree(root: Path) -> None:
    videos, lists = root / "UCF-101", root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 Archery\r\n3 HandstandPushups\r\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c02.avi 2\n"
        "HandstandPushups/v_HandStandPushups_g09_c01.avi 3\nArchery/v_Archery_g09_c01.avi 2\n")
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                                          "Archery/v_Archery_g01_c01.avi\n")
    for name in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g08_c02.avi",
                 "HandstandPushups/v_HandstandPushups_g09_c01.avi",  # spelled differently from its list
                 "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "Archery/v_Archery_g01_c01.avi",
                 "Archery/v_Archery_g20_c01.avi"):  # in no list: ignored
        _tiny_video(videos / name)
    (videos / "Archery/v_Archery_g09_c01.avi").write_bytes(b"RIFF broken")


def test_ucf101_layout_reads_labels_splits_and_actor_groups(tmp_path):
    _ucf_tree(tmp_path)
    manifest, bad = read_ucf101(tmp_path, split=1, workers=1)
    rows = {Path(p).name: row for p, row in zip(manifest["path"], manifest.to_dict("records"), strict=True)}
    assert set(rows) == {"v_ApplyEyeMakeup_g08_c01.avi", "v_Archery_g08_c02.avi", "v_HandstandPushups_g09_c01.avi",
                         "v_ApplyEyeMakeup_g01_c01.avi", "v_Archery_g01_c01.avi"}
    archery = rows["v_Archery_g08_c02.avi"]
    assert {k: archery[k] for k in ("label", "split", "class_name", "video_group", "group", "source")} == {
        "label": 1, "split": "train", "class_name": "Archery", "video_group": "ucf101/g08", "group": "all",
        "source": "ucf101"}
    assert rows["v_HandstandPushups_g09_c01.avi"]["label"] == 2
    assert rows["v_ApplyEyeMakeup_g01_c01.avi"]["split"] == "test"
    assert rows["v_ApplyEyeMakeup_g01_c01.avi"]["label"] == 0
    assert (manifest["frames"] == 4).all() and (manifest["width"] == 16).all() and (manifest["fps"] == 8).all()
    assert [Path(b.path).name for b in bad] == ["v_Archery_g09_c01.avi"]
    kept, _ = validate_manifest(manifest, bad, schema=VIDEO_SCHEMA, report_path=tmp_path / "r.json", min_side=8,
                                on_bad_file="exclude", expectations=False)
    assert len(kept) == 5


def test_ucf101_missing_videos_and_lists_are_named(tmp_path):
    _ucf_tree(tmp_path)
    (tmp_path / "UCF-101/Archery/v_Archery_g01_c01.avi").unlink()
    with pytest.raises(DataValidationError, match="1 video.*\n  Archery/v_Archery_g01_c01.avi\nfix: put"):
        read_ucf101(tmp_path, workers=1)
    shutil.rmtree(tmp_path / "ucfTrainTestlist")
    with pytest.raises(DataValidationError, match="ucfTrainTestlist"):
        read_ucf101(tmp_path, workers=1)


def _hmdb_tree(root: Path) -> None:
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    (lists / "cartwheel_test_split1.txt").write_text("Cartwheel_1.avi 1 \nCartwheel_2.avi 2 \nCartwheel_3.avi 0 \n")
    (lists / "brush_hair_test_split1.txt").write_text("Brushing_(hair)_1.avi 1\nBrushing_2.avi 2\n")
    (lists / "brush_hair_test_split2.txt").write_text("Brushing_(hair)_1.avi 2\nBrushing_2.avi 1\n")
    for name in ("cartwheel/Cartwheel_1.avi", "cartwheel/Cartwheel_2.avi", "brush_hair/Brushing_(hair)_1.avi",
                 "brush_hair/Brushing_2.avi"):
        _tiny_video(root / "hmdb51" / name)


def test_hmdb51_layout_reads_sorted_classes_and_official_splits(tmp_path):
    _hmdb_tree(tmp_path)
    manifest, bad = read_layout("hmdb51", tmp_path, split=1, workers=1)
    assert not bad
    table = {Path(p).name: (label, split, group) for p, label, split, group
             in zip(manifest["path"], manifest["label"], manifest["split"], manifest["video_group"], strict=True)}
    assert table == {"Brushing_(hair)_1.avi": (0, "train", "hmdb51/Brushing_(hair)_1"),
                     "Brushing_2.avi": (0, "test", "hmdb51/Brushing_2"),
                     "Cartwheel_1.avi": (1, "train", "hmdb51/Cartwheel_1"),
                     "Cartwheel_2.avi": (1, "test", "hmdb51/Cartwheel_2")}  # Cartwheel_3 (id 0) dropped
    assert set(manifest["class_name"]) == {"brush_hair", "cartwheel"}


def test_hmdb51_missing_videos_and_unknown_layouts_are_named(tmp_path):
    _hmdb_tree(tmp_path)
    (tmp_path / "hmdb51/cartwheel/Cartwheel_2.avi").unlink()
    with pytest.raises(DataValidationError, match="cartwheel/Cartwheel_2.avi"):
        read_hmdb51(tmp_path, workers=1)
    with pytest.raises(DataValidationError, match="split 3"):
        read_hmdb51(tmp_path, split=3, workers=1)
    with pytest.raises(ValueError, match="known layouts: \\['hmdb51', 'ucf101'\\]"):
        read_layout("kinetics", tmp_path)
