"""Video clips for training and attacks: the manifest schema, checking the files, one decoded tensor per set.

* :data:`VIDEO_SCHEMA`: one manifest row per video file. Columns (in order): ``path, label, split, sha256,
  source, licence`` (the core file columns), ``width, height, frames`` (int64, from the container) and
  ``class_name, group, video_group`` (str). ``group`` is what evaluation groups results by (the embedded
  set: the speed, slow/fast; UCF-101/HMDB-51: "all"); ``video_group`` must never cross splits (UCF-101:
  the actor group gXX; the embedded set: one per clip), nor may a file hash. ``fps`` (float) is kept as
  an extra column: the schema's dtypes are str and int64 only.
* :func:`check_clip_files`: the ``BadFile``s (missing, undecodable, truncated, too short) for
  ``genguard.data.validation.validate_manifest``, through the core's parallel, cached file checks.
* :func:`decode_clip_cache`: decodes ``frames`` frames per video (uniform sampling by default), centre-crops
  each frame to a square on its short side and resizes it to ``size`` x ``size``, and stores the whole set
  as ONE uint8 tensor (N, 3, T, H, W) in ``<out_dir>/clips.pt``, keyed by the decoding options and the
  manifest's file hashes, labels, splits and groups. Toy and real-data runs then train and attack from
  memory; a rerun loads the file instead of decoding (UCF-101 at 16 x 112 x 112: 0.6 MB per clip, 8 GB for
  all 13,320).
* :class:`ClipSet`: the ``torch.utils.data.Dataset`` over such a tensor, float clips in [0, 1].
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from genguard.data.datasets import DATASET_KINDS
from genguard.data.files import START_METHOD, CheckCache, available_cpus, check_files
from genguard.data.manifest import FILE_COLUMNS, BadFile, DataValidationError, ManifestSchema
from genguard.data.video import SAMPLING_MODES, VideoCheck, VideoError, decode_frames, sample_indices
from genguard.io.atomic import atomic_path
from genguard.progress import progress
from genguard.training import fingerprint

log = logging.getLogger(__name__)

VIDEO_SCHEMA = ManifestSchema(
    name="video_clips",
    columns=tuple({**FILE_COLUMNS, "width": "int64", "height": "int64", "frames": "int64", "class_name": "str",
                   "group": "str", "video_group": "str"}.items()),
    group_column="group",
    label_values=None,  # any class index (8 toy classes, 101 for UCF-101, 51 for HMDB-51)
    leakage_groups=("sha256", "video_group"),
    sort_by=("split", "label", "path"),
)
CLIP_CACHE_FILE = "clips.pt"
# Bump when decoding or resizing changes: cached tensors then miss.
DECODER_VERSION = 1
_POOL_MIN_ROWS = 8  # below this a process pool costs more than it saves


# --------------------------------------------------------------------------------------------------
# The Dataset


class ClipSet(Dataset):
    """Clips (N, 3, T, H, W) with their labels; items are ``{"clips": float32 (3, T, H, W) in [0, 1],
    "label": int64 scalar}``.

    ``clips`` may be uint8 (decoded videos, scaled by 1/255 per item) or floating point in [0, 1]
    (adversarial clips from an attack, returned as float32).
    """

    def __init__(self, clips: torch.Tensor, labels: torch.Tensor | Sequence[int],
                 groups: Sequence[str] | None = None) -> None:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if clips.dim() != 5 or clips.shape[1] != 3:
            raise ValueError(f"clips must be (N, 3, T, H, W), got {tuple(clips.shape)}")
        if clips.dtype != torch.uint8 and not clips.is_floating_point():
            raise ValueError(f"clips must be uint8 or floating point in [0, 1], got {clips.dtype}")
        if labels.dim() != 1 or len(labels) != len(clips):
            raise ValueError(f"{len(clips)} clips but labels of shape {tuple(labels.shape)}")
        if groups is not None and len(groups) != len(clips):
            raise ValueError(f"{len(clips)} clips but {len(groups)} groups")
        self.clips, self.labels = clips, labels
        self.groups = list(groups) if groups is not None else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip = self.clips[index]
        clip = clip.float().div_(255.0) if clip.dtype == torch.uint8 else clip.float()
        return {"clips": clip, "label": self.labels[index]}

    kind = "video_clips"

    def to_spec(self, folder: Path) -> dict[str, Any]:
        """What DeepSpeed ranks rebuild the set from (``genguard.data.datasets.dataset_from_spec``)."""
        path = folder / "clips.safetensors"
        save_file({"clips": self.clips.contiguous(), "labels": self.labels.contiguous()}, str(path))
        return {"kind": self.kind, "file": str(path), "groups": self.groups}


@DATASET_KINDS.register(ClipSet.kind)
def _clip_set_from_spec(spec: dict[str, Any]) -> ClipSet:
    tensors = load_file(spec["file"])
    return ClipSet(tensors["clips"], tensors["labels"], spec.get("groups"))


@dataclass(frozen=True)
class ClipTensors:
    """A decoded set: uint8 ``clips`` (N, 3, T, H, W) in manifest row order and each row's label, path,
    split and evaluation group."""

    clips: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    splits: list[str]
    groups: list[str]
    cache_key: str

    def split(self, name: str) -> ClipSet:
        """The rows of split ``name`` as a ``ClipSet`` (a view-free copy of just those clips)."""
        rows = [i for i, split in enumerate(self.splits) if split == name]
        if not rows:
            raise DataValidationError(f"no clips in split {name!r}; the decoded set holds splits "
                                      f"{sorted(set(self.splits))}")
        index = torch.tensor(rows, dtype=torch.int64)
        return ClipSet(self.clips[index], self.labels[index], [self.groups[i] for i in rows])


# --------------------------------------------------------------------------------------------------
# Checking the files


def check_clip_files(manifest: pd.DataFrame, *, min_frames: int, workers: int | None = None,
                     cache: str | Path | CheckCache | None = None, show_progress: bool = True) -> list[BadFile]:
    """The manifest's unusable videos: missing, unreadable, undecodable, truncated, or shorter than
    ``min_frames`` (pass the clip length, so decoding never runs out of frames).

    ``cache``: the core's SQLite check cache (a rerun on unchanged files decodes nothing).
    """
    results = check_files(list(manifest["path"]), VideoCheck(min_frames=min_frames), cache=cache, workers=workers,
                          desc="checking videos", show_progress=show_progress)
    return [result for result in results if isinstance(result, BadFile)]


# --------------------------------------------------------------------------------------------------
# Decoding into one tensor


def _square_resized(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to a square on the short side, then ``size`` x ``size`` (PIL bilinear, which widens its
    filter when shrinking: antialiased)."""
    from PIL import Image

    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.asarray(Image.fromarray(np.ascontiguousarray(square)).resize((size, size), Image.BILINEAR))


