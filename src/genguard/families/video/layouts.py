"""Read the published action-recognition datasets as they are on disk into a ``VIDEO_SCHEMA`` manifest.

Layouts (``read_layout(kind, root)``)::

    ucf101  videos  <root>/UCF-101/<ClassName>/v_<ClassName>_gXX_cYY.avi  (or <root>/<ClassName>/...)
            lists   <root>/ucfTrainTestlist/classInd.txt        "1 ApplyEyeMakeup"
                    <root>/ucfTrainTestlist/trainlist0<k>.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
                    <root>/ucfTrainTestlist/testlist0<k>.txt    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
    hmdb51  videos  <root>/hmdb51/<class>/<name>.avi                   (or <root>/<class>/...)
            lists   <root>/testTrainMulti_7030_splits/<class>_test_split<k>.txt   "<name>.avi 1"
                    (1 = train, 2 = test, 0 = not in this split: dropped)

Decisions:

* Only the official splits are used (``split`` 1-3; there is no official val split: none is made here, so a
  held-out val set has to come from the pipeline). Videos on disk that the split's lists do not name are
  ignored (HMDB-51's id 0 rows included).
* ``label``: UCF-101 classInd index - 1 (a train line's own label is checked against it); HMDB-51 the
  class's index in sorted class order (the class names come from the split files, one per class).
* ``video_group`` (never crosses splits, checked by validation): UCF-101's actor group ``ucf101/gXX``; the
  official splits hold out whole groups, so clips of one actor/scene never sit in train and test.
  HMDB-51 publishes no actor or source-video ids, so each clip is its own group (``hmdb51/<file stem>``);
  its 70/30 splits were made by the authors to keep clips of one source video together, which cannot be
  re-checked from the files. ``group`` (what evaluation groups by) is "all".
* A listed video that is missing fails the read in ONE ``DataValidationError`` naming up to 20 of them
  and where the videos must be; a missing list folder names the path looked for. A video that exists but
  cannot be used (undecodable, truncated, shorter than ``min_frames``) comes back as a ``BadFile`` for
  ``genguard.data.validation.validate_manifest`` to fail on or exclude; it is not in the manifest.
* UCF-101's lists spell some file names differently from the files (HandstandPushups vs
  v_HandStandPushups_...): a listed path that does not exist exactly is matched case-insensitively.
* ``width``/``height``/``frames``/``fps``/``sha256`` come from checking every file (the core's parallel,
  SQLite-cached ``check_files``), ``source`` is the dataset name, ``licence`` its terms of use.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from genguard.data.files import CheckCache, check_files
from genguard.data.manifest import BadFile, DataValidationError, normalise_manifest
from genguard.data.video import VideoCheck, VideoInfo
from genguard.families.video.clips import VIDEO_SCHEMA

log = logging.getLogger(__name__)

UCF101_ANNOTATIONS = "ucfTrainTestlist"
UCF101_VIDEO_FOLDERS: tuple[str, ...] = ("UCF-101", "UCF101")
UCF101_LICENCE = "UCF-101 research use (see dataset terms)"
HMDB51_ANNOTATIONS = "testTrainMulti_7030_splits"
HMDB51_VIDEO_FOLDERS: tuple[str, ...] = ("hmdb51", "hmdb51_org")
HMDB51_LICENCE = "HMDB-51 research use (see dataset terms)"
HMDB51_SPLIT_IDS: dict[str, str] = {"1": "train", "2": "test"}  # "0": not part of this split
OFFICIAL_SPLITS: tuple[int, ...] = (1, 2, 3)
EVALUATION_GROUP = "all"
MESSAGE_LIMIT = 20

_UCF_GROUP = re.compile(r"_g(\d+)_c\d+$", re.IGNORECASE)
_HMDB_SPLIT_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<split>\d+)\.txt$")


@dataclass(frozen=True)
class _Listed:
    path: Path
    label: int
    split: str
    class_name: str
    video_group: str


# --------------------------------------------------------------------------------------------------
# Shared steps


def _check_split_number(split: int) -> None:
    if split not in OFFICIAL_SPLITS:
        raise ValueError(f"split must be one of the official splits {list(OFFICIAL_SPLITS)}, got {split!r}")


def _existing_root(root: str | Path, dataset: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataValidationError(f"{dataset} root {root} is not a folder; set the root (tlga.data.root) to "
                                  f"the folder that holds the {dataset} videos and split lists")
    return root


def _annotation_dir(root: Path, annotations: str | Path | None, default: str, dataset: str, holds: str) -> Path:
    folder = Path(annotations).expanduser() if annotations is not None else root / default
    if not folder.is_dir():
        raise DataValidationError(f"{dataset} split lists not found: expected the folder {folder} holding {holds}; "
                                  f"unpack the official split archive there, or pass annotations=<folder>")
    return folder


def _video_root(root: Path, candidates: tuple[str, ...]) -> Path:
    """``<root>/<candidate>`` when the videos sit in the archive's own folder, else ``root`` itself."""
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    return root


