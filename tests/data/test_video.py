"""Core video handling: frame sampling, decoding, and the per-file checker with its precise reasons."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import av
import numpy as np
import pytest

import genguard.data.video as video_module
from genguard.data.files import check_files
from genguard.data.manifest import BadFile, sha256_file
from genguard.data.video import (
    VideoCheck,
    VideoError,
    VideoInfo,
    check_video_file,
    decode_frames,
    probe_video,
    sample_indices,
    write_video,
)


def _encode(path: Path, n: int = 24, size: int = 32, *, fps: int = 24, options: dict | None = None) -> Path:
    """An H.264 video whose frame i is a flat grey of level 10*i (lossless, so a decoded frame names its index)."""
    frames = [np.full((size, size, 3), (10 * i) % 256, np.uint8) for i in range(n)]
    if n == 0:
        frames = []
    return write_video(path, frames, fps=fps, crf=0, container_options=options)


# --------------------------------------------------------------------------------------------------
# Sampling


def test_uniform_sampling_spans_the_whole_video():
    assert sample_indices(100, 4) == [12, 37, 62, 87]
    assert sample_indices(120, 8, "uniform") == [7, 22, 37, 52, 67, 82, 97, 112]
    # DeepfakeBench's effective behaviour, offered explicitly.
    assert sample_indices(100, 4, "first_n") == [0, 1, 2, 3]


def test_sampling_short_videos_and_invalid_arguments():
    assert sample_indices(3, 8) == [0, 1, 2]
    assert sample_indices(3, 8, "first_n") == [0, 1, 2]
    assert sample_indices(0, 8) == []
    for n_frames in (9, 17, 31, 1000):
        picked = sample_indices(n_frames, 8)
        assert len(set(picked)) == 8 and picked == sorted(picked) and 0 <= picked[0] and picked[-1] < n_frames
    with pytest.raises(ValueError, match="unknown frame sampling"):
        sample_indices(10, 2, "random")
    with pytest.raises(ValueError, match=">= 1"):
        sample_indices(10, 0)


# --------------------------------------------------------------------------------------------------
# Probing and decoding


def test_probe_video_counts_frames_and_hashes_the_file(tmp_path):
    path = _encode(tmp_path / "clip.mp4", n=24, size=32)
    info = probe_video(path)
    assert info == VideoInfo(frames=24, fps=24.0, width=32, height=32, sha256=sha256_file(path))


def test_decode_frames_returns_the_requested_frames_in_the_order_asked(tmp_path):
    path = _encode(tmp_path / "clip.mp4", n=24)
    frames = decode_frames(path, [20, 3, 20, 0])
    assert [f.shape for f in frames] == [(32, 32, 3)] * 4
    assert all(f.dtype == np.uint8 for f in frames)
    levels = [round(float(f.mean()) / 10) for f in frames]  # frame i was encoded at grey level 10*i
    assert levels == [20, 3, 20, 0]
    assert decode_frames(path, []) == []


def test_decode_frames_names_indices_past_the_end(tmp_path):
    path = _encode(tmp_path / "clip.mp4", n=24)
    with pytest.raises(VideoError, match=r"frames \[24\] requested but the video ends after 24 frames"):
        decode_frames(path, [5, 24])
    with pytest.raises(ValueError, match=">= 0"):
        decode_frames(path, [-1])


class _CountingContainer:
    """Wraps an opened container and counts the frames its decode() yields."""

    def __init__(self, container, counts: list) -> None:
        self.container, self.counts = container, counts

    def __enter__(self):
        self.container.__enter__()
        return self

    def __exit__(self, *exc):
        return self.container.__exit__(*exc)

    @property
    def streams(self):
        return self.container.streams

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.counts.append(frame)
            yield frame


def test_decode_frames_stops_after_the_last_requested_frame(tmp_path, monkeypatch):
    path = _encode(tmp_path / "clip.mp4", n=24)
    decoded, converted = [], []
    open_container, to_ndarray = av.open, av.VideoFrame.to_ndarray

    def counting_conversion(frame, *args, **kwargs):
        converted.append(frame)
        return to_ndarray(frame, *args, **kwargs)

    monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(open_container(*a, **k), decoded))
    monkeypatch.setattr(av.VideoFrame, "to_ndarray", counting_conversion)
    decode_frames(path, [2, 5])
    assert len(decoded) == 6      # frames 0..5 of 24: nothing after the last requested one
    assert len(converted) == 2    # and only the requested frames become arrays


# --------------------------------------------------------------------------------------------------
# The checker's verdicts


def _reason(path: Path, **kw) -> str:
    result = check_video_file(path, **kw)
    assert isinstance(result, BadFile), result
    assert result.path == str(path)
    return result.reason


def test_garbage_text_and_empty_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    text = tmp_path / "page.mp4"
    text.write_text("<html><body>login required</body></html>")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert _reason(garbage).startswith("not a video: FFmpeg cannot open it; content is unknown data")
    assert "an HTML page" in _reason(text)
    assert _reason(empty) == "empty file (0 bytes)"
    renamed = _encode(tmp_path / "clip.mp4", n=4).rename(tmp_path / "clip.xyz")
    assert _reason(renamed).startswith("unsupported file type '.xyz'")


def test_truncated_videos_are_named(tmp_path):
    # Index at the end (the default MP4): cut in half, FFmpeg cannot open it at all.
    whole = _encode(tmp_path / "whole.mp4", n=48)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert _reason(cut).startswith("undecodable MP4/MOV: FFmpeg cannot open it")
    # Index at the start (faststart): it opens, but holds fewer frames than its header lists.
    fast = _encode(tmp_path / "fast.mp4", n=48, options={"movflags": "faststart"})
    fast_cut = tmp_path / "fast_cut.mp4"
    fast_cut.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    assert _reason(fast_cut).startswith("truncated: the header lists 48 frames but the file holds only")


def test_zero_frame_and_streamless_videos_are_named(tmp_path):
    # A Matroska file cut just inside its first cluster (the frame data): a video stream, no frames.
    mkv = _encode(tmp_path / "clip.mkv", n=12).read_bytes()
    header_only = tmp_path / "header_only.mkv"
    header_only.write_bytes(mkv[: mkv.index(b"\x1f\x43\xb6\x75") + 12])
    assert _reason(header_only) == "zero frames: the video stream holds no frames"
    assert _reason(_encode(tmp_path / "nothing.mp4", n=0)).startswith("no video stream")


def test_frames_are_counted_when_the_container_has_no_count(tmp_path):
    path = _encode(tmp_path / "clip.mkv", n=30)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska records no frame count
    assert check_video_file(path).frames == 30
    assert check_video_file(_encode(tmp_path / "clip.mp4", n=30), decode_all=True).frames == 30


def test_too_short_for_min_frames(tmp_path):
    path = _encode(tmp_path / "short.mp4", n=5)
    assert _reason(path, min_frames=8) == "too short: 5 frames < min_frames 8"
    assert check_video_file(path, min_frames=5).frames == 5


# --------------------------------------------------------------------------------------------------
# VideoCheck in check_files: parallel and cached like images


def test_video_check_in_check_files_is_parallel_and_cached(tmp_path, monkeypatch):
    good = [_encode(tmp_path / f"v{i}.mp4", n=6 + i) for i in range(3)]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    paths = [*good, bad]
    for path in paths:  # older than the racy window, so results are cached
        old = path.stat().st_mtime - 60
        os.utime(path, (old, old))
    cache = tmp_path / "checks.sqlite"
    checker = VideoCheck(min_frames=2)
    assert pickle.loads(pickle.dumps(checker)) == checker
    assert checker.cache_key().startswith("video/v1(min_frames=2,decode_all=False,av=")

    first = check_files(paths, checker, cache=cache, workers=2, chunk_size=1, show_progress=False)
    assert [r.frames for r in first[:3]] == [6, 7, 8]
    assert isinstance(first[3], BadFile) and first[3].reason.startswith("not a video")

    def refuse(*args, **kwargs):
        raise AssertionError("decoded a cached video")

    monkeypatch.setattr(video_module, "check_video_file", refuse)
    again = check_files(paths, checker, cache=cache, workers=1, show_progress=False)
    assert again == first
    assert isinstance(again[0], VideoInfo) and isinstance(again[0].fps, float)
