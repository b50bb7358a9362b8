"""AIGI data sources (entries of :data:`genguard.data.sources.SOURCES`).

``aigi:embedded`` builds (or finds cached) the embedded default dataset: real photo crops versus
four generator families, protocol "train on ``gan_upsampler``, test on all four".
``aigi:folder`` reads a user's folder in a published layout (ForenSynths, GenImage, ...; see
:mod:`genguard.families.aigi.layouts`), plus the test-only collections of ``data.test_sources``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from genguard.data.manifest import normalise_manifest
from genguard.data.sources import FOLDER, SourceResult, register_source
from genguard.families.aigi.embedded import build_default_aigi_dataset
from genguard.families.aigi.layouts import ingest
from genguard.families.aigi.schema import AIGI_SCHEMA


@register_source("aigi", "embedded")
class EmbeddedSource:
    default_train_groups = ("gan_upsampler",)  # the papers' protocol: train on one family, test on all

    def ingest(self, data: dict[str, Any]) -> SourceResult:
        embedded = data["embedded"]
        photo_root = Path(embedded["photo_root"]) if embedded.get("photo_root") else None
        manifest = build_default_aigi_dataset(Path(embedded["out_dir"]), embedded.get("config") or {},
                                              photo_root=photo_root)
        return SourceResult(manifest, [])


@register_source("aigi", FOLDER)
class FolderSource:
    default_train_groups = None  # every generator with training rows

    def ingest(self, data: dict[str, Any]) -> SourceResult:
        options = {"split_fractions": data.get("split_fractions"), "seed": data.get("seed", 0),
                   "min_side": data.get("min_side", 32), "cache": data.get("file_check_cache"),
                   "workers": data.get("file_check_workers")}
        manifest, bad_files = ingest(data["source"], data.get("layout", "auto"), **options)
        suites = [manifest]
        # Test-only collections (the papers' open-world suites): every file is a test image, and the
        # subset is named <suite>/<subset> so equal subset names in two suites stay apart.
        for suite, root in (data.get("test_sources") or {}).items():
            frame, bad = ingest(root, "forensynths", **options)
            frame = frame.assign(split="test", generator=suite + "/" + frame["generator"].astype(str))
            suites.append(frame)
            bad_files.extend(bad)
        if len(suites) > 1:
            manifest = normalise_manifest(pd.concat(suites, ignore_index=True), AIGI_SCHEMA)
        return SourceResult(manifest, bad_files)