def _read_lines(path: Path) -> list[list[str]]:
    """Whitespace-split non-empty lines (the lists come with CRLF endings and trailing blanks)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DataValidationError(f"cannot read the split list {path}: {err}") from err
    return [line.split() for line in text.splitlines() if line.strip()]


class _FileIndex:
    """Exact lookups first; a case-insensitive fallback for lists that spell names differently from files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lower: dict[str, Path] | None = None

    def find(self, relative: str) -> Path | None:
        exact = self.folder / relative
        if exact.is_file():
            return exact
        if self._lower is None:  # built once, and only when some name does not match exactly
            self._lower = {}
            for directory, _, files in os.walk(self.folder):
                for name in files:
                    path = Path(directory, name)
                    self._lower.setdefault(path.relative_to(self.folder).as_posix().lower(), path)
        return self._lower.get(relative.replace("\\", "/").lower())


def _raise_missing(missing: list[str], dataset: str, video_root: Path, expected: str) -> None:
    shown = "\n  ".join(missing[:MESSAGE_LIMIT])
    more = f"\n  ... and {len(missing) - MESSAGE_LIMIT} more" if len(missing) > MESSAGE_LIMIT else ""
    raise DataValidationError(
        f"{len(missing)} video(s) named in the {dataset} split lists are missing under {video_root}:\n  "
        f"{shown}{more}\nfix: put the videos at {expected} (unpack the full archive; `dvc pull` if the folder is "
        f"DVC-tracked), or point the root (tlga.data.root) at the folder that holds them")


def _manifest(listed: list[_Listed], *, dataset: str, licence: str, min_frames: int, workers: int | None,
              cache: str | Path | CheckCache | None, show_progress: bool) -> tuple[pd.DataFrame, list[BadFile]]:
    """Check every listed video; usable ones become manifest rows, the others ``BadFile``s."""
    results = check_files([item.path for item in listed], VideoCheck(min_frames=min_frames), cache=cache,
                          workers=workers, desc=f"checking {dataset} videos", show_progress=show_progress)
    rows, bad_files = [], []
    for item, result in zip(listed, results, strict=True):
        if isinstance(result, BadFile):
            bad_files.append(result)
            continue
        info: VideoInfo = result
        rows.append({"path": str(item.path), "label": item.label, "split": item.split, "sha256": info.sha256,
                     "source": dataset, "licence": licence, "width": info.width, "height": info.height,
                     "frames": info.frames, "class_name": item.class_name, "group": EVALUATION_GROUP,
                     "video_group": item.video_group, "fps": float(info.fps)})
    manifest = normalise_manifest(pd.DataFrame(rows) if rows else VIDEO_SCHEMA.empty().assign(fps=0.0),
                                  VIDEO_SCHEMA)
    bad_files.sort(key=lambda b: b.path)
    log.info("read %d %s videos (%d bad files); per split: %s", len(manifest), dataset, len(bad_files),
             manifest["split"].value_counts().to_dict())
    return manifest, bad_files


# --------------------------------------------------------------------------------------------------
# UCF-101


