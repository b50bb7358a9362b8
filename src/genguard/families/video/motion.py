"""The embedded video data: procedurally rendered moving shapes whose class is their motion.

Each clip shows one object (filled square, disc or plus sign) on a flat background moving in a straight
line at constant integer speed. The class is (direction, speed): with the defaults 4 directions x 2 speeds
= 8 classes, ``label = speed_index * len(directions) + direction_index``, so ``label % len(directions)`` is
the direction. The video MoE's router supervision (target = label mod number of experts) relies on exactly
this order: expert *i* becomes responsible for direction *i* at every speed.

What a single frame reveals (why the model has to use time). Shape, size, colours and the position across
the motion axis are drawn independently of the class. Along the motion axis the start is uniform over every
position that keeps the whole object inside the frame for all T frames, so a clip played backwards is a
clip of the opposite direction with the same probability: the unordered set of frames (and the middle
frame) has the same distribution for "right" and "left", and direction can only be read from frame order.
The inside-the-frame rule does make the *first* frame's position weakly informative (a fast object that
moves right must start in the left part), which no bounded, non-wrapping design avoids; the test suite
checks the order-free statements above.

Layout of a build (the :mod:`genguard.data.builds` contract, ``path_parts`` = :data:`MOTION_PATH_PARTS`)::

    <out_dir>/<split>/<class_name>/<index>.mp4    lossless H.264 (crf 0, yuv420p: chroma is subsampled)
    <out_dir>/manifest.parquet                     VIDEO_SCHEMA rows + direction, shape, fps
    <out_dir>/build_info.json                      cache_key, world, counts, seed, builder version
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genguard.data.builds import BUILD_INFO_FILE, MANIFEST_FILE, cached_build
from genguard.data.manifest import SPLITS, normalise_manifest, sha256_file
from genguard.data.video import write_video
from genguard.families.video.clips import VIDEO_SCHEMA
from genguard.io.atomic import atomic_dir, write_json_atomic
from genguard.progress import progress
from genguard.training import fingerprint

log = logging.getLogger(__name__)

# Bump when the rendering or the file layout changes: cached builds then miss.
BUILDER_VERSION = 1
MOTION_FPS = 8
MOTION_SOURCE = "genguard.motion"
MOTION_LICENCE = "generated (CC0)"
#: Path components of a clip below ``out_dir`` (split/class/file), for ``cached_build``.
MOTION_PATH_PARTS = 3
# (dx, dy) per frame for a unit speed; image rows grow downwards, so "down" is +y.
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
SHAPES: tuple[str, ...] = ("square", "disc", "plus")
_RENDER_CHUNK = 256  # clips rendered at once: bounds memory (256 x 8 x 32 x 32 x 3 float32 = 25 MB)


@dataclass(frozen=True)
class MotionWorld:
    """What the generator draws; see the module docstring for the class order."""

    frames: int = 8
    size: int = 32
    directions: tuple[str, ...] = ("right", "left", "down", "up")
    speeds: tuple[int, ...] = (1, 3)              # pixels per frame
    speed_names: tuple[str, ...] = ("slow", "fast")
    shapes: tuple[str, ...] = ("square", "disc", "plus")
    radius: tuple[int, int] = (3, 5)              # inclusive range of the object's half-size in pixels
    noise: float = 0.03                           # sigma of the additive Gaussian noise on [0, 1] pixels

    def __post_init__(self) -> None:
        problems = []
        if self.frames < 2:
            problems.append(f"frames must be >= 2 (motion needs two frames), got {self.frames}")
        if self.size < 4:
            problems.append(f"size must be >= 4 pixels, got {self.size}")
        unknown = [d for d in self.directions if d not in DIRECTION_VECTORS]
        if not self.directions or unknown or len(set(self.directions)) != len(self.directions):
            problems.append(f"directions must be distinct names from {list(DIRECTION_VECTORS)}, "
                            f"got {list(self.directions)}")
        if not self.speeds or any(int(s) != s or s < 1 for s in self.speeds) \
                or len(set(self.speeds)) != len(self.speeds):
            problems.append(f"speeds must be distinct integers >= 1 (pixels per frame), got {list(self.speeds)}")
        if len(self.speed_names) != len(self.speeds) or len(set(self.speed_names)) != len(self.speed_names):
            problems.append(f"speed_names must name each speed once: {len(self.speeds)} speeds "
                            f"{list(self.speeds)} but speed_names {list(self.speed_names)}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if not self.shapes or unknown or len(set(self.shapes)) != len(self.shapes):
            problems.append(f"shapes must be distinct names from {list(SHAPES)}, got {list(self.shapes)}")
        if len(self.radius) != 2 or not 1 <= self.radius[0] <= self.radius[1]:
            problems.append(f"radius must be (min, max) with 1 <= min <= max, got {self.radius}")
        if self.noise < 0:
            problems.append(f"noise must be >= 0, got {self.noise}")
        if not problems:
            extent = 2 * max(self.radius) + max(self.speeds) * (self.frames - 1)
            if extent >= self.size:
                problems.append(
                    f"the largest object (radius {max(self.radius)}) moving at the fastest speed "
                    f"({max(self.speeds)} px/frame) for {self.frames} frames spans {extent + 1} pixels, more "
                    f"than the {self.size}-pixel frame; need 2*radius_max + speed_max*(frames-1) < size: "
                    f"raise size or lower radius, speeds or frames")
        if problems:
            raise ValueError("invalid MotionWorld:\n  " + "\n  ".join(problems))

    @property
    def n_classes(self) -> int:
        return len(self.directions) * len(self.speeds)

    @property
    def class_names(self) -> list[str]:
        """``<direction>_<speed name>`` in label order (speed-major, so ``label % n_directions`` = direction)."""
        return [f"{direction}_{speed}" for speed in self.speed_names for direction in self.directions]


def world_from_params(params: dict[str, Any]) -> MotionWorld:
    """A ``MotionWorld`` from a parameters block (YAML lists become tuples); unknown keys are an error."""
    allowed = [f.name for f in fields(MotionWorld)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown motion world parameters {unknown}; allowed: {allowed}")
    return MotionWorld(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items()})


# --------------------------------------------------------------------------------------------------
# Rendering


def _object_masks(shape_index: np.ndarray, radius: np.ndarray, cx: np.ndarray, cy: np.ndarray, size: int,
                  shapes: tuple[str, ...]) -> np.ndarray:
    """(n, T, H, W) bool: where each clip's object covers each frame; ``cx``/``cy`` are (n, T) centres."""
    coords = np.arange(size)
    dx = coords[None, None, None, :] - cx[:, :, None, None]  # (n, T, 1, W)
    dy = coords[None, None, :, None] - cy[:, :, None, None]  # (n, T, H, 1)
    r = radius[:, None, None, None]
    adx, ady = np.abs(dx), np.abs(dy)
    arm = np.maximum(1, r // 3)  # half-width of the plus sign's arms
    drawn = {
        "square": (adx <= r) & (ady <= r),
        "disc": dx * dx + dy * dy <= r * (r + 1),  # ~ (r + 1/2)^2: a round disc that still spans 2r + 1 px
        "plus": ((adx <= r) & (ady <= arm)) | ((ady <= r) & (adx <= arm)),
    }
    masks = np.zeros(np.broadcast_shapes(adx.shape, ady.shape), dtype=bool)
    for index, name in enumerate(shapes):
        masks |= drawn[name] & (shape_index == index)[:, None, None, None]
    return masks


def render_motion_clips(world: MotionWorld, n: int, seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``n`` clips as uint8 (N, T, H, W, 3) and one metadata dict per clip, deterministic from ``seed``.

    Labels are balanced (round-robin over the classes, then shuffled). Metadata: ``label``, ``class_name``,
    ``direction``, ``speed`` (its name), ``shape``, ``radius`` and the start centre ``x0``, ``y0``.
    """
    if n < 0:
        raise ValueError(f"the number of clips must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    T, S, n_dir = world.frames, world.size, len(world.directions)
    labels = rng.permutation(np.arange(n) % world.n_classes)
    direction_index, speed_index = labels % n_dir, labels // n_dir
    shape_index = rng.integers(0, len(world.shapes), n)
    radius = rng.integers(world.radius[0], world.radius[1] + 1, n)
    foreground = rng.uniform(0.4, 1.0, (n, 3)).astype(np.float32)
    background = rng.uniform(0.0, 0.3, (n, 3)).astype(np.float32)

    vectors = np.array([DIRECTION_VECTORS[d] for d in world.directions], dtype=np.int64)[direction_index]
    step = vectors * np.asarray(world.speeds, dtype=np.int64)[speed_index][:, None]  # (n, 2) px per frame
    travel = step * (T - 1)
    # Centres c with r <= c + t*step <= S-1-r for every t: the whole object stays inside every frame.
    low = radius[:, None] + np.maximum(0, -travel)
    high = S - 1 - radius[:, None] - np.maximum(0, travel)
    start = rng.integers(low, high + 1)  # (n, 2): x0, y0, uniform over the whole valid range

    clips = np.empty((n, T, S, S, 3), dtype=np.uint8)
    t = np.arange(T)
    for begin in range(0, n, _RENDER_CHUNK):
        part = slice(begin, min(n, begin + _RENDER_CHUNK))
        cx = start[part, 0, None] + step[part, 0, None] * t
        cy = start[part, 1, None] + step[part, 1, None] * t
        mask = _object_masks(shape_index[part], radius[part], cx, cy, S, world.shapes)[..., None]
        frames = np.where(mask, foreground[part, None, None, None, :], background[part, None, None, None, :])
        if world.noise > 0:
            frames = frames + world.noise * rng.standard_normal(frames.shape, dtype=np.float32)
        clips[part] = np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)

    names = world.class_names
    metadata = [{"label": int(label), "class_name": names[label], "direction": world.directions[d],
                 "speed": world.speed_names[s], "shape": world.shapes[k], "radius": int(r),
                 "x0": int(x0), "y0": int(y0)}
                for label, d, s, k, r, (x0, y0) in zip(labels, direction_index, speed_index, shape_index, radius,
                                                       start, strict=True)]
    return clips, metadata


# --------------------------------------------------------------------------------------------------
# The embedded set on disk


def split_seed(seed: int, split: str) -> int:
    """The render seed of one split: different per split, stable across runs and machines."""
    return int(np.random.SeedSequence([seed, zlib.crc32(split.encode())]).generate_state(1)[0])


def _check_counts(counts: dict[str, int]) -> None:
    unknown = [s for s in counts if s not in SPLITS]
    bad = {s: c for s, c in counts.items() if not isinstance(c, (int, np.integer)) or c < 0}
    if unknown or bad:
        raise ValueError(f"counts must map splits {list(SPLITS)} to clip counts >= 0; unknown splits {unknown}, "
                         f"bad counts {bad}")


def build_motion_set(out_dir: str | Path, world: MotionWorld, counts: dict[str, int], seed: int) -> pd.DataFrame:
    """Render ``counts[split]`` clips per split into ``out_dir`` as MP4s with a manifest (``VIDEO_SCHEMA``).

    Built once per content key (builder version, world, counts, seed) into a staging folder that replaces
    ``out_dir`` only when complete; a rerun with the same key returns the cached manifest without rendering.
    """
    out_dir = Path(out_dir)
    _check_counts(counts)
    if world.size % 2:
        raise ValueError(f"size must be even to write H.264 yuv420p videos, got {world.size}")
    key = fingerprint(BUILDER_VERSION, asdict(world), sorted(counts.items()), seed)
    cached = cached_build(out_dir, key, VIDEO_SCHEMA, path_parts=MOTION_PATH_PARTS)
    if cached is not None:
        log.info("motion set: cached build in %s (%d clips)", out_dir, len(cached))
        return cached
    records = []
    total = sum(counts.values())
    with atomic_dir(out_dir) as staging, progress(desc="writing motion clips", total=total, unit="clip") as bar:
        for split in sorted(counts):
            clips, metadata = render_motion_clips(world, counts[split], split_seed(seed, split))
            for index, (clip, meta) in enumerate(zip(clips, metadata, strict=True)):
                relative = Path(split, meta["class_name"], f"{index:05d}.mp4")
                write_video(staging / relative, list(clip), fps=MOTION_FPS, crf=0)
                records.append({
                    "path": str(out_dir / relative), "label": meta["label"], "split": split,
                    "sha256": sha256_file(staging / relative), "source": MOTION_SOURCE, "licence": MOTION_LICENCE,
                    "width": world.size, "height": world.size, "frames": world.frames,
                    "class_name": meta["class_name"], "group": meta["speed"], "video_group": f"{split}/{index:05d}",
                    "fps": float(MOTION_FPS), "direction": meta["direction"], "shape": meta["shape"]})
                bar.update(1)
        frame = pd.DataFrame.from_records(records) if records else VIDEO_SCHEMA.empty()
        manifest = normalise_manifest(frame, VIDEO_SCHEMA)
        manifest.to_parquet(staging / MANIFEST_FILE, index=False)
        write_json_atomic(staging / BUILD_INFO_FILE, {
            "cache_key": key, "world": asdict(world), "counts": dict(counts), "seed": seed,
            "builder_version": BUILDER_VERSION, "class_names": world.class_names, "fps": MOTION_FPS})
    log.info("motion set: built %d clips in %s", len(manifest), out_dir)
    return manifest
