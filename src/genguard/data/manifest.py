"""The manifest: one row per image, the unit every AIGI/face pipeline versions and validates.

Columns (all required):
    path      str   file path (absolute, or relative to the project root)
    label     int   0 = real, 1 = fake
    generator str   the subset the row belongs to (ForenSynths/UFD: the ``<generator>`` folder;
                    GenImage: the generator folder; embedded default: the generator family). Reals
                    carry the subset they were published with, so per-generator metrics compare a
                    generator's fakes against that subset's reals, as the published protocols do.
    split     str   train | val | test
    sha256    str   hex digest of the file bytes (duplicate / leakage detection)
    width     int   pixels
    height    int   pixels
    source    str   provenance (package/photo id, or the folder it was read from)
    licence   str   licence of the file, "unknown" when the layout does not say
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "label", "generator", "split", "sha256", "width", "height", "source", "licence",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


class DataValidationError(ValueError):
    """Raised before training when the data cannot be trusted; the message names files and the fix."""


@dataclass(frozen=True)
class BadFile:
    """A file that could not be used, with a human-readable reason."""

    path: str
    reason: str

    def __str__(self) -> str:  # one line per file in error messages
        return f"{self.path}: {self.reason}"


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("label", "width", "height") else "object")
                         for c in MANIFEST_COLUMNS})


def normalise_manifest(frame: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes fixed, so parquet files of equal content are byte-stable."""
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataValidationError(f"manifest lacks columns {missing}; expected {list(MANIFEST_COLUMNS)}")
    out = frame.loc[:, list(MANIFEST_COLUMNS)].copy()
    for column in ("label", "width", "height"):
        out[column] = out[column].astype("int64")
    for column in ("path", "generator", "split", "sha256", "source", "licence"):
        out[column] = out[column].astype(str)
    return out.sort_values(["split", "generator", "label", "path"], kind="stable").reset_index(drop=True)