def _ucf_classes(folder: Path) -> dict[str, int]:
    """classInd.txt: class name → label (its 1-based index - 1)."""
    path = folder / "classInd.txt"
    if not path.is_file():
        raise DataValidationError(f"UCF-101 class list not found: expected {path} (lines like '1 ApplyEyeMakeup'); "
                                  f"it ships in the official ucfTrainTestlist archive")
    classes: dict[str, int] = {}
    for fields in _read_lines(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise DataValidationError(f"{path}: malformed line {' '.join(fields)!r}; expected '<index> <ClassName>'")
        classes[fields[1]] = int(fields[0]) - 1
    return classes


def _ucf_group(relative: str) -> str:
    # The actor/scene group gXX; a file without one (renamed by hand) is its own group.
    stem = Path(relative).stem
    match = _UCF_GROUP.search(stem)
    return f"ucf101/g{match.group(1)}" if match else f"ucf101/{stem}"


def read_ucf101(root: str | Path, *, split: int = 1, annotations: str | Path | None = None, min_frames: int = 1,
                workers: int | None = None, cache: str | Path | CheckCache | None = None,
                show_progress: bool = True) -> tuple[pd.DataFrame, list[BadFile]]:
    """UCF-101 official split ``split`` as (manifest of usable videos, bad files); see the module docstring.

    ``annotations``: the ucfTrainTestlist folder when it is not ``<root>/ucfTrainTestlist``;
    ``min_frames``: fewer decodable frames make a video a ``BadFile`` (pass the clip length);
    ``cache``: SQLite file for the core's file-check cache.
    """
    _check_split_number(split)
    root = _existing_root(root, "UCF-101")
    folder = _annotation_dir(root, annotations, UCF101_ANNOTATIONS, "UCF-101",
                             f"classInd.txt, trainlist0{split}.txt and testlist0{split}.txt")
    classes = _ucf_classes(folder)
    video_root = _video_root(root, UCF101_VIDEO_FOLDERS)
    files = _FileIndex(video_root)
    listed: list[_Listed] = []
    missing: list[str] = []
    problems: list[str] = []
    for split_name, list_name in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        list_path = folder / list_name
        if not list_path.is_file():
            raise DataValidationError(f"UCF-101 split list not found: expected {list_path}; it ships in the "
                                      f"official ucfTrainTestlist archive")
        for fields in _read_lines(list_path):
            relative = fields[0].replace("\\", "/")
            class_name = relative.split("/")[0]
            if class_name not in classes:
                problems.append(f"{list_path.name}: {relative}: class folder {class_name!r} is not in classInd.txt")
                continue
            label = classes[class_name]
            if len(fields) > 1 and fields[1].isdigit() and int(fields[1]) - 1 != label:
                problems.append(f"{list_path.name}: {relative}: label {fields[1]} but classInd.txt gives "
                                f"{class_name} index {label + 1}")
                continue
            path = files.find(relative)
            if path is None:
                missing.append(relative)
                continue
            listed.append(_Listed(path, label, split_name, class_name, _ucf_group(relative)))
    if problems:
        raise DataValidationError(f"UCF-101 split lists in {folder} disagree with classInd.txt:\n  "
                                  + "\n  ".join(problems[:MESSAGE_LIMIT])
                                  + "\nfix: use the classInd.txt and split lists of one official archive")
    if missing:
        _raise_missing(missing, "UCF-101", video_root,
                       f"{root}/UCF-101/<ClassName>/v_<ClassName>_gXX_cYY.avi (or {root}/<ClassName>/...)")
    return _manifest(listed, dataset="ucf101", licence=UCF101_LICENCE, min_frames=min_frames, workers=workers,
                     cache=cache, show_progress=show_progress)


# --------------------------------------------------------------------------------------------------
# HMDB-51


def read_hmdb51(root: str | Path, *, split: int = 1, annotations: str | Path | None = None, min_frames: int = 1,
                workers: int | None = None, cache: str | Path | CheckCache | None = None,
                show_progress: bool = True) -> tuple[pd.DataFrame, list[BadFile]]:
    """HMDB-51 official split ``split`` as (manifest of usable videos, bad files); see the module docstring.

    ``annotations``: the testTrainMulti_7030_splits folder when it is not under ``root``; the other
    options as in :func:`read_ucf101`.
    """
    _check_split_number(split)
    root = _existing_root(root, "HMDB-51")
    folder = _annotation_dir(root, annotations, HMDB51_ANNOTATIONS, "HMDB-51",
                             f"<class>_test_split{split}.txt for every class")
    split_files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = _HMDB_SPLIT_FILE.match(path.name)
        if match and int(match.group("split")) == split:
            split_files[match.group("name")] = path
    if not split_files:
        raise DataValidationError(f"no HMDB-51 split {split} lists in {folder}: expected files named "
                                  f"<class>_test_split{split}.txt (e.g. brush_hair_test_split{split}.txt)")
    class_names = sorted(split_files)
    video_root = _video_root(root, HMDB51_VIDEO_FOLDERS)
    files = _FileIndex(video_root)
    listed: list[_Listed] = []
    missing: list[str] = []
    problems: list[str] = []
    for label, class_name in enumerate(class_names):
        for fields in _read_lines(split_files[class_name]):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                problems.append(f"{split_files[class_name].name}: malformed line {' '.join(fields)!r}")
                continue
            if fields[1] == "0":  # not part of this split
                continue
            relative = f"{class_name}/{fields[0]}"
            path = files.find(relative)
            if path is None:
                missing.append(relative)
                continue
            # No actor or source-video ids are published: every clip is its own leakage group.
            listed.append(_Listed(path, label, HMDB51_SPLIT_IDS[fields[1]], class_name,
                                  f"hmdb51/{Path(fields[0]).stem}"))
    if problems:
        raise DataValidationError(f"malformed HMDB-51 split lists in {folder}:\n  "
                                  + "\n  ".join(problems[:MESSAGE_LIMIT])
                                  + "\nfix: lines must read '<video>.avi <0|1|2>'; restore the official files")
    if missing:
        _raise_missing(missing, "HMDB-51", video_root, f"{root}/hmdb51/<class>/<name>.avi (or {root}/<class>/...)")
    return _manifest(listed, dataset="hmdb51", licence=HMDB51_LICENCE, min_frames=min_frames, workers=workers,
                     cache=cache, show_progress=show_progress)


# --------------------------------------------------------------------------------------------------
# Dispatch

READERS: dict[str, Callable[..., tuple[pd.DataFrame, list[BadFile]]]] = {
    "ucf101": read_ucf101, "hmdb51": read_hmdb51}


def read_layout(kind: str, root: str | Path, **options: Any) -> tuple[pd.DataFrame, list[BadFile]]:
    """Read ``root`` as the published layout ``kind`` (``ucf101`` or ``hmdb51``) with the reader's options."""
    reader = READERS.get(kind)
    if reader is None:
        raise ValueError(f"unknown video layout {kind!r}; known layouts: {sorted(READERS)}")
    return reader(root, **options)
