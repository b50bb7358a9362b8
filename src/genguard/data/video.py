"""Videos for every family: probe, check, sample and decode frames with PyAV (FFmpeg bundled in its wheel).

PyAV, not torchcodec: torchcodec needs the system's FFmpeg shared libraries, which a fresh machine lacks
(offline_data §4); PyAV's wheel carries its own FFmpeg.

* :func:`check_video_file` / :class:`VideoCheck`: a video is usable when FFmpeg opens it, it has a video
  stream, its first frame decodes, and it holds at least ``min_frames`` frames. ``VideoCheck`` plugs into
  :func:`genguard.data.files.check_files`, so a folder of videos is checked in parallel and cached by
  (path, size, mtime) exactly like images.
* Counting frames: the container header's count (``stream.frames``) is compared with the packets actually
  demuxed (cheap: no decoding). Equal: trusted. Header larger: the file is truncated (a faststart MP4
  cut short keeps its full index). Header missing (Matroska/WebM have none) or smaller: every frame is
  decoded and counted, so ``VideoInfo.frames`` is always the number of frames :func:`decode_frames` sees.
* :func:`sample_indices`: ``uniform`` takes the centre frame of N equal segments (spans the whole video);
  ``first_n`` takes frames 0..N-1, which is what DeepfakeBench's loader ends up doing (its stride is
  computed after the count is overwritten), so published Effort numbers are first-8-frame numbers.
* :func:`decode_frames` decodes forward from the start and stops after the last requested frame, keeping
  only the requested frames in memory. It does not seek: mapping timestamps to frame indices breaks on
  variable frame rates and edit lists, and uniform sampling reaches the end of the video anyway, so a
  seek would save at most one key-frame interval per sample.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from genguard.data.files import describe_content, options_cache_key
from genguard.data.manifest import BadFile, sha256_file

VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg",
                                            ".flv", ".wmv", ".ts"})
SAMPLING_MODES: tuple[str, ...] = ("uniform", "first_n")
# Bump when VideoCheck's verdicts change (new checks, different messages): cached results then miss.
VIDEO_CHECK_VERSION = 1
DEFAULT_MIN_FRAMES = 1


class VideoError(ValueError):
    """A video cannot be used; the message says why (the same text a ``BadFile`` would carry)."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int        # decodable frames (see the module docstring for how they are counted)
    fps: float         # average frame rate from the container, 0.0 when it records none
    width: int
    height: int
    sha256: str        # of the file's bytes: the video's identity for caches and leakage checks


# --------------------------------------------------------------------------------------------------
# Sampling


