"""Videos → aligned face crops → the FACE manifest, cached so a rerun decodes nothing.

A *video table* (one row per video, :data:`VIDEO_TABLE_COLUMNS`; ``genguard.families.face.layouts``
reads published datasets into one) becomes the FACE manifest (one row per face crop) in three steps:

1. every video is checked (``genguard.data.video.VideoCheck`` through ``check_files``: parallel, cached by
   path/size/mtime), which also gives its frame count and sha256;
2. :func:`extract_faces` samples ``FramePolicy.frames`` frames (uniformly over the whole video by default),
   finds the largest face in each with dlib's HOG detector, reuses the nearest sampled frame's box where
   the detector misses (a turned head, motion blur), aligns and crops it, and writes PNGs;
3. the crops become rows with the video's columns (:func:`frames_manifest`).

Rows with a ``frames`` list (DeepfakeBench's preprocessed data: frames already cropped and aligned) skip
decoding and detection: ``FramePolicy.frames`` frames are sampled from the list and image-checked.

Alignment (``alignment="arcface"``, the DeepfakeBench/Effort protocol): five points (eye centres, nose
tip, mouth corners) are mapped by a least-squares similarity onto the ArcFace 112×112 template (the
96×112 template shifted 8 px right), zoomed out by ``scale`` (1.3) about the crop centre, at ``crop_size``.
The points come from dlib's 68 landmarks, 0-based: eye centres = mean of 36-41 and of 42-47, nose tip 30,
mouth corners 48 and 54 (``keypoints="centres"``). DeepfakeBench calls ``shape.part(37/44/30/49/55)``;
dlib's ``part()`` is 0-based, so it takes an upper-lid point of each eye and the lip points next to the
mouth corners, not the template's eye centres and corners; ``keypoints="deepfakebench"`` reproduces that
choice (crops move by a pixel or two). ``alignment="box"`` instead crops a square of ``scale`` × the
detector box's longer side around its centre (no landmarks).

Crops are warped at (at least) the source resolution and then box-filtered down to ``crop_size``: a
direct warp from a 300 px face to 64 px would alias, and aliasing is exactly the kind of high-frequency
pattern a forgery detector may learn.

Cache: ``<out_dir>/<video sha256>-<policy key>/`` holds ``<frame index:06d>.png`` and ``index.json``
(written atomically, last: its presence means the folder is complete). The policy key hashes every
``FramePolicy`` field, ``FRAMES_VERSION`` and dlib's version, so changing the preprocessing never reuses
stale crops, and a renamed or moved video reuses its crops (the key is its content hash). A video with
no face is cached too (its index says so). ``out_dir`` is meant to be a DVC output; declare it
``persist: true`` in the stage, otherwise DVC deletes it before every rerun and the cache is lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from genguard.data.files import (
    DEFAULT_MIN_SIDE,
    START_METHOD,
    ImageCheck,
    ImageInfo,
    available_cpus,
    check_files,
)
from genguard.data.manifest import BadFile, DataValidationError, normalise_manifest
from genguard.data.video import (
    DEFAULT_MIN_FRAMES,
    SAMPLING_MODES,
    VideoCheck,
    VideoError,
    VideoInfo,
    check_video_file,
    decode_frames,
    sample_indices,
)
from genguard.families.face import faces
from genguard.families.face.schema import FACE_SCHEMA
from genguard.io.atomic import write_bytes_atomic, write_json_atomic
from genguard.progress import progress

log = logging.getLogger(__name__)

# Bump when the crops for an unchanged policy change (alignment maths, PNG settings): caches then miss.
FRAMES_VERSION = 1
INDEX_FILE = "index.json"

# What a video table holds, one row per video (plus ``frames``: a list of frame image paths for data
# that is already extracted, None otherwise).
VIDEO_TABLE_COLUMNS: tuple[str, ...] = ("path", "label", "split", "video_id", "identity", "forgery",
                                        "dataset", "source", "licence")
FRAMES_COLUMN = "frames"

ALIGNMENTS: tuple[str, ...] = ("arcface", "box")
# The ArcFace template for 96x112 crops (left eye, right eye, nose tip, left and right mouth corner, in
# image coordinates); +8 px in x centres it in a 112x112 square.
ARCFACE_96X112 = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                           [33.5493, 92.3655], [62.7299, 92.2041]])
ARCFACE_112 = ARCFACE_96X112 + np.array([8.0, 0.0])
# dlib 68-point indices (0-based) of the five template points; a tuple is averaged.
KEYPOINTS: dict[str, tuple[tuple[int, ...], ...]] = {
    "centres": (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,)),
    "deepfakebench": ((37,), (44,), (30,), (49,), (55,)),
}


# --------------------------------------------------------------------------------------------------
# The policy


@dataclass(frozen=True)
class FramePolicy:
    """How a video becomes face crops; every field is part of the cache key."""

    frames: int = 8                 # frames per video (Effort: 8 train / 8-32 test; DeepfakeBench: 32)
    sampling: str = "uniform"       # uniform over the whole video | first_n (DeepfakeBench's in effect)
    crop_size: int = 64             # output side in px: 64 for the embedded tiny ViT, 224 for CLIP ViT-L/14
    alignment: str = "arcface"      # arcface (5-point similarity) | box (detector box x scale)
    keypoints: str = "centres"      # centres | deepfakebench: which landmarks stand for the 5 template points
    scale: float = 1.3              # margin: the face fills 1/scale of the crop
    upsample: int = 1               # dlib HOG upsampling: 1 finds faces down to ~40 px, 2 down to ~20 px
    detect_max_side: int = 0        # detect on a copy downscaled to this longer side (0: full size); speeds
                                    # up 1080p sources, landmarks still come from the full frame

    version: ClassVar[int] = FRAMES_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.frames < 1:
            problems.append(f"frames must be >= 1, got {self.frames}")
        if self.sampling not in SAMPLING_MODES:
            problems.append(f"sampling must be one of {list(SAMPLING_MODES)}, got {self.sampling!r}")
        if self.crop_size < 8:
            problems.append(f"crop_size must be >= 8 px, got {self.crop_size}")
        if self.alignment not in ALIGNMENTS:
            problems.append(f"alignment must be one of {list(ALIGNMENTS)}, got {self.alignment!r}")
        if self.keypoints not in KEYPOINTS:
            problems.append(f"keypoints must be one of {list(KEYPOINTS)}, got {self.keypoints!r}")
        if not self.scale > 0:
            problems.append(f"scale must be > 0, got {self.scale}")
        if self.upsample < 0 or self.detect_max_side < 0:
            problems.append("upsample and detect_max_side must be >= 0")
        if problems:
            raise ValueError("invalid FramePolicy: " + "; ".join(problems))

    def key(self) -> str:
        """16 hex digits identifying the crops this policy makes (with the code and dlib versions)."""
        import dlib

        payload = {"policy": dataclasses.asdict(self), "version": FRAMES_VERSION, "dlib": dlib.__version__}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def crop_folder(out_dir: str | Path, video_sha256: str, policy: FramePolicy) -> Path:
    """Where the crops of the video with this content hash, under this policy, are cached."""
    return Path(out_dir) / f"{video_sha256}-{policy.key()}"


# --------------------------------------------------------------------------------------------------
# Geometry


def five_points(landmarks: np.ndarray, keypoints: str = "centres") -> np.ndarray:
    """The five template points (5 x 2, x/y) from 68 dlib landmarks."""
    return np.array([landmarks[list(group)].mean(axis=0) for group in KEYPOINTS[keypoints]], dtype=np.float64)


def template_points(crop_size: int, scale: float) -> np.ndarray:
    """The ArcFace-112 points at ``crop_size``, zoomed out by ``scale`` about the crop centre."""
    unit = ARCFACE_112 / 112.0
    return (0.5 + (unit - 0.5) / scale) * crop_size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation + uniform scale + translation (no reflection) with ``dst ≈ A @ src + t``.

    The parameters (a, b, tx, ty) of A = [[a, -b], [b, a]] enter linearly, so ordinary least squares
    gives the same optimum as Umeyama's closed form.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    return np.array([[a, -b], [b, a]]), np.array([tx, ty])


def warp_crop(image: np.ndarray, matrix: np.ndarray, offset: np.ndarray, size: int) -> np.ndarray:
    """``size``² crop where pixel ``matrix @ p + offset`` shows source pixel ``p`` (pixel-index coordinates).

    PIL's affine transform works in continuous coordinates (pixel centres at +0.5) and wants the
    crop→source map, hence the half-pixel terms. A shrinking map is applied at an integer multiple of
    ``size`` first and box-filtered down, so the crop is anti-aliased.
    """
    from PIL import Image

    zoom = math.sqrt(abs(np.linalg.det(matrix)))           # crop pixels per source pixel
    factor = max(1, math.ceil(1.0 / zoom - 1e-6))
    continuous_offset = offset + 0.5 - matrix @ np.array([0.5, 0.5])
    forward, shift = matrix * factor, continuous_offset * factor
    inverse = np.linalg.inv(forward)
    start = -inverse @ shift
    data = (inverse[0, 0], inverse[0, 1], start[0], inverse[1, 0], inverse[1, 1], start[1])
    crop = Image.fromarray(np.ascontiguousarray(image)).transform(
        (size * factor, size * factor), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    if factor > 1:
        crop = crop.resize((size, size), Image.Resampling.BOX)
    return np.asarray(crop)


def align_face(image: np.ndarray, box: tuple[int, int, int, int], landmarks: np.ndarray | None,
               policy: FramePolicy) -> np.ndarray:
    """The ``crop_size``² face crop of ``image`` under ``policy`` (landmarks needed for arcface only)."""
    if policy.alignment == "arcface":
        matrix, offset = similarity_transform(five_points(landmarks, policy.keypoints),
                                              template_points(policy.crop_size, policy.scale))
    else:
        left, top, right, bottom = box  # dlib rectangles are inclusive: pixels left..right
        side = max(right - left + 1, bottom - top + 1) * policy.scale
        centre = np.array([(left + right) / 2.0, (top + bottom) / 2.0])
        zoom = policy.crop_size / side
        # The box centre lands on the crop centre ((crop_size - 1) / 2 in pixel-index coordinates).
        matrix, offset = np.eye(2) * zoom, (policy.crop_size - 1) / 2.0 - centre * zoom
    return warp_crop(image, matrix, offset, policy.crop_size)


# --------------------------------------------------------------------------------------------------
# Faces in sampled frames


def _largest_face_box(frame: np.ndarray, policy: FramePolicy) -> tuple[int, int, int, int] | None:
    scale = 1.0
    image = frame
    longer = max(frame.shape[:2])
    if policy.detect_max_side and longer > policy.detect_max_side:
        from PIL import Image

        scale = longer / policy.detect_max_side
        size = (round(frame.shape[1] / scale), round(frame.shape[0] / scale))
        image = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
    boxes = faces.detect_faces(image, policy.upsample)
    if not boxes:
        return None
    return tuple(round(v * scale) for v in boxes[0])


def track_boxes(boxes: Sequence[tuple[int, int, int, int] | None],
                positions: Sequence[int]) -> list[tuple[int, int, int, int] | None]:
    """Fill each missing box with the box of the nearest position that has one (earlier on ties)."""
    found = [(p, b) for p, b in zip(positions, boxes, strict=True) if b is not None]
    if not found:
        return list(boxes)
    return [b if b is not None else min(found, key=lambda item: abs(item[0] - p))[1]
            for p, b in zip(positions, boxes, strict=True)]


@dataclass(frozen=True)
class FaceCrop:
    frame_index: int
    path: str
    sha256: str
    width: int
    height: int
    detected: bool  # False: the box was taken from the nearest sampled frame with a detection


@dataclass(frozen=True)
class VideoCrops:
    video: str
    folder: str
    frames_in_video: int
    crops: tuple[FaceCrop, ...]
    cached: bool  # True when read from the cache (nothing decoded)


def _no_face_reason(indices: Sequence[int], policy: FramePolicy) -> str:
    shown = ", ".join(str(i) for i in indices[:8]) + (", ..." if len(indices) > 8 else "")
    return (f"no face found in any of the {len(indices)} sampled frames (frames {shown}; dlib HOG detector, "
            f"upsample={policy.upsample}); try data.frames.upsample=2 for small faces, or exclude the video")


def _read_cached(folder: Path, video: str, policy: FramePolicy) -> VideoCrops | BadFile | None:
    """The cached result in ``folder``, or None when it is missing, incomplete or unreadable."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
        if index.get("key") != folder.name:
            return None
        if index.get("no_face"):
            return BadFile(video, _no_face_reason(index["sampled"], policy))
        crops = tuple(FaceCrop(c["frame_index"], str(folder / c["file"]), c["sha256"], c["width"],
                               c["height"], c["detected"]) for c in index["crops"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not crops or not all(Path(c.path).is_file() for c in crops):
        return None
    return VideoCrops(video, str(folder), int(index["frames_in_video"]), crops, cached=True)


def _png_bytes(crop: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # zlib level 3: measured 3x faster than PIL's default 6 on 224-px crops, files 8% larger.
    Image.fromarray(crop).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _crop_frames(frames: list[np.ndarray], indices: list[int], policy: FramePolicy
                 ) -> list[tuple[np.ndarray, bool]] | None:
    """(crop, detected) per frame, or None when no frame has a face."""
    detected = [_largest_face_box(frame, policy) for frame in frames]
    boxes = track_boxes(detected, indices)
    if all(box is None for box in boxes):
        return None
    crops = []
    for frame, box, hit in zip(frames, boxes, detected, strict=True):
        points = faces.landmarks(frame, box) if policy.alignment == "arcface" else None
        crops.append((align_face(frame, box, points, policy), hit is not None))
    return crops


def extract_faces(video_path: str | Path, policy: FramePolicy, out_dir: str | Path, *,
                  info: VideoInfo | None = None,
                  min_frames: int = DEFAULT_MIN_FRAMES) -> VideoCrops | BadFile:
    """Face crops of ``policy.frames`` sampled frames of one video, from the cache when it has them.

    ``info``: the video's ``VideoInfo`` when already checked (``frames_manifest`` passes it); otherwise
    the video is checked here. Returns a ``BadFile`` for an unusable video or one without any face.
    """
    video = str(Path(video_path))
    if info is None:
        checked = check_video_file(video_path, min_frames=min_frames)
        if isinstance(checked, BadFile):
            return checked
        info = checked
    folder = crop_folder(out_dir, info.sha256, policy)
    cached = _read_cached(folder, video, policy)
    if cached is not None:
        return cached
    indices = sample_indices(info.frames, policy.frames, policy.sampling)
    try:
        frames = decode_frames(video_path, indices)
    except VideoError as err:
        return BadFile(video, f"undecodable: {str(err).removeprefix(f'{video_path}: ')}")
    crops = _crop_frames(frames, indices, policy)
    del frames  # full frames can be large (1080p); only the crops are kept from here on
    index: dict[str, Any] = {"key": folder.name, "video_sha256": info.sha256,
                             "policy": dataclasses.asdict(policy), "frames_in_video": info.frames,
                             "sampled": indices, "no_face": crops is None, "crops": []}
    if crops is None:
        write_json_atomic(folder / INDEX_FILE, index)
        return BadFile(video, _no_face_reason(indices, policy))
    written = []
    for frame_index, (crop, detected) in zip(indices, crops, strict=True):
        payload = _png_bytes(crop)
        name = f"{frame_index:06d}.png"
        write_bytes_atomic(folder / name, payload)
        written.append(FaceCrop(frame_index, str(folder / name), hashlib.sha256(payload).hexdigest(),
                                crop.shape[1], crop.shape[0], detected))
    index["crops"] = [{"frame_index": c.frame_index, "file": Path(c.path).name, "sha256": c.sha256,
                       "width": c.width, "height": c.height, "detected": c.detected} for c in written]
    write_json_atomic(folder / INDEX_FILE, index)  # last: its presence marks the folder complete
    return VideoCrops(video, str(folder), info.frames, tuple(written), cached=False)


def _extract_task(task: tuple[str, VideoInfo, FramePolicy, str]) -> VideoCrops | BadFile:
    path, info, policy, out_dir = task
    return extract_faces(path, policy, out_dir, info=info)


def extract_many(videos: Sequence[tuple[str, VideoInfo]], policy: FramePolicy, out_dir: str | Path, *,
                 workers: int | None = None, show_progress: bool = True) -> list[VideoCrops | BadFile]:
    """``extract_faces`` for checked videos, in input order: cache hits here, the rest over processes.

    Workers are forked (as in ``genguard.data.files``): each decodes and runs dlib on whole videos, so a
    task is one video (seconds of work; pickling its result is negligible).
    """
    import multiprocessing
    import sys

    workers = available_cpus() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[VideoCrops | BadFile | None] = [
        _read_cached(crop_folder(out_dir, info.sha256, policy), path, policy) for path, info in videos]
    todo = [i for i, result in enumerate(results) if result is None]
    tasks = [(videos[i][0], videos[i][1], policy, str(out_dir)) for i in todo]
    with progress(desc="extracting faces", total=len(todo), unit="video",
                  enabled=bool(todo) and show_progress) as bar:
        if workers == 1 or len(tasks) <= 1:
            outputs = map(_extract_task, tasks)
            pool = None
        else:
            context = multiprocessing.get_context(START_METHOD if sys.platform == "linux" else None)
            pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
            outputs = pool.map(_extract_task, tasks)
        try:
            for i, output in zip(todo, outputs, strict=True):
                results[i] = output
                bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    log.info("face crops: %d videos, %d from cache, %d extracted", len(videos), len(videos) - len(todo),
             len(todo))
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Video table → FACE manifest


def _frame_number(path: str, position: int) -> int:
    """Frame index of an extracted frame file: the number in its stem (DeepfakeBench's 000.png), else
    its position."""
    stem = Path(path).stem
    match = re.fullmatch(r"\D*?(\d+)", stem)
    return int(match.group(1)) if match else position


def _check_table(videos: pd.DataFrame) -> None:
    missing = [c for c in VIDEO_TABLE_COLUMNS if c not in videos.columns]
    if missing:
        raise DataValidationError(f"video table lacks columns {missing}; expected "
                                  f"{list(VIDEO_TABLE_COLUMNS)} (one row per video; "
                                  f"genguard.families.face.layouts.read_videos makes one)")
    duplicated = videos["video_id"][videos["video_id"].duplicated()].unique().tolist()
    if duplicated:
        raise DataValidationError(f"video table lists video ids more than once: {duplicated[:10]}")


def _crop_rows(video_rows: pd.DataFrame, policy: FramePolicy, out_dir: str | Path, workers: int | None,
               check_cache: str | Path | None, show_progress: bool, min_frames: int
               ) -> tuple[list[dict], list[BadFile]]:
    paths = video_rows["path"].astype(str).tolist()
    checked = check_files(paths, VideoCheck(min_frames=min_frames), cache=check_cache, workers=workers,
                          desc="checking videos", show_progress=show_progress)
    bad = [c for c in checked if isinstance(c, BadFile)]
    good = [(row, info) for row, info in zip(video_rows.to_dict("records"), checked, strict=True)
            if not isinstance(info, BadFile)]
    # Identical files are cropped once (same cache folder); two rows with one content stay visible to
    # the leakage and duplicate checks through their equal crop paths and hashes.
    unique = list({info.sha256: (str(row["path"]), info) for row, info in good}.values())
    extracted = dict(zip([info.sha256 for _, info in unique],
                         extract_many(unique, policy, out_dir, workers=workers, show_progress=show_progress),
                         strict=True))
    rows = []
    for row, info in good:
        result = extracted[info.sha256]
        if isinstance(result, BadFile):
            bad.append(BadFile(str(row["path"]), result.reason))
            continue
        for crop in result.crops:
            rows.append({**row, "path": crop.path, "sha256": crop.sha256, "width": crop.width,
                         "height": crop.height, "frame_index": crop.frame_index,
                         "video_path": str(row["path"])})
    return rows, bad


def _extracted_rows(video_rows: pd.DataFrame, policy: FramePolicy, workers: int | None,
                    check_cache: str | Path | None, show_progress: bool, min_side: int
                    ) -> tuple[list[dict], list[BadFile]]:
    """Rows for videos whose frames are already extracted: sample from the list, check the images."""
    bad: list[BadFile] = []
    picked: list[tuple[dict, str, int]] = []
    for row in video_rows.to_dict("records"):
        frames = sorted(map(str, row[FRAMES_COLUMN]), key=lambda p: (_frame_number(p, 0), p))
        if not frames:
            bad.append(BadFile(str(row["path"]), "no frames listed for this video"))
            continue
        for position in sample_indices(len(frames), policy.frames, policy.sampling):
            picked.append((row, frames[position], _frame_number(frames[position], position)))
    checked = check_files([p for _, p, _ in picked], ImageCheck(min_side=min_side), cache=check_cache,
                          workers=workers, desc="checking extracted frames", show_progress=show_progress)
    rows = []
    for (row, path, number), info in zip(picked, checked, strict=True):
        if isinstance(info, BadFile):
            bad.append(info)
            continue
        assert isinstance(info, ImageInfo)
        video_columns = {k: v for k, v in row.items() if k != FRAMES_COLUMN}
        rows.append({**video_columns, "path": path, "sha256": info.sha256, "width": info.width,
                     "height": info.height, "frame_index": number, "video_path": str(row["path"])})
    return rows, bad


def frames_manifest(videos: pd.DataFrame, policy: FramePolicy, out_dir: str | Path,
                    workers: int | None = None, *, check_cache: str | Path | None = None,
                    show_progress: bool = True, min_frames: int = DEFAULT_MIN_FRAMES,
                    min_side: int = DEFAULT_MIN_SIDE) -> tuple[pd.DataFrame, list[BadFile]]:
    """(FACE manifest, bad files) from a video table: one row per face crop.

    ``out_dir``: crop cache (see the module docstring); ``workers``: processes (None: every CPU);
    ``check_cache``: SQLite file for the video/image checks (None: check every file); ``min_frames``:
    fewer decodable frames make a video a ``BadFile`` ("too short"); ``min_side``: the smallest
    acceptable side of already-extracted frames. Rows carry the video's columns, ``frame_index``,
    the crop's ``path``/``sha256``/``width``/``height`` and ``video_path``. Bad files: undecodable,
    empty, truncated or zero-frame videos, videos without a face in any sampled frame, and unusable
    extracted frames; ``genguard.data.validation`` then fails on them or excludes them.
    """
    _check_table(videos)
    # A frame list read back from parquet is a numpy array.
    extracted = (videos[FRAMES_COLUMN].map(lambda v: isinstance(v, (list, tuple, np.ndarray)))
                 if FRAMES_COLUMN in videos.columns else pd.Series(False, index=videos.index))
    to_decode = videos[~extracted].drop(columns=[FRAMES_COLUMN], errors="ignore")
    rows, bad = _crop_rows(to_decode, policy, out_dir, workers, check_cache, show_progress, min_frames) \
        if len(to_decode) else ([], [])
    if extracted.any():
        more_rows, more_bad = _extracted_rows(videos[extracted], policy, workers, check_cache, show_progress,
                                              min_side)
        rows += more_rows
        bad += more_bad
    frame = pd.DataFrame(rows) if rows else FACE_SCHEMA.empty().assign(video_path=pd.Series(dtype="object"))
    manifest = normalise_manifest(frame, FACE_SCHEMA)
    bad.sort(key=lambda b: b.path)
    log.info("face manifest: %d crops of %d videos, %d bad files", len(manifest),
             manifest["video_id"].nunique(), len(bad))
    return manifest, bad
