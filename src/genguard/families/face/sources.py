"""Face-forgery data sources (entries of :data:`genguard.data.sources.SOURCES`).

``face:embedded`` builds (or finds cached) the embedded default: real faces shipped in packages,
pseudo-videos of them, and three forgery kinds; protocol "train on real + SBI, test on every kind".
``face:folder`` reads a folder in a published layout (FaceForensics++, Celeb-DF, DFDC/DFDCP,
DeepfakeBench; :mod:`genguard.families.face.layouts`), decodes and crops it (cached per video hash and
crop policy, :mod:`genguard.families.face.frames`), plus the published test splits of the folders in
``data.test_sources`` (cross-dataset testing: train on FF++, test on Celeb-DF, DFDC, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from genguard.data.manifest import BadFile, DataValidationError, normalise_manifest
from genguard.data.sources import FOLDER, SourceResult, register_source
from genguard.families.face.embedded import TRAIN_FORGERIES, build_default_face_dataset
from genguard.families.face.frames import FramePolicy, frames_manifest
from genguard.families.face.layouts import read_videos
from genguard.families.face.schema import FACE_SCHEMA, REAL

#: The parameter naming the manipulations a detector trains on (with the reals).
TRAIN_SETTING = "train_forgeries"
DEFAULT_FRAMES_DIR = "data/02_intermediate/face_crops"


@register_source("face", "embedded")
class EmbeddedSource:
    # Self-blended images only, as the SBI protocol; the other kinds are the cross-forgery test.
    default_train_groups = (REAL, *TRAIN_FORGERIES)

    def ingest(self, data: dict[str, Any]) -> SourceResult:
        embedded = data["embedded"]
        manifest = build_default_face_dataset(Path(embedded["out_dir"]), embedded.get("config") or {})
        return SourceResult(manifest, [])


def frame_policy(data: dict[str, Any]) -> FramePolicy:
    return FramePolicy(**(data.get("frames") or {}))


def _read_one(root: str, data: dict[str, Any], layout: str, options: dict[str, Any]
              ) -> tuple[pd.DataFrame, list[BadFile]]:
    videos, bad = read_videos(root, layout, **options)
    manifest, bad_frames = frames_manifest(
        videos, frame_policy(data), data.get("frames_dir") or DEFAULT_FRAMES_DIR,
        workers=data.get("file_check_workers"), check_cache=data.get("file_check_cache"),
        min_side=data.get("min_side", 32))
    return manifest, [*bad, *bad_frames]


@register_source("face", FOLDER)
class FolderSource:
    # FF++'s protocol trains on every manipulation it ships (real + the five methods).
    default_train_groups = None

    def ingest(self, data: dict[str, Any]) -> SourceResult:
        layout_options = {key: data[key] for key in ("compression", "methods", "split_dir", "test_list",
                                                      "dataset", "json_names", "frames_root", "overlap")
                          if data.get(key) is not None}
        manifest, bad_files = _read_one(data["source"], data, data.get("layout", "auto"), layout_options)
        parts = [manifest]
        # Cross-dataset test sets (Celeb-DF, DFDC, ... after training on FF++): each folder's own
        # published test split (Celeb-DF's List_of_testing_videos.txt, DFDC's test set, ...), as the
        # papers test; its dataset name keeps it a test set of its own in the evaluation.
        for entry in data.get("test_sources") or []:
            # a folder (layout detected), or {source: folder, layout: ..., <layout options>}: DFD, for
            # one, is read from DeepfakeBench's JSON (json_names: [DeepFakeDetection])
            spec = dict(entry) if isinstance(entry, dict) else {"source": entry}
            root = str(spec.pop("source"))
            layout = spec.pop("layout", "auto")
            frame, bad = _read_one(root, data, layout, {"overlap": "keep", **spec})
            test = frame[frame["split"] == "test"]
            if test.empty:
                raise DataValidationError(
                    f"the test source {root} has no test videos in its published split (splits found: "
                    f"{sorted(frame['split'].unique())}); add its test list, or drop it from data.test_sources")
            parts.append(test)
            bad_files.extend(bad)
        if len(parts) > 1:
            manifest = pd.concat(parts, ignore_index=True)
        return SourceResult(normalise_manifest(manifest, FACE_SCHEMA), bad_files)