def _decode_task(task: tuple[str, int, int, str, int]) -> np.ndarray | str:
    """One video → uint8 (3, T, size, size), or the reason it failed (picklable, raised by the caller)."""
    path, n_frames, frames, sampling, size = task
    indices = sample_indices(n_frames, frames, sampling)
    if len(indices) < frames:
        return (f"holds {n_frames} frames, fewer than the {frames} a clip needs (the manifest's frames column; "
                f"validate with check_clip_files(min_frames={frames}) first)")
    try:
        decoded = decode_frames(path, indices)
    except (VideoError, OSError, ValueError) as err:
        return f"cannot decode: {err}"
    stacked = np.stack([_square_resized(frame, size) for frame in decoded])  # (T, H, W, 3)
    return np.ascontiguousarray(stacked.transpose(3, 0, 1, 2))


def _decoded(tasks: list[tuple[str, int, int, str, int]], workers: int) -> Iterator[np.ndarray | str]:
    """Results of ``_decode_task`` in order: in this process, or over forked workers (one video a task)."""
    if workers == 1 or len(tasks) < _POOL_MIN_ROWS:
        yield from map(_decode_task, tasks)
        return
    context = multiprocessing.get_context(START_METHOD if sys.platform == "linux" else None)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
    try:
        # Chunks amortise the per-task round trip; a tiny clip decodes in a few milliseconds.
        yield from pool.map(_decode_task, tasks, chunksize=max(1, min(32, len(tasks) // (4 * workers))))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def clip_cache_key(manifest: pd.DataFrame, *, frames: int, size: int, sampling: str) -> str:
    """What a decoded set depends on: options, decoders, and the files (by hash), labels, splits, groups."""
    import av
    import PIL

    return fingerprint(DECODER_VERSION, {"frames": frames, "size": size, "sampling": sampling},
                       {"av": av.__version__, "pillow": PIL.__version__}, list(manifest["sha256"]),
                       [int(x) for x in manifest["label"]], list(manifest["split"]), list(manifest["group"]))


def _load_cached(path: Path, key: str, manifest: pd.DataFrame) -> ClipTensors | None:
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
        log.warning("ignoring an unreadable clip cache %s (%s: %s); decoding again", path, type(err).__name__, err)
        return None
    if not isinstance(stored, dict) or stored.get("cache_key") != key:
        return None
    # The key covers the content; paths come from the manifest as given now (the folder may have moved).
    return ClipTensors(clips=stored["clips"], labels=stored["labels"], paths=[str(p) for p in manifest["path"]],
                       splits=list(stored["splits"]), groups=list(stored["groups"]), cache_key=key)


def decode_clip_cache(manifest: pd.DataFrame, out_dir: str | Path, *, frames: int, size: int,
                      sampling: str = "uniform", workers: int | None = None,
                      show_progress: bool = True) -> ClipTensors:
    """Every manifest row decoded to ``frames`` x ``size`` x ``size``, cached in ``<out_dir>/clips.pt``.

    Rows keep the manifest's order. Videos must have been validated (``check_clip_files`` with
    ``min_frames=frames``); a video that still fails is named in a ``DataValidationError``.
    ``workers``: decoding processes (None: the CPUs available; 1: this process).
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"unknown frame sampling {sampling!r}; use one of {list(SAMPLING_MODES)}")
    if frames < 1 or size < 1:
        raise ValueError(f"frames and size must be >= 1, got frames={frames}, size={size}")
    missing = [c for c in ("path", "label", "split", "sha256", "frames", "group") if c not in manifest.columns]
    if missing:
        raise DataValidationError(f"the manifest lacks columns {missing} needed to decode clips; it must follow "
                                  f"VIDEO_SCHEMA {list(VIDEO_SCHEMA.column_names)}")
    workers = available_cpus() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cache_path = Path(out_dir) / CLIP_CACHE_FILE
    key = clip_cache_key(manifest, frames=frames, size=size, sampling=sampling)
    cached = _load_cached(cache_path, key, manifest)
    if cached is not None:
        log.info("decoded clips: cached %s (%d clips)", cache_path, len(cached.labels))
        return cached

    paths = [str(p) for p in manifest["path"]]
    tasks = [(path, int(n), frames, sampling, size) for path, n in zip(paths, manifest["frames"], strict=True)]
    clips = torch.empty((len(tasks), 3, frames, size, size), dtype=torch.uint8)
    failures: list[BadFile] = []
    with progress(desc="decoding clips", total=len(tasks), unit="clip", enabled=show_progress) as bar:
        for row, result in enumerate(_decoded(tasks, workers)):
            if isinstance(result, str):
                failures.append(BadFile(paths[row], result))
            else:
                clips[row] = torch.from_numpy(result)
            bar.update(1)
    if failures:
        shown = "\n  ".join(str(f) for f in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise DataValidationError(
            f"{len(failures)} video(s) could not be decoded into {frames}-frame clips:\n  {shown}{more}\n"
            f"fix: validate the manifest first (check_clip_files(manifest, min_frames={frames}) and "
            f"validate_manifest, with on_bad_file=exclude to drop them), or replace these files")
    decoded = ClipTensors(clips=clips, labels=torch.tensor([int(x) for x in manifest["label"]], dtype=torch.int64),
                          paths=paths, splits=[str(s) for s in manifest["split"]],
                          groups=[str(g) for g in manifest["group"]], cache_key=key)
    payload: dict[str, Any] = {"cache_key": key, "clips": decoded.clips, "labels": decoded.labels,
                               "splits": decoded.splits, "groups": decoded.groups,
                               "options": {"frames": frames, "size": size, "sampling": sampling}}
    with atomic_path(cache_path) as tmp:
        torch.save(payload, tmp)
    log.info("decoded clips: %d clips (%d x %d x %d) into %s", len(tasks), frames, size, size, cache_path)
    return decoded
