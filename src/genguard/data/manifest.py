"""The manifest: one row per example, the unit every pipeline versions, validates and splits.

A family describes its rows with a :class:`ManifestSchema`: the columns it requires (with dtypes,
in order), the labels it allows, the column its evaluation groups by, and the *group* columns
whose values must never cross splits (a file hash, a source photo, a video, an identity).
:func:`normalise_manifest` fixes the order and dtypes of the schema's columns and keeps every other
column after them: a column the core does not know (``video_id``, ``frame_index``, ``prompt``)
survives, it is never dropped.

Core columns of file-backed manifests (:data:`FILE_COLUMNS`):
    path      str   file path (absolute, or relative to the project root)
    label     int   the class (binary families: 0 = real, 1 = fake)
    split     str   train | val | test
    sha256    str   hex digest of the file bytes (duplicate / leakage detection)
    source    str   provenance (package/photo id, or the folder it was read from)
    licence   str   licence of the file, "unknown" when the source does not say
Image manifests add ``width`` and ``height`` (pixels).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

FILE_COLUMNS: dict[str, str] = {"path": "str", "label": "int64", "split": "str", "sha256": "str",
                                "source": "str", "licence": "str"}
IMAGE_COLUMNS: dict[str, str] = {**FILE_COLUMNS, "width": "int64", "height": "int64"}


class DataValidationError(ValueError):
    """Raised before training when the data cannot be trusted; the message names files and the fix."""


@dataclass(frozen=True)
class BadFile:
    """A file that could not be used, with a human-readable reason."""

    path: str
    reason: str

    def __str__(self) -> str:  # one line per file in error messages
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ManifestSchema:
    """What a family's manifest rows must hold; see the module docstring."""

    name: str
    columns: tuple[tuple[str, str], ...]                 # (column, dtype "str" | "int64"), required, in order
    group_column: str                                    # what evaluation groups by (AIGI: generator)
    label_values: tuple[int, ...] | None = (0, 1)        # None: any non-negative integer class
    leakage_groups: tuple[str, ...] = ("sha256",)        # no value of these columns in two splits
    sort_by: tuple[str, ...] = ("split", "label", "path")
    file_column: str | None = "path"
    size_columns: tuple[str, str] | None = ("width", "height")
    # Set when the group decides the label: rows of this group are label 0, every other group label 1
    # (face forgery: forgery "real" vs the manipulations). None: groups hold both classes (AIGI).
    negative_group: str | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def empty(self) -> pd.DataFrame:
        return pd.DataFrame({name: pd.Series(dtype="int64" if dtype == "int64" else "object")
                             for name, dtype in self.columns})


def image_schema(name: str, extra: dict[str, str], *, group_column: str, leakage_groups: tuple[str, ...],
                 sort_by: tuple[str, ...], label_values: tuple[int, ...] | None = (0, 1),
                 negative_group: str | None = None) -> ManifestSchema:
    """A schema for image rows: the core file + size columns, then the family's own."""
    columns = {**IMAGE_COLUMNS, **extra}
    return ManifestSchema(name=name, columns=tuple(columns.items()), group_column=group_column,
                          label_values=label_values, leakage_groups=leakage_groups, sort_by=sort_by,
                          negative_group=negative_group)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalise_manifest(frame: pd.DataFrame, schema: ManifestSchema) -> pd.DataFrame:
    """Schema columns first (order and dtypes fixed), every other column kept after them; rows sorted,
    so parquet files of equal content are byte-stable."""
    missing = [c for c in schema.column_names if c not in frame.columns]
    if missing:
        raise DataValidationError(f"{schema.name} manifest lacks columns {missing}; "
                                  f"expected {list(schema.column_names)} (plus any family columns)")
    others = [c for c in frame.columns if c not in schema.column_names]
    out = frame.loc[:, [*schema.column_names, *others]].copy()
    for column, dtype in schema.columns:
        out[column] = out[column].astype("int64") if dtype == "int64" else out[column].astype(str)
    sort_by = [c for c in schema.sort_by if c in out.columns]
    return out.sort_values(sort_by, kind="stable").reset_index(drop=True)
