"""Read users' image folders in the published AIGI layouts into a manifest, checking every file.

Layouts (``detect_layout`` returns the name, ``data.layout=`` names it explicitly)::

    forensynths   <root>/<generator>/[<class>/]{0_real,1_fake}/<images>
                  ForenSynths (CNNDetection), UniversalFakeDetect, AIGIBench test suites. The optional
                  <class> level (ForenSynths' LSUN categories, e.g. progan/car/0_real) may be present for
                  some generators and absent for others in the same root. generator = <generator>.
    genimage      <root>/<generator>/{train,val}/{ai,nature}/<images>          (GenImage)
    real_fake     <root>/{real,fake}/<images>          generator = the root folder's name
    split_folders:<inner>
                  <root>/{train,val,test}/<inner layout>
                  (AIGIBench training root: train/<cls>/{0_real,1_fake})
                  <inner> is forensynths or real_fake; a real_fake or single-subset inner folder takes
                  the root folder's name as generator (not "train").

Decisions (documented here because the published layouts leave them open):

* A root may also be *one* subset of a collection: ``<root>/{0_real,1_fake}`` is forensynths and
  ``<root>/{train,val}/{ai,nature}`` is genimage; the generator is then the root folder's name.
* Split folders are an orthogonal wrapper encoded in the layout string (``split_folders:forensynths``),
  so a name given in ``data.layout=`` says everything needed to read the tree.
* Split folders map as follows, for GenImage per generator and for ``split_folders`` per root:
  ``train``→train, ``test``→test, ``val``→val when a ``test`` folder exists, otherwise ``val``→test
  (GenImage and AIGIBench publish no test folder: their val set is the held-out set). Splits that no
  folder provides (normally val) are carved deterministically out of ``train`` by the path hash below,
  with ``split_fractions`` renormalised over the splits being carved (default train:val = 0.7:0.1).
* Without split folders every file is assigned by hashing ``seed`` and its path relative to the root
  (sha256 → a number in [0, 1) → bucket by ``split_fractions``, default 0.7/0.1/0.2). Each file's split
  depends only on its own path, so adding files to a dataset never moves existing files between splits
  (a test image of data version N is never a training image of version N+1).
* Files with identical bytes that are split by hash are kept together (they all take the split of the
  first path in sorted order), so the hash split never creates train/test leakage itself. Duplicates
  that the published split folders already put in two splits are left alone and reported by
  ``genguard.data.validation``.
* Class folder names are matched case-insensitively; any other folder at the class level, or any
  folder that holds images directly but is not a class folder, is a ``DataValidationError`` naming it.
* Files that are not in a class folder, or whose suffix is not an image suffix, are ``BadFile``s
  (never silently dropped), except obvious non-data: hidden files, README/LICENSE, .txt/.json/.md/
  .yaml/.yml/.csv/.log, Thumbs.db, desktop.ini.
* ``path`` is absolute; ``source`` is the path relative to the root's parent (``<rootname>/...``);
  ``licence`` is "unknown" (no published layout records one).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from genguard.data.files import (  # noqa: F401
    DEFAULT_MIN_SIDE,
    ImageCheck,
    ImageInfo,
    check_files,
    check_image_file,
    scan_folder,
)
from genguard.data.manifest import SPLITS, BadFile, DataValidationError, normalise_manifest
from genguard.data.splits import choose_split, hash_split_unit, normalised_fractions
from genguard.families.aigi.schema import AIGI_SCHEMA

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("forensynths", "genimage", "real_fake")
SPLIT_FOLDERS_PREFIX = "split_folders:"
# Inner layouts a split folder may hold; GenImage already has its own per-generator split folders.
SPLIT_FOLDER_INNER: tuple[str, ...] = ("forensynths", "real_fake")
CLASS_FOLDERS: dict[str, dict[str, int]] = {
    "forensynths": {"0_real": 0, "1_fake": 1},
    "genimage": {"nature": 0, "ai": 1},
    "real_fake": {"real": 0, "fake": 1},
}


_EXPECTED_TREES = """\
  forensynths            <root>/<generator>/[<class>/]{0_real,1_fake}/<images>
                         (ForenSynths, UniversalFakeDetect, AIGIBench; also <root>/{0_real,1_fake})
  genimage               <root>/<generator>/{train,val}/{ai,nature}/<images>
                         (GenImage; also <root>/{train,val}/{ai,nature} for one generator)
  real_fake              <root>/{real,fake}/<images>   (generator = the root folder's name)
  split_folders:<inner>  <root>/{train,val,test}/<forensynths or real_fake tree>
                         (AIGIBench training root: train/<cls>/{0_real,1_fake})"""


# --------------------------------------------------------------------------------------------------
# Folder listing helpers


def _subdir_names(folder: Path) -> set[str]:
    return {d.name.lower() for d in scan_folder(folder)[0]}


def _existing_dir(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataValidationError(
            f"data folder {path} does not exist (absolute: {path.absolute()}); "
            f"point data.source= at the folder holding your images, e.g. data.source=/data/genimage")
    if not path.is_dir():
        raise DataValidationError(
            f"data source {path} is a file, not a folder; point data.source= at the folder that holds "
            f"the image folders")
    return path.resolve()


# --------------------------------------------------------------------------------------------------
# Layout detection


def _unknown_layout_error(root: Path, detail: str) -> DataValidationError:
    dirs, files = scan_folder(root)
    shown = ", ".join(d.name + "/" for d in dirs[:10]) or "no folders"
    if len(dirs) > 10:
        shown += f" and {len(dirs) - 10} more"
    return DataValidationError(
        f"cannot tell the layout of {root}: {detail}\n"
        f"found at the top: {shown}; {len(files)} file(s)\n"
        f"expected one of these trees:\n{_EXPECTED_TREES}\n"
        f"Rename the folders to match one of them, or name the layout explicitly with "
        f"data.layout=<name> (one of {', '.join(LAYOUTS)}, split_folders:forensynths, "
        f"split_folders:real_fake) to get errors that name the offending folders.")


def _subset_evidence(folder: Path) -> str | None:
    """Which layout a folder directly holds as one subset (its children are class folders)."""
    names = _subdir_names(folder)
    if names & set(CLASS_FOLDERS["forensynths"]):
        return "forensynths"
    if names & set(CLASS_FOLDERS["real_fake"]):
        return "real_fake"
    return None


def _generator_evidence(generator_dir: Path) -> str | None:
    """Which layout a ``<root>/<generator>`` folder belongs to, from the names below it."""
    dirs, _ = scan_folder(generator_dir)
    names = {d.name.lower() for d in dirs}
    if names & set(CLASS_FOLDERS["forensynths"]):
        return "forensynths"
    split_dirs = [d for d in dirs if d.name.lower() in SPLITS]
    if any(_subdir_names(d) & set(CLASS_FOLDERS["genimage"]) for d in split_dirs):
        return "genimage"
    # ForenSynths' optional <class> level: progan/car/{0_real,1_fake}.
    if any(_subdir_names(d) & set(CLASS_FOLDERS["forensynths"]) for d in dirs):
        return "forensynths"
    return None


def _detect_plain(root: Path) -> str | None:
    """Layout of a folder without split folders at its top, or None when nothing matches."""
    subset = _subset_evidence(root)
    if subset:
        return subset
    dirs, _ = scan_folder(root)
    found: dict[str, list[str]] = defaultdict(list)
    for generator_dir in dirs:
        evidence = _generator_evidence(generator_dir)
        if evidence:
            found[evidence].append(generator_dir.name)
    if len(found) > 1:
        listing = "; ".join(f"{layout}: {', '.join(names[:5])}" for layout, names in sorted(found.items()))
        raise _unknown_layout_error(root, f"generator folders follow different layouts ({listing})")
    # Generator folders without evidence are reported by the reader, which names them.
    return next(iter(found), None)


def detect_layout(root: Path) -> str:
    """Name the layout of ``root``: forensynths, genimage, real_fake or split_folders:<inner>.

    Raises ``DataValidationError`` showing the expected trees when the structure matches none.
    """
    root = _existing_dir(root)
    dirs, _ = scan_folder(root)
    split_dirs = [d for d in dirs if d.name.lower() in SPLITS]
    if not split_dirs:
        layout = _detect_plain(root)
        if layout is None:
            raise _unknown_layout_error(root, "no class folders (0_real/1_fake, ai/nature, real/fake) "
                                              "at the expected depth")
        return layout
    others = [d.name for d in dirs if d not in split_dirs]
    if others:
        raise _unknown_layout_error(
            root, f"it mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
                  f"({', '.join(others[:10])}); a root holds either split folders or generator folders")
    # <root>/{train,val}/{ai,nature}: a single GenImage generator, not a split-folder wrapper.
    if any(_subdir_names(d) & set(CLASS_FOLDERS["genimage"]) for d in split_dirs):
        return "genimage"
    inner = {d.name: _detect_plain(d) for d in split_dirs}
    layouts = {layout for layout in inner.values() if layout}
    if len(layouts) != 1:
        detail = ", ".join(f"{name}/ → {layout or 'unknown'}" for name, layout in sorted(inner.items()))
        raise _unknown_layout_error(root, f"split folders hold no single known layout ({detail})")
    layout = layouts.pop()
    if layout not in SPLIT_FOLDER_INNER:
        raise _unknown_layout_error(root, f"split folders hold a {layout} tree, which has its own splits")
    return SPLIT_FOLDERS_PREFIX + layout


# --------------------------------------------------------------------------------------------------
# Collecting candidate files per layout


@dataclass(frozen=True)
class _Candidate:
    path: Path
    label: int
    generator: str
    # One entry: the split is fixed by a folder. Several: decided by the path hash among them.
    split_choices: tuple[str, ...]


@dataclass
class _Collected:
    candidates: list[_Candidate]
    bad_files: list[BadFile]
    problems: list[str]  # structure errors, raised together so the user fixes all names at once

    def extend(self, other: _Collected) -> None:
        self.candidates += other.candidates
        self.bad_files += other.bad_files
        self.problems += other.problems


def _accepted(layout: str) -> str:
    return ", ".join(f"{name} (label {label})" for name, label in CLASS_FOLDERS[layout].items())


def _unlabelled(files: Iterable[Path], layout: str) -> list[BadFile]:
    return [BadFile(str(f), f"not inside a class folder ({_accepted(layout)}), so it has no label")
            for f in files]


def _files_below(folder: Path) -> Iterable[Path]:
    dirs, files = scan_folder(folder)
    yield from files
    for sub in dirs:  # nested folders inside a class folder still carry that class's label
        yield from _files_below(sub)


def _read_labelled(folder: Path, layout: str, generator: str, choices: tuple[str, ...],
                   class_depth: int) -> _Collected:
    """Read ``folder/<class folder>/...``; ``class_depth`` = how many optional levels may come first."""
    names = CLASS_FOLDERS[layout]
    out = _Collected([], [], [])
    dirs, files = scan_folder(folder)
    out.bad_files += _unlabelled(files, layout)
    class_dirs = [d for d in dirs if d.name.lower() in names]
    other_dirs = [d for d in dirs if d.name.lower() not in names]
    if class_dirs:
        for wrong in other_dirs:
            out.problems.append(f"{wrong}: '{wrong.name}' is not a class folder name; accepted: "
                                f"{_accepted(layout)}")
        for class_dir in class_dirs:
            label = names[class_dir.name.lower()]
            out.candidates += [_Candidate(f, label, generator, choices) for f in _files_below(class_dir)]
        return out
    if not other_dirs:
        out.problems.append(f"{folder}: no class folders inside; expected {_accepted(layout)}")
        return out
    for sub in other_dirs:
        sub_dirs, sub_files = scan_folder(sub)
        if class_depth <= 0 or (sub_files and not sub_dirs):
            # It holds images itself, so it can only be a (wrongly named) class folder.
            out.problems.append(f"{sub}: '{sub.name}' is not a class folder name; "
                                f"accepted: {_accepted(layout)}")
        else:
            out.extend(_read_labelled(sub, layout, generator, choices, class_depth - 1))
    return out


def _split_folder_choices(present: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Map split folder names to their split(s); see the module docstring for the rule."""
    present = {name.lower() for name in present}
    mapping: dict[str, tuple[str, ...]] = {}
    if "test" in present:
        mapping["test"] = ("test",)
    if "val" in present:
        mapping["val"] = ("val",) if "test" in present else ("test",)
    if "train" in present:
        taken = {choices[0] for choices in mapping.values()}
        mapping["train"] = ("train", *(s for s in ("val", "test") if s not in taken))
    return mapping


def _read_forensynths(base: Path, base_generator: str, choices: tuple[str, ...]) -> _Collected:
    if _subset_evidence(base) == "forensynths":  # <base>/{0_real,1_fake}: one subset
        return _read_labelled(base, "forensynths", base_generator, choices, class_depth=0)
    out = _Collected([], [], [])
    dirs, files = scan_folder(base)
    out.bad_files += _unlabelled(files, "forensynths")
    if not dirs:
        out.problems.append(f"{base}: no generator folders inside")
    for generator_dir in dirs:
        out.extend(_read_labelled(generator_dir, "forensynths", generator_dir.name, choices, class_depth=1))
    return out


def _read_real_fake(base: Path, base_generator: str, choices: tuple[str, ...]) -> _Collected:
    return _read_labelled(base, "real_fake", base_generator, choices, class_depth=0)


def _read_genimage_generator(generator_dir: Path, generator: str) -> _Collected:
    out = _Collected([], [], [])
    dirs, files = scan_folder(generator_dir)
    out.bad_files += _unlabelled(files, "genimage")
    split_dirs = [d for d in dirs if d.name.lower() in SPLITS]
    for wrong in (d for d in dirs if d.name.lower() not in SPLITS):
        out.problems.append(f"{wrong}: a GenImage generator folder holds only train/ and val/ "
                            f"(and optionally test/), not '{wrong.name}/'")
    if not split_dirs:
        out.problems.append(f"{generator_dir}: no train/ or val/ folder inside")
    mapping = _split_folder_choices(d.name for d in split_dirs)
    for split_dir in split_dirs:
        out.extend(_read_labelled(split_dir, "genimage", generator, mapping[split_dir.name.lower()],
                                  class_depth=0))
    return out


def _read_genimage(root: Path) -> _Collected:
    dirs, files = scan_folder(root)
    if any(d.name.lower() in SPLITS for d in dirs):  # the root is one generator
        return _read_genimage_generator(root, root.name)
    out = _Collected([], _unlabelled(files, "genimage"), [])
    if not dirs:
        out.problems.append(f"{root}: no generator folders inside")
    for generator_dir in dirs:
        out.extend(_read_genimage_generator(generator_dir, generator_dir.name))
    return out


_PLAIN_READERS = {"forensynths": _read_forensynths, "real_fake": _read_real_fake}


def _read_split_folders(root: Path, inner: str) -> _Collected:
    dirs, files = scan_folder(root)
    out = _Collected([], _unlabelled(files, inner), [])
    split_dirs = [d for d in dirs if d.name.lower() in SPLITS]
    for wrong in (d for d in dirs if d.name.lower() not in SPLITS):
        out.problems.append(f"{wrong}: layout split_folders:{inner} expects only train/, val/, test/ "
                            f"at the top, not '{wrong.name}/'")
    if not split_dirs:
        out.problems.append(f"{root}: no train/, val/ or test/ folder inside")
    mapping = _split_folder_choices(d.name for d in split_dirs)
    for split_dir in split_dirs:
        out.extend(_PLAIN_READERS[inner](split_dir, root.name, mapping[split_dir.name.lower()]))
    return out


def _check_layout_name(layout: str) -> None:
    inner = layout[len(SPLIT_FOLDERS_PREFIX):] if layout.startswith(SPLIT_FOLDERS_PREFIX) else None
    if layout in LAYOUTS or inner in SPLIT_FOLDER_INNER:
        return
    accepted = ["auto", *LAYOUTS, *(SPLIT_FOLDERS_PREFIX + i for i in SPLIT_FOLDER_INNER)]
    raise DataValidationError(f"unknown layout {layout!r}; set data.layout= to one of {accepted}\n"
                              f"expected trees:\n{_EXPECTED_TREES}")


def _collect(root: Path, layout: str) -> _Collected:
    all_splits = tuple(SPLITS)
    if layout.startswith(SPLIT_FOLDERS_PREFIX):
        return _read_split_folders(root, layout[len(SPLIT_FOLDERS_PREFIX):])
    if layout == "genimage":
        return _read_genimage(root)
    return _PLAIN_READERS[layout](root, root.name, all_splits)


# --------------------------------------------------------------------------------------------------
# Public entry points


def read_layout(
    root: Path,
    layout: str = "auto",
    *,
    split_fractions: dict | None = None,
    seed: int = 0,
    min_side: int = DEFAULT_MIN_SIDE,
    cache: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[BadFile]]:
    """Read ``root`` in ``layout`` ("auto" detects it) into (manifest of good files, bad files).

    Every file is decoded and hashed (:func:`genguard.data.files.check_files`): the first time over
    ``workers`` processes (None: every core; decoding is CPU-bound), and with ``cache`` (an SQLite
    file) a rerun costs one ``stat`` per unchanged file. Folder-structure mistakes raise
    ``DataValidationError`` naming every offending folder; unusable files come back as ``BadFile``s
    for ``validate_manifest`` to fail on or exclude.

    ``split_fractions``: shares of train/val/test for hash-split files (default 0.7/0.1/0.2, normalised
    to sum 1); ``seed`` changes the hash split; ``min_side``: shorter image side below which a file is
    a ``BadFile`` ("too small"); ``progress``: show progress (``TQDM_DISABLE=1`` also hides it).
    """
    root = _existing_dir(root)
    fractions = normalised_fractions(split_fractions)
    if layout == "auto":
        layout = detect_layout(root)
        log.info("detected layout %s in %s", layout, root)
    _check_layout_name(layout)

    collected = _collect(root, layout)
    if collected.problems:
        shown = collected.problems[:20]
        more = f"\n  ... and {len(collected.problems) - 20} more" if len(collected.problems) > 20 else ""
        raise DataValidationError(
            f"{root} does not follow layout {layout}:\n  " + "\n  ".join(shown) + more
            + f"\nexpected trees:\n{_EXPECTED_TREES}\nRename the folders, or name the right layout "
              f"with data.layout=")
    if not collected.candidates and not collected.bad_files:
        raise DataValidationError(f"{root} (layout {layout}) holds no image files")

    candidates = collected.candidates
    results = check_files([c.path for c in candidates], ImageCheck(min_side=min_side), cache=cache, workers=workers,
                          desc=f"checking images in {root.name}", show_progress=progress)

    bad_files = list(collected.bad_files)
    good: list[tuple[_Candidate, ImageInfo, str]] = []
    for candidate, result in zip(candidates, results, strict=True):
        if isinstance(result, BadFile):
            bad_files.append(result)
        else:
            good.append((candidate, result, candidate.path.relative_to(root).as_posix()))

    # Identical bytes split by hash share the key of their first path, so they land in one split.
    group_key: dict[tuple[str, tuple[str, ...]], str] = {}
    for candidate, info, rel in sorted(good, key=lambda item: item[2]):
        group_key.setdefault((info.sha256, candidate.split_choices), rel)

    rows = []
    for candidate, info, _ in good:
        choices = candidate.split_choices
        if len(choices) == 1:
            split = choices[0]
        else:
            split = choose_split(hash_split_unit(seed, group_key[(info.sha256, choices)]), choices, fractions)
        rows.append({
            "path": str(candidate.path), "label": candidate.label, "generator": candidate.generator,
            "split": split, "sha256": info.sha256, "width": info.width, "height": info.height,
            "source": candidate.path.relative_to(root.parent).as_posix(), "licence": "unknown",
        })
    manifest = normalise_manifest(pd.DataFrame(rows) if rows else AIGI_SCHEMA.empty(), AIGI_SCHEMA)
    bad_files.sort(key=lambda b: b.path)
    log.info("read %d images (%d bad files) from %s as %s; per split: %s", len(manifest), len(bad_files),
             root, layout, manifest["split"].value_counts().to_dict())
    return manifest, bad_files


def ingest(source: str | Path, layout: str = "auto", **kw) -> tuple[pd.DataFrame, list[BadFile]]:
    """``read_layout`` for a user-given folder, with an error naming the ``data.source=`` fix."""
    path = Path(source).expanduser() if source not in (None, "") else None
    if path is None:
        raise DataValidationError("no data source given; set data.source=<folder holding your images>")
    return read_layout(_existing_dir(path), layout, **kw)
