"""Datasets a family builds itself (the embedded defaults): the on-disk contract of a finished build.

A build folder holds ``manifest.parquet``, ``build_info.json`` (with the ``cache_key`` it was built for)
and the files, at ``<out_dir>/<a>/<b>/<c>/<file>`` (``path_parts`` = 4 path components below it). A
builder writes it into a staging folder that replaces ``out_dir`` only when complete
(:func:`genguard.io.atomic.atomic_dir`); :func:`cached_build` returns the finished build for a key or None.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from genguard.data.manifest import ManifestSchema, normalise_manifest

log = logging.getLogger(__name__)
MANIFEST_FILE = "manifest.parquet"
BUILD_INFO_FILE = "build_info.json"


def cached_build(out_dir: Path, key: str, schema: ManifestSchema, path_parts: int = 4) -> pd.DataFrame | None:
    """The manifest of the build in ``out_dir`` when it was made for ``key`` and all its files are there."""
    info_path, manifest_path = out_dir / BUILD_INFO_FILE, out_dir / MANIFEST_FILE
    if not (info_path.is_file() and manifest_path.is_file()):
        return None
    try:
        if json.loads(info_path.read_text()).get("cache_key") != key:
            return None
        manifest = pd.read_parquet(manifest_path)
    except (OSError, ValueError) as error:
        log.warning("ignoring an unreadable cached build in %s: %s", out_dir, error)
        return None
    # Re-anchor the paths on out_dir as given now (it may be spelled differently, or the folder moved).
    manifest["path"] = [str(out_dir.joinpath(*Path(p).parts[-path_parts:])) for p in manifest["path"]]
    if not all(Path(p).is_file() for p in manifest["path"]):
        log.warning("cached build in %s lacks some of its files; rebuilding", out_dir)
        return None
    return normalise_manifest(manifest, schema)
