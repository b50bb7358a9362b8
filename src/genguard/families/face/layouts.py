"""Read published face-forgery datasets as they are on disk into a *video table* (no conversion scripts).

The table has one row per video with ``genguard.families.face.frames.VIDEO_TABLE_COLUMNS`` (path, label,
split, video_id, identity, forgery, dataset, source, licence); ``frames.frames_manifest`` turns it into
the FACE manifest (one row per face crop). Reading lists files and split lists only: decoding, and the
bad-video verdicts that need it, happen in ``frames_manifest`` (cached). Layouts (``detect_layout``
returns the name, ``data.layout=`` names it explicitly)::

    faceforensics  FaceForensics++: <root>/original_sequences/youtube/<comp>/videos/000.mp4 (real) and
                   <root>/manipulated_sequences/<Method>/<comp>/videos/000_003.mp4 (fake), <comp> = c23
                   (default), c40 or raw; the official split lists train.json, val.json, test.json (lists
                   of [id, id] pairs) in <root>/splits/, <root>/, or ``split_dir``.
    celebdf        Celeb-DF v1/v2: <root>/{Celeb-real,YouTube-real,Celeb-synthesis}/[videos/]*.mp4 and
                   <root>/List_of_testing_videos.txt.
    dfdc           DFDC: <root>/[<part>/]metadata.json next to the part's videos (the Kaggle
                   dfdc_train_part_N folders); a test part is a folder with labels.csv next to (or in a
                   videos/ folder below) its videos.
    dfdcp          DFDC preview: <root>/dataset.json and the videos at the relative paths it lists.
    deepfakebench  DeepfakeBench's preprocessed data: <root>/dataset_json/<Name>.json and the frame
                   images it lists (already cropped and aligned: nothing is decoded).

Decisions (the published formats leave them open):

* Ids are namespaced by dataset: ``video_id`` = ``<dataset>/<forgery>/<video name>`` (FF++'s 000_003
  exists once per method), ``identity`` = ``<dataset>:<person>``.
* Identity. FF++: a real video's id; a fake's *target* id (the first number of <target>_<source>: the
  video whose face was replaced). Celeb-DF: the ``idN`` prefix (a fake's first one, its target);
  YouTube-real videos have no identity label, each is its own. DFDC has no identity labels: a fake's
  ``original`` video stands for its person, a real video for itself (two real videos of one actor are
  not grouped). DFDC preview: ``target_id`` when an entry records one, else the video itself.
  DeepfakeBench JSON: the FF++/DFD/Celeb-DF rules on its video names, else the video itself.
* Splits. FF++: both ids of a pair, and every video made from them, take the pair's split; a video whose
  ids are in no list is a ``BadFile``. Celeb-DF: listed videos are test, all others train (no val is
  published). In ``List_of_testing_videos.txt`` the label column is 1 for REAL and 0 for fake (checked:
  a line whose number contradicts its folder is an error). DFDC: ``metadata.json``'s ``split`` (always
  train in the public parts), ``labels.csv`` folders are test (label 1 = fake). DFDC preview: the
  ``set`` field. DeepfakeBench: its split keys; it copies videos into several splits (Celeb-DF and
  DFDC preview val = test, DFDC val = train, DFD in all three), so a video listed in several splits
  takes test, else train, else val.
* No video and no identity crosses splits: published splits are kept, and with ``overlap="drop"``
  (default) a video whose identity (or video id) also occurs in a higher-priority split (test > val >
  train) is dropped from its own, with a warning that counts them (the Celeb-DF test list shares
  identities with the rest of the dataset). ``overlap="keep"`` keeps them for
  ``genguard.data.validation`` to report.
* A listed video that is missing, a video that no list labels, and a file that is not a video are
  ``BadFile``s (never dropped silently); a missing split list is a ``DataValidationError`` naming the
  file looked for and the fix.
* DeepfakeBench: labels whose name contains "real" (FF-real, CelebDFv2_real, DFDCP_Real, ...) are 0,
  the rest 1, as in its ``label_dict``; frame paths may use backslashes and a leading ``./datasets/``
  (how its JSONs are written), and are resolved against ``frames_root`` (default ``<root>``); the
  malformed ``val`` entry its DFDC rearrange writes (one video record instead of a mapping) is skipped.
* ``source`` is the path relative to the root's parent; ``licence`` names the dataset's terms of use
  (all four are research-only, non-commercial), "unknown" for other DeepfakeBench datasets.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from genguard.data.files import scan_folder
from genguard.data.manifest import SPLITS, BadFile, DataValidationError
from genguard.data.video import VIDEO_SUFFIXES
from genguard.families.face.frames import FRAMES_COLUMN, VIDEO_TABLE_COLUMNS
from genguard.families.face.schema import REAL

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("faceforensics", "celebdf", "dfdc", "dfdcp", "deepfakebench")
OVERLAP_CHOICES: tuple[str, ...] = ("drop", "keep")

FF_DATASET = "FF++"
FF_METHODS: tuple[str, ...] = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
FF_COMPRESSIONS: tuple[str, ...] = ("c23", "c40", "raw")
FF_SPLIT_FILES: dict[str, str] = {"train": "train.json", "val": "val.json", "test": "test.json"}
FF_SPLITS_URL = "https://github.com/ondyari/FaceForensics/tree/master/dataset/splits"

CELEBDF_FOLDERS: dict[str, int] = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
CELEBDF_FORGERY = "Celeb-synthesis"
CELEBDF_TEST_LIST = "List_of_testing_videos.txt"
CELEBDF_LIST_REAL = 1  # the label column of List_of_testing_videos.txt: 1 = real, 0 = fake

DFDC_METADATA, DFDC_TEST_LABELS, DFDCP_INDEX = "metadata.json", "labels.csv", "dataset.json"
DFDC_FORGERY = "DFDC-fake"
DEEPFAKEBENCH_JSON_DIR = "dataset_json"

LICENCES: dict[str, str] = {
    FF_DATASET: "FaceForensics++ terms of use (research, non-commercial)",
    "Celeb-DF": "Celeb-DF terms of use (research, non-commercial)",
    "DFDC": "DFDC dataset licence agreement (research, non-commercial)",
    "DFDCP": "DFDC preview dataset licence agreement (research, non-commercial)",
}
# DeepfakeBench dataset keys and label names → our dataset and forgery names, so the same videos read
# from a published layout or from DeepfakeBench's JSON get the same ids.
DEEPFAKEBENCH_DATASETS: dict[str, str] = {
    "FaceForensics++": FF_DATASET, "FF-DF": FF_DATASET, "FF-F2F": FF_DATASET, "FF-FS": FF_DATASET,
    "FF-NT": FF_DATASET, "FaceShifter": FF_DATASET, "DeepFakeDetection": "DFD",
}
DEEPFAKEBENCH_FORGERIES: dict[str, str] = {
    "FF-DF": "Deepfakes", "FF-F2F": "Face2Face", "FF-FS": "FaceSwap", "FF-NT": "NeuralTextures",
    "FF-FH": "FaceShifter", "CelebDFv1_fake": CELEBDF_FORGERY, "CelebDFv2_fake": CELEBDF_FORGERY,
    "DFDCP_FakeA": "method_A", "DFDCP_FakeB": "method_B", "DFDC_Fake": DFDC_FORGERY,
}

_SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # which split keeps a video or identity found in several

_EXPECTED_TREES = """\
  faceforensics  <root>/original_sequences/youtube/<c23|c40|raw>/videos/000.mp4
                 <root>/manipulated_sequences/<Deepfakes|Face2Face|FaceSwap|NeuralTextures|FaceShifter>/
                        <c23|c40|raw>/videos/000_003.mp4
                 + train.json, val.json, test.json (official FF++ split lists) in <root>/splits/
  celebdf        <root>/{Celeb-real,YouTube-real,Celeb-synthesis}/[videos/]*.mp4
                 + <root>/List_of_testing_videos.txt
  dfdc           <root>/[<part>/]metadata.json + that part's *.mp4 (Kaggle dfdc_train_part_N)
                 [+ <test folder>/labels.csv + its *.mp4]
  dfdcp          <root>/dataset.json + the videos at the paths it lists (method_A/..., original_videos/...)
  deepfakebench  <root>/dataset_json/<Name>.json + the frame images it lists (relative to <root>)"""


# --------------------------------------------------------------------------------------------------
# Collected videos


@dataclass(frozen=True)
class _Video:
    path: Path
    label: int
    split: str
    name: str                              # the dataset's own video name (000_003, id0_0000, ...)
    identity: str
    forgery: str
    dataset: str
    frames: tuple[str, ...] | None = None  # already-extracted frame images

    @property
    def video_id(self) -> str:
        return f"{self.dataset}/{self.forgery}/{self.name}"


@dataclass
class _Collected:
    videos: list[_Video] = field(default_factory=list)
    bad_files: list[BadFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # structure errors, raised together


# --------------------------------------------------------------------------------------------------
# Folder helpers



def _videos_in(folder: Path, *, recursive: bool = False) -> tuple[list[Path], list[BadFile]]:
    """Video files in ``folder`` (and below when ``recursive``); other data files are ``BadFile``s."""
    dirs, files = scan_folder(folder)
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    bad = [BadFile(str(f), f"not a video file (suffix {f.suffix or '(none)'!r}; accepted: "
                           f"{', '.join(sorted(VIDEO_SUFFIXES))})") for f in files if f not in videos]
    if recursive:
        for sub in dirs:
            more, more_bad = _videos_in(sub, recursive=True)
            videos += more
            bad += more_bad
    return videos, bad


def _existing_dir(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else f"does not exist (absolute: {path.absolute()})"
        raise DataValidationError(f"face data folder {path} {what}; point data.source= at the dataset's root "
                                  f"folder, e.g. data.source=/data/FaceForensics++")
    return path.resolve()


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataValidationError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from err


def _identity(dataset: str, name: str) -> str:
    """The person a video shows, from its name (see the module docstring); the video itself otherwise."""
    if dataset in (FF_DATASET, "DFD"):
        match = re.match(r"(\d+)(?:_|$)", name)  # FF++ 000 / 000_003 (target first), DFD 01__scene
    elif dataset.startswith("Celeb-DF"):
        match = re.match(r"(id\d+)_", name)      # id0_0000 / id0_id16_0000 (target first)
    else:
        match = None
    return f"{dataset}:{match.group(1) if match else name}"


def _licence(dataset: str) -> str:
    return LICENCES.get("Celeb-DF" if dataset.startswith("Celeb-DF") else dataset, "unknown")


# --------------------------------------------------------------------------------------------------
# Layout detection


def _unknown_layout_error(root: Path, detail: str) -> DataValidationError:
    dirs = scan_folder(root)[0]
    shown = ", ".join(d.name + "/" for d in dirs[:10]) or "no folders"
    if len(dirs) > 10:
        shown += f" and {len(dirs) - 10} more"
    listed = ", ".join(p.name for p in sorted(root.iterdir()) if p.is_file())[:200] or "none"
    return DataValidationError(
        f"cannot tell the face-video layout of {root}: {detail}\n"
        f"found at the top: {shown}; files: {listed}\n"
        f"expected one of these trees:\n{_EXPECTED_TREES}\n"
        f"Arrange the folder like one of them, or name the layout with data.layout=<name> "
        f"(one of {', '.join(LAYOUTS)}) to get errors that name what is missing.")


def detect_layout(root: str | Path) -> str:
    """Name the layout of ``root`` (one of ``LAYOUTS``); ``DataValidationError`` showing the expected trees
    when the structure matches none."""
    root = _existing_dir(root)
    names = {d.name for d in scan_folder(root)[0]}
    if (root / DEEPFAKEBENCH_JSON_DIR).is_dir():
        return "deepfakebench"
    if names & {"original_sequences", "manipulated_sequences"}:
        return "faceforensics"
    if names & set(CELEBDF_FOLDERS):
        return "celebdf"
    if (root / DFDCP_INDEX).is_file():
        return "dfdcp"
    if _dfdc_lists(root, DFDC_METADATA) or _dfdc_lists(root, DFDC_TEST_LABELS):
        return "dfdc"
    raise _unknown_layout_error(root, "none of the known folders or index files at its top")


# --------------------------------------------------------------------------------------------------
# FaceForensics++


def _ff_split_files(root: Path, split_dir: str | Path | None) -> dict[str, Path]:
    places = [Path(split_dir).expanduser()] if split_dir is not None else [root / "splits", root]
    for place in places:
        files = {split: place / name for split, name in FF_SPLIT_FILES.items()}
        if all(f.is_file() for f in files.values()):
            return files
    def missing(place: Path) -> str:
        return ", ".join(n for n in FF_SPLIT_FILES.values() if not (place / n).is_file())

    looked = "; ".join(f"{place}/{{{','.join(FF_SPLIT_FILES.values())}}} (missing: {missing(place)})"
                       for place in places)
    raise DataValidationError(
        f"FaceForensics++ split lists not found; looked for {looked}. They define the official 720/140/140 "
        f"train/val/test video split and are not part of the video download. Fix: download train.json, "
        f"val.json and test.json from {FF_SPLITS_URL} into {places[0]}"
        + ("" if split_dir is not None else ", or pass split_dir=<folder holding them>"))


def _ff_id_splits(files: dict[str, Path]) -> dict[str, str]:
    """FF++ id (e.g. "071") → split, from the official lists of [id, id] pairs."""
    id_split: dict[str, str] = {}
    for split, path in files.items():
        pairs = _read_json(path, "FaceForensics++ split list")
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise DataValidationError(f"{path} is not an FF++ split list: expected a JSON list of [id, id] "
                                      f"pairs such as [[\"071\", \"054\"], ...]; get it from {FF_SPLITS_URL}")
        for pair in pairs:
            for video_id in map(str, pair):
                if id_split.setdefault(video_id, split) != split:
                    raise DataValidationError(f"FF++ id {video_id} is in both {id_split[video_id]} and "
                                              f"{split} split lists ({path.parent}); use the official lists")
    return id_split


def _ff_videos_dir(base: Path, compression: str, what: str, out: _Collected) -> Path | None:
    folder = base / compression / "videos"
    if folder.is_dir():
        return folder
    present = sorted(d.name for d in scan_folder(base)[0]) if base.is_dir() else []
    out.problems.append(f"{folder} does not exist ({what}); compression levels found in {base}: "
                        f"{', '.join(present) or 'none'}; set compression= to one of "
                        f"{', '.join(FF_COMPRESSIONS)}")
    return None


def _ff_video(path: Path, forgery: str, id_split: dict[str, str], split_files: dict[str, Path]
              ) -> _Video | BadFile:
    pattern = r"(\d+)" if forgery == REAL else r"(\d+)_(\d+)"
    match = re.fullmatch(pattern, path.stem)
    if not match:
        expected = "<id>.mp4, e.g. 071.mp4" if forgery == REAL else "<target>_<source>.mp4, e.g. 071_054.mp4"
        return BadFile(str(path), f"not an FF++ video name: expected {expected}")
    splits = {id_split.get(i) for i in match.groups()}
    if None in splits:
        return BadFile(str(path), f"id(s) {'/'.join(match.groups())} are in none of the FF++ split lists "
                                  f"({', '.join(str(f) for f in split_files.values())}), so it has no split")
    if len(splits) > 1:
        return BadFile(str(path), f"its ids are in different splits ({', '.join(sorted(splits))}) in the "
                                  f"FF++ split lists")
    return _Video(path, 0 if forgery == REAL else 1, splits.pop(), path.stem,
                  _identity(FF_DATASET, path.stem), forgery, FF_DATASET)


def _read_faceforensics(root: Path, *, compression: str, methods: Sequence[str] | None,
                        split_dir: str | Path | None, **_: Any) -> _Collected:
    if compression not in FF_COMPRESSIONS:
        raise DataValidationError(f"unknown FF++ compression {compression!r}; use one of "
                                  f"{list(FF_COMPRESSIONS)}")
    split_files = _ff_split_files(root, split_dir)
    id_split = _ff_id_splits(split_files)
    out = _Collected()
    sources: list[tuple[Path, str]] = []
    real = _ff_videos_dir(root / "original_sequences" / "youtube", compression, "the real videos", out)
    if real is not None:
        sources.append((real, REAL))
    manipulated = root / "manipulated_sequences"
    present = [d.name for d in scan_folder(manipulated)[0]] if manipulated.is_dir() else []
    chosen = list(methods) if methods is not None else [m for m in FF_METHODS if m in present]
    ignored = sorted(set(present) - set(chosen))
    if ignored:
        log.warning("FF++: ignoring %s in %s (not one of the read methods %s; name them in methods= to read "
                    "them)", ", ".join(ignored), manipulated, ", ".join(chosen))
    for method in chosen:
        folder = _ff_videos_dir(manipulated / method, compression, f"the {method} fakes", out)
        if folder is not None:
            sources.append((folder, method))
    for folder, forgery in sources:
        videos, bad = _videos_in(folder)
        out.bad_files += bad
        for path in videos:
            result = _ff_video(path, forgery, id_split, split_files)
            (out.bad_files if isinstance(result, BadFile) else out.videos).append(result)
    return out


# --------------------------------------------------------------------------------------------------
# Celeb-DF


def _celebdf_name(root: Path, dataset: str | None) -> str:
    if dataset:
        return dataset
    version = re.search(r"v([12])\b", root.name, flags=re.IGNORECASE)
    return f"Celeb-DF-v{version.group(1)}" if version else "Celeb-DF"


def _celebdf_test_list(path: Path) -> set[str]:
    """Relative paths (``Celeb-real/id0_0000.mp4``) of the listed test videos; the label column is checked."""
    if not path.is_file():
        raise DataValidationError(
            f"Celeb-DF test list {path} is missing: it names the official test videos (every other video is "
            f"train). Fix: copy {CELEBDF_TEST_LIST} from the Celeb-DF download to {path}, or pass "
            f"test_list=<file>")
    listed: set[str] = set()
    errors: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        folder = parts[-1].replace("\\", "/").split("/")[0] if parts else ""
        if len(parts) != 2 or parts[0] not in ("0", "1") or folder not in CELEBDF_FOLDERS:
            expected = f"<1|0> <{'|'.join(CELEBDF_FOLDERS)}>/<file>"
            errors.append(f"line {number}: {line.strip()!r} is not '{expected}'")
            continue
        is_real = CELEBDF_FOLDERS[folder] == 0
        if (parts[0] == str(CELEBDF_LIST_REAL)) != is_real:
            errors.append(f"line {number}: {line.strip()!r} labels a {'real' if is_real else 'fake'} folder "
                          f"{parts[0]} (in this list 1 = real, 0 = fake)")
        listed.add(parts[1].replace("\\", "/"))
    if errors:
        raise DataValidationError(f"{path} does not read as Celeb-DF's test list:\n  "
                                  + "\n  ".join(errors[:20]))
    return listed


def _read_celebdf(root: Path, *, test_list: str | Path | None, dataset: str | None, **_: Any) -> _Collected:
    name = _celebdf_name(root, dataset)
    listed = _celebdf_test_list(Path(test_list).expanduser() if test_list else root / CELEBDF_TEST_LIST)
    out = _Collected()
    found: set[str] = set()
    for folder_name, label in CELEBDF_FOLDERS.items():
        folder = root / folder_name
        if not folder.is_dir():
            kind = "real" if label == 0 else "fake"
            out.problems.append(f"{folder} does not exist (Celeb-DF's {kind} videos)")
            continue
        videos_dir = folder / "videos"
        videos, bad = _videos_in(videos_dir if videos_dir.is_dir() else folder)
        out.bad_files += bad
        forgery = REAL if label == 0 else CELEBDF_FORGERY
        for path in videos:
            relative = f"{folder_name}/{path.name}"
            found.add(relative)
            split = "test" if relative in listed else "train"
            out.videos.append(_Video(path, label, split, path.stem, _identity(name, path.stem), forgery,
                                     name))
    for missing in sorted(listed - found):
        out.bad_files.append(BadFile(str(root / missing),
                                     f"listed in {CELEBDF_TEST_LIST} but missing from the dataset folder"))
    return out


# --------------------------------------------------------------------------------------------------
# DFDC and DFDC preview


def _dfdc_lists(root: Path, name: str) -> list[Path]:
    """``name`` files at the root and up to two folder levels below it (parts, train/parts, test)."""
    found = [root / name] if (root / name).is_file() else []
    for sub in scan_folder(root)[0]:
        if (sub / name).is_file():
            found.append(sub / name)
        found += [d / name for d in scan_folder(sub)[0] if (d / name).is_file()]
    return found


def _dfdc_entry(path: Path, entry: Any, index: Path) -> _Video | BadFile:
    if not isinstance(entry, dict) or str(entry.get("label", "")).upper() not in ("REAL", "FAKE"):
        return BadFile(str(path), f"{index} gives no label REAL or FAKE for it (entry: {entry!r})")
    split = str(entry.get("split", "")).lower()
    if split not in SPLITS:
        return BadFile(str(path), f"{index} gives it no split train/val/test (split: {entry.get('split')!r})")
    fake = entry["label"].upper() == "FAKE"
    original = entry.get("original")
    person = Path(str(original)).stem if fake and original else path.stem
    return _Video(path, int(fake), split, path.stem, f"DFDC:{person}", DFDC_FORGERY if fake else REAL, "DFDC")


def _read_dfdc_part(metadata: Path, out: _Collected) -> None:
    entries = _read_json(metadata, "DFDC metadata")
    if not isinstance(entries, dict):
        out.problems.append(f"{metadata}: expected a JSON object {{\"<file>.mp4\": {{\"label\": ..., "
                            f"\"split\": ..., \"original\": ...}}}}")
        return
    videos, bad = _videos_in(metadata.parent)
    out.bad_files += bad
    on_disk = {p.name: p for p in videos}
    for file_name, entry in entries.items():
        path = on_disk.pop(file_name, None)
        if path is None:
            out.bad_files.append(BadFile(str(metadata.parent / file_name),
                                         f"listed in {metadata} but missing"))
            continue
        result = _dfdc_entry(path, entry, metadata)
        (out.bad_files if isinstance(result, BadFile) else out.videos).append(result)
    out.bad_files += [BadFile(str(p), f"not listed in {metadata}, so it has no label")
                      for p in on_disk.values()]


def _read_dfdc_test(labels: Path, out: _Collected) -> None:
    folder = labels.parent / "videos" if (labels.parent / "videos").is_dir() else labels.parent
    videos, bad = _videos_in(folder)
    out.bad_files += bad
    on_disk = {p.name: p for p in videos}
    try:
        with open(labels, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataValidationError(f"cannot read DFDC test labels {labels}: {err}") from err
    if rows and not {"filename", "label"} <= set(rows[0]):
        raise DataValidationError(f"{labels}: expected the columns filename,label (label 1 = fake); found "
                                  f"{', '.join(rows[0])}")
    for row in rows:
        path = on_disk.pop(row["filename"], None)
        if path is None:
            out.bad_files.append(BadFile(str(folder / row["filename"]), f"listed in {labels} but missing"))
        elif str(row["label"]).strip() not in ("0", "1"):
            out.bad_files.append(BadFile(str(path), f"{labels} gives label {row['label']!r}, not 0 (real) "
                                                    f"or 1 (fake)"))
        else:
            fake = str(row["label"]).strip() == "1"
            out.videos.append(_Video(path, int(fake), "test", path.stem, f"DFDC:{path.stem}",
                                     DFDC_FORGERY if fake else REAL, "DFDC"))
    out.bad_files += [BadFile(str(p), f"not listed in {labels}, so it has no label")
                      for p in on_disk.values()]


def _read_dfdc(root: Path, **_: Any) -> _Collected:
    out = _Collected()
    parts, tests = _dfdc_lists(root, DFDC_METADATA), _dfdc_lists(root, DFDC_TEST_LABELS)
    if not parts and not tests:
        out.problems.append(f"{root}: no {DFDC_METADATA} (training parts) or {DFDC_TEST_LABELS} (test part) "
                            f"found at the top or up to two folders below")
    for metadata in parts:
        _read_dfdc_part(metadata, out)
    for labels in tests:
        _read_dfdc_test(labels, out)
    return out


def _read_dfdcp(root: Path, **_: Any) -> _Collected:
    index = root / DFDCP_INDEX
    if not index.is_file():
        raise DataValidationError(f"DFDC preview index {index} is missing; it labels and splits the videos. "
                                  f"Fix: put dataset.json from the DFDC preview download at {index}")
    entries = _read_json(index, "DFDC preview index")
    out = _Collected()
    if not isinstance(entries, dict):
        out.problems.append(f"{index}: expected a JSON object {{\"<relative path>.mp4\": {{\"label\": ..., "
                            f"\"set\": ...}}}}")
        return out
    videos, bad = _videos_in(root, recursive=True)
    out.bad_files += bad
    unlisted = {p.relative_to(root).as_posix(): p for p in videos}
    for relative, entry in entries.items():
        path = root / relative
        if unlisted.pop(relative, None) is None:
            out.bad_files.append(BadFile(str(path), f"listed in {index} but missing"))
            continue
        label = str(entry.get("label", "")).lower() if isinstance(entry, dict) else ""
        split = str(entry.get("set", "")).lower() if isinstance(entry, dict) else ""
        if label not in ("real", "fake") or split not in SPLITS:
            out.bad_files.append(BadFile(str(path), f"{index} gives no label real/fake and set "
                                                    f"train/val/test for it (entry: {entry!r})"))
            continue
        fake = label == "fake"
        forgery = relative.split("/")[0] if fake else REAL
        person = str(entry.get("target_id") or path.stem)
        out.videos.append(_Video(path, int(fake), split, path.stem, f"DFDCP:{person}", forgery, "DFDCP"))
    out.bad_files += [BadFile(str(p), f"not listed in {index}, so it has no label")
                      for p in unlisted.values()]
    return out


# --------------------------------------------------------------------------------------------------
# DeepfakeBench's preprocessed JSON


def _frame_resolver(example: str, base: Path) -> Callable[[str], str]:
    """How this JSON's frame paths map to files: as written, or with a leading ``datasets/`` dropped
    (decided once, on one frame, so a large JSON costs no stat per frame)."""
    def parts(raw: str) -> list[str]:
        return [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]

    def as_written(raw: str) -> str:
        text = raw.replace("\\", "/")
        return text if text.startswith("/") else str(base.joinpath(*parts(raw)))

    def without_datasets(raw: str) -> str:
        p = parts(raw)
        return str(base.joinpath(*(p[1:] if p and p[0] == "datasets" else p)))

    if not Path(as_written(example)).exists() and Path(without_datasets(example)).exists():
        return without_datasets
    return as_written


def _deepfakebench_split_entries(split_entry: Any, compression: str, where: str,
                                 out: _Collected) -> dict[str, Any]:
    """The {video name: record} mapping of one split; the ``compression`` level where there are several."""
    if not isinstance(split_entry, dict):
        out.problems.append(f"{where}: expected a mapping of videos, found {type(split_entry).__name__}")
        return {}
    if set(split_entry) >= {"label", "frames"} and isinstance(split_entry.get("frames"), list):
        log.warning("%s: skipping a malformed split entry (one video record instead of a mapping of videos, "
                    "as DeepfakeBench's DFDC rearrange writes for val)", where)
        return {}
    if split_entry and set(split_entry) <= set(FF_COMPRESSIONS):
        if compression not in split_entry:
            out.problems.append(f"{where}: no {compression!r} entry; compression levels present: "
                                f"{', '.join(sorted(split_entry))}; set compression=")
            return {}
        return split_entry[compression]
    return split_entry


def _read_deepfakebench_file(path: Path, frames_root: Path, compression: str, out: _Collected) -> None:
    content = _read_json(path, "DeepfakeBench dataset JSON")
    if not isinstance(content, dict):
        out.problems.append(f"{path}: expected {{<dataset>: {{<label>: {{<split>: {{<video>: {{...}}}}}}}}}}")
        return
    resolve: Callable[[str], str] | None = None
    for bench_name, labels in content.items():
        dataset = DEEPFAKEBENCH_DATASETS.get(bench_name, bench_name)
        for label_name, splits in _mapping(labels, f"{path.name}: {bench_name}", out).items():
            where_label = f"{path.name}: {bench_name}/{label_name}"
            for split, split_entry in _mapping(splits, where_label, out).items():
                where = f"{path.name}: {bench_name}/{label_name}/{split}"
                if split not in SPLITS:
                    out.problems.append(f"{where}: unknown split {split!r} (expected {', '.join(SPLITS)})")
                    continue
                entries = _deepfakebench_split_entries(split_entry, compression, where, out)
                for name, record in entries.items():
                    frames = record.get("frames") if isinstance(record, dict) else None
                    if not isinstance(frames, list):
                        out.bad_files.append(BadFile(f"{path}#{bench_name}/{label_name}/{split}/{name}",
                                                     "no 'frames' list for this video"))
                        continue
                    if frames and resolve is None:
                        resolve = _frame_resolver(frames[0], frames_root)
                    resolved = tuple(resolve(f) for f in frames) if resolve else ()
                    folder = Path(resolved[0]).parent if resolved else path.parent / str(name)
                    video_label = str(record.get("label") or label_name)
                    fake = "real" not in video_label.lower()
                    forgery = DEEPFAKEBENCH_FORGERIES.get(video_label, video_label) if fake else REAL
                    out.videos.append(_Video(folder, int(fake), split, str(name),
                                             _identity(dataset, str(name)), forgery, dataset, resolved))


def _mapping(value: Any, where: str, out: _Collected) -> dict:
    if isinstance(value, dict):
        return value
    out.problems.append(f"{where}: expected a JSON object, found {type(value).__name__}")
    return {}


def _read_deepfakebench(root: Path, *, compression: str, json_names: Sequence[str] | None,
                        frames_root: str | Path | None, **_: Any) -> _Collected:
    folder = root / DEEPFAKEBENCH_JSON_DIR
    available = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    names = list(json_names) if json_names else available
    missing = [n for n in names if n not in available]
    if missing or not names:
        wanted = ", ".join(f"{folder}/{n}.json" for n in missing) or "files"
        raise DataValidationError(f"DeepfakeBench JSON {wanted} not found; available in {folder}: "
                                  f"{', '.join(available) or 'none'}. Fix: copy DeepfakeBench's "
                                  f"dataset_json/<Name>.json files there, or set json_names=")
    out = _Collected()
    base = Path(frames_root).expanduser().resolve() if frames_root else root
    for name in names:
        _read_deepfakebench_file(folder / f"{name}.json", base, compression, out)
    return out


# --------------------------------------------------------------------------------------------------
# Splits kept apart, table


def _one_split_per_video(videos: Iterable[_Video]) -> list[_Video]:
    """One record per video id; a video listed in several splits takes test, else train, else val
    (DeepfakeBench fills val with copies of test or train)."""
    order = {"test": 0, "train": 1, "val": 2}
    chosen: dict[str, _Video] = {}
    copies = 0
    for video in videos:
        kept = chosen.get(video.video_id)
        if kept is None:
            chosen[video.video_id] = video
            continue
        copies += kept.split != video.split
        if order[video.split] < order[kept.split]:
            chosen[video.video_id] = video
    if copies:
        log.warning("%d videos are listed in more than one split; each keeps one (test, else train, "
                    "else val)", copies)
    return list(chosen.values())


def _keep_splits_apart(videos: list[_Video], overlap: str) -> list[_Video]:
    """Drop each video whose video id or identity also occurs in a higher-priority split (test > val > train).

    Only removes, so afterwards every id and identity is in one split; videos in the priority split are kept.
    """
    if overlap == "keep":
        return videos
    best: dict[tuple[str, str], int] = {}
    for video in videos:
        for key in (("video_id", video.video_id), ("identity", video.identity)):
            best[key] = min(best.get(key, 9), _SPLIT_PRIORITY[video.split])
    kept, dropped = [], defaultdict(list)
    for video in videos:
        rank = _SPLIT_PRIORITY[video.split]
        keys = (("video_id", video.video_id), ("identity", video.identity))
        clash = next((k for k in keys if best[k] < rank), None)
        if clash is None:
            kept.append(video)
        else:
            dropped[video.split].append(f"{video.video_id} ({clash[0]} {clash[1]})")
    for split, names in sorted(dropped.items()):
        log.warning("dropped %d %s videos whose video id or identity is also in a higher-priority split "
                    "(test > val > train), so nothing crosses splits; e.g. %s. overlap='keep' keeps them "
                    "(the manifest validation then reports the leakage)", len(names), split,
                    "; ".join(names[:3]))
    return kept


def _table(videos: list[_Video], root: Path, with_frames: bool) -> pd.DataFrame:
    rows = []
    for video in videos:
        try:
            source = video.path.relative_to(root.parent).as_posix()
        except ValueError:  # frames outside the root (frames_root elsewhere)
            source = video.path.as_posix()
        row = {"path": str(video.path), "label": video.label, "split": video.split,
               "video_id": video.video_id, "identity": video.identity, "forgery": video.forgery,
               "dataset": video.dataset, "source": source, "licence": _licence(video.dataset)}
        if with_frames:
            row[FRAMES_COLUMN] = list(video.frames or ())
        rows.append(row)
    columns = [*VIDEO_TABLE_COLUMNS, *([FRAMES_COLUMN] if with_frames else [])]
    table = pd.DataFrame(rows, columns=columns)
    table["label"] = table["label"].astype("int64")
    table = table.sort_values(["split", "dataset", "forgery", "video_id"], kind="stable")
    return table.reset_index(drop=True)


_READERS: dict[str, Callable[..., _Collected]] = {
    "faceforensics": _read_faceforensics, "celebdf": _read_celebdf, "dfdc": _read_dfdc, "dfdcp": _read_dfdcp,
    "deepfakebench": _read_deepfakebench,
}


def read_videos(
    root: str | Path,
    layout: str = "auto",
    *,
    compression: str = "c23",
    methods: Sequence[str] | None = None,
    split_dir: str | Path | None = None,
    test_list: str | Path | None = None,
    dataset: str | None = None,
    json_names: Sequence[str] | None = None,
    frames_root: str | Path | None = None,
    overlap: str = "drop",
) -> tuple[pd.DataFrame, list[BadFile]]:
    """Read ``root`` in ``layout`` ("auto" detects it) into (video table, bad files).

    ``compression``: FF++ (and DeepfakeBench FF++ JSON) level c23|c40|raw; ``methods``: FF++ manipulation
    folders to read (default: those of ``FF_METHODS`` present); ``split_dir``: folder with FF++'s
    train/val/test.json; ``test_list``: Celeb-DF's List_of_testing_videos.txt when not in the root;
    ``dataset``: Celeb-DF's name when the root folder's name does not say v1/v2; ``json_names``:
    DeepfakeBench JSON names (default: all in dataset_json/); ``frames_root``: folder DeepfakeBench frame
    paths are relative to (default: the root); ``overlap``: see the module docstring.

    Structure errors raise ``DataValidationError`` naming every offending folder or file; unusable
    entries come back as ``BadFile``s. Videos are not decoded here (``frames.frames_manifest`` does).
    """
    root = _existing_dir(root)
    if overlap not in OVERLAP_CHOICES:
        raise DataValidationError(f"overlap must be one of {list(OVERLAP_CHOICES)}, got {overlap!r}")
    if layout == "auto":
        layout = detect_layout(root)
        log.info("detected face-video layout %s in %s", layout, root)
    if layout not in _READERS:
        raise DataValidationError(f"unknown face-video layout {layout!r}; set data.layout= to one of "
                                  f"{['auto', *LAYOUTS]}\nexpected trees:\n{_EXPECTED_TREES}")
    collected = _READERS[layout](root, compression=compression, methods=methods, split_dir=split_dir,
                                 test_list=test_list, dataset=dataset, json_names=json_names,
                                 frames_root=frames_root)
    if collected.problems:
        shown = collected.problems[:20]
        more = f"\n  ... and {len(collected.problems) - 20} more" if len(collected.problems) > 20 else ""
        raise DataValidationError(f"{root} does not follow layout {layout}:\n  " + "\n  ".join(shown) + more
                                  + f"\nexpected trees:\n{_EXPECTED_TREES}")
    if not collected.videos and not collected.bad_files:
        raise DataValidationError(f"{root} (layout {layout}) holds no videos\n"
                                  f"expected trees:\n{_EXPECTED_TREES}")
    videos = _keep_splits_apart(_one_split_per_video(collected.videos), overlap)
    table = _table(videos, root, with_frames=layout == "deepfakebench")
    bad_files = sorted(collected.bad_files, key=lambda b: b.path)
    log.info("read %d videos (%d bad files) from %s as %s; per split: %s", len(table), len(bad_files), root,
             layout, table["split"].value_counts().to_dict())
    return table, bad_files