def sample_indices(n_frames: int, n: int, mode: str = "uniform") -> list[int]:
    """``n`` distinct frame indices of a video with ``n_frames`` frames, ascending.

    ``uniform``: the centre of each of ``n`` equal segments (100 frames, n=4 → 12, 37, 62, 87);
    ``first_n``: 0..n-1. A video with at most ``n`` frames gives all of them.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown frame sampling {mode!r}; use one of {list(SAMPLING_MODES)}")
    if n < 1:
        raise ValueError(f"the number of frames to sample must be >= 1, got {n}")
    if n_frames <= n:
        return list(range(max(n_frames, 0)))
    if mode == "first_n":
        return list(range(n))
    # Integer arithmetic: floor((2i + 1) * n_frames / 2n) is the centre of segment i, exact on every machine.
    return [((2 * i + 1) * n_frames) // (2 * n) for i in range(n)]


# --------------------------------------------------------------------------------------------------
# Checking one video


def _sniff_container(head: bytes) -> str | None:
    """The container a file claims to be by its magic bytes (it may still be truncated or corrupt)."""
    if head[4:8] == b"ftyp":
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head.startswith(b"FLV"):
        return "FLV"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "MPEG-PS"
    if len(head) > 188 and head[0] == head[188] == 0x47:  # transport stream: a sync byte every 188 bytes
        return "MPEG-TS"
    return None


def _open_failure(head: bytes, err: Exception) -> str:
    container = _sniff_container(head)
    message = str(err) or type(err).__name__
    if container is None:
        return f"not a video: FFmpeg cannot open it; content is {describe_content(head, 'video')}"
    hint = " (truncated download? an MP4 whose index, the 'moov' box, is at its end cannot be read " \
           "without it)" if container == "MP4/MOV" else " (truncated or corrupt)"
    return f"undecodable {container}: FFmpeg cannot open it: {message}{hint}"


def _count_packets_and_decode_first(container: Any, stream: Any) -> tuple[int, Any]:
    """(video packets in the file, first decoded frame or None), decoding only until one frame comes out."""
    packets, first = 0, None
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
            continue
        packets += 1
        if first is None:
            frames = packet.decode()
            first = frames[0] if frames else None
    if first is None and packets:
        # Decoders with a delay (frame threading, B-frames) only return frames when flushed.
        flushed = stream.codec_context.decode(None)
        first = flushed[0] if flushed else None
    return packets, first


def _decoded_count(path: str) -> int:
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def _unusable_path(path: Path) -> str | None:
    """Reasons found without opening the file: broken symlink, unreadable, empty, wrong suffix."""
    if path.is_symlink() and not path.exists():
        return (f"broken symlink to {os.readlink(path)} (content not fetched? `dvc pull` / "
                f"`git annex get`)")
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError as err:
        return f"unreadable: {err.strerror or err} ({type(err).__name__})"
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        return (f"unsupported file type {path.suffix or '(no suffix)'!r}: accepted video suffixes are "
                f"{', '.join(sorted(VIDEO_SUFFIXES))}; convert or remove it")
    return None


def check_video_file(path: str | Path, *, min_frames: int = DEFAULT_MIN_FRAMES,
                     decode_all: bool = False) -> VideoInfo | BadFile:
    """Open, count and hash ``path``; a ``BadFile`` with a precise reason when it cannot be used.

    ``decode_all``: decode every frame even when the header and the packets agree (slower; catches damage
    in the middle of a stream that FFmpeg reports as an error rather than concealing).
    """
    import av

    path = Path(path)
    name = str(path)
    reason = _unusable_path(path)
    if reason:
        return BadFile(name, reason)
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        return BadFile(name, f"unreadable: {err.strerror or err} ({type(err).__name__})")
    try:
        container = av.open(name)
    except (av.error.FFmpegError, OSError, EOFError) as err:
        return BadFile(name, _open_failure(head, err))
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            return BadFile(name, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        header = int(stream.frames or 0)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        try:
            packets, first = _count_packets_and_decode_first(container, stream)
        except (av.error.FFmpegError, OSError, EOFError) as err:
            return BadFile(name, f"undecodable: {type(err).__name__}: {err}")
        width = stream.codec_context.width or (first.width if first is not None else 0)
        height = stream.codec_context.height or (first.height if first is not None else 0)
    if packets == 0:
        return BadFile(name, "zero frames: the video stream holds no frames")
    if first is None:
        return BadFile(name, f"undecodable: none of its {packets} video packets decodes to a frame")
    if header > packets:
        return BadFile(name, f"truncated: the header lists {header} frames but the file holds only {packets} "
                             f"(an incomplete download or copy?)")
    frames = header
    if decode_all or header != packets:
        try:
            frames = _decoded_count(name)
        except (av.error.FFmpegError, OSError, EOFError) as err:
            return BadFile(name, f"undecodable: decoding failed: {type(err).__name__}: {err}")
    if frames < min_frames:
        plural = "s" if frames != 1 else ""
        return BadFile(name, f"too short: {frames} frame{plural} < min_frames {min_frames}")
    try:
        digest = sha256_file(path)
    except OSError as err:
        return BadFile(name, f"unreadable: {err.strerror or err} ({type(err).__name__})")
    return VideoInfo(frames=frames, fps=fps, width=int(width), height=int(height), sha256=digest)


def probe_video(path: str | Path) -> VideoInfo:
    """``VideoInfo`` of a usable video; raises ``VideoError`` with the reason otherwise."""
    result = check_video_file(path)
    if isinstance(result, BadFile):
        raise VideoError(str(result))
    return result


# Verdicts that depend on the environment, not on the bytes (see genguard.data.files).
_UNCACHED_REASONS = ("unreadable:", "broken symlink")


@dataclass(frozen=True)
class VideoCheck:
    """``check_video_file`` as a picklable checker for :func:`genguard.data.files.check_files`."""

    min_frames: int = DEFAULT_MIN_FRAMES
    decode_all: bool = False

    name: ClassVar[str] = "video"
    version: ClassVar[int] = VIDEO_CHECK_VERSION
    info_type: ClassVar[type] = VideoInfo

    def __call__(self, path: str | Path) -> VideoInfo | BadFile:
        return check_video_file(path, min_frames=self.min_frames, decode_all=self.decode_all)

    def cache_key(self) -> str:
        # FFmpeg upgrades change which damaged files open, so PyAV's version (it pins FFmpeg) is in the key.
        import av

        return options_cache_key(self, av=av.__version__)

    def cacheable(self, result: VideoInfo | BadFile) -> bool:
        return not (isinstance(result, BadFile) and result.reason.startswith(_UNCACHED_REASONS))

    def checking(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# Decoding


def decode_frames(path: str | Path, indices: Sequence[int]) -> list[np.ndarray]:
    """The frames at ``indices`` (0-based, in presentation order) as HxWx3 uint8 RGB arrays, in the
    order asked (repeats allowed). Raises ``VideoError`` when the video ends before an index."""
    import av

    wanted = {int(i) for i in indices}
    if not wanted:
        return []
    if min(wanted) < 0:
        raise ValueError(f"frame indices must be >= 0, got {sorted(wanted)[:5]}")
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    count = 0  # frames decoded so far
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: several times faster on long videos
            for frame in container.decode(stream):
                if count in wanted:
                    found[count] = frame.to_ndarray(format="rgb24")
                count += 1
                if count > last:
                    break
    except (av.error.FFmpegError, OSError, EOFError, IndexError) as err:
        # IndexError: no video stream. An error after the last wanted frame does not matter.
        if len(found) < len(wanted):
            raise VideoError(f"{path}: undecodable after {count} frames: "
                             f"{type(err).__name__}: {err}") from err
    missing = sorted(wanted - set(found))
    if missing:
        raise VideoError(f"{path}: frames {missing[:5]} requested but the video ends after {count} frames")
    return [found[int(i)] for i in indices]


def write_video(path: str | Path, frames: Sequence[np.ndarray], *, fps: int = 25, crf: int | None = None,
                container_options: dict[str, str] | None = None) -> Path:
    """Encode HxWx3 uint8 ``frames`` as H.264 (yuv420p) into ``path``; ``crf`` 0 is lossless.

    For fixtures, benchmarks and exported clips; written in place (callers that need atomicity write
    into a temporary folder). An empty ``frames`` writes a valid container with zero frames.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        if frames:
            stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if crf is not None:
            stream.options = {"crf": str(crf)}
        if not frames:
            stream.width = stream.height = 16
            container.start_encoding()
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return path
