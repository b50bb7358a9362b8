"""Data sources: where a family's manifest comes from, as registry entries instead of branches.

Each family registers its sources under ``<family>:<name>``: the embedded default builders
(``aigi:embedded``) and the readers of published layouts (``aigi:folder`` reads ForenSynths,
GenImage, ... folders). The parameter ``data.source`` names a registered source, or else is a
folder, read by the family's ``folder`` source (which detects or is told ``data.layout``). A
source may declare the evaluation protocol its data was published with (``default_train_groups``:
the embedded AIGI set trains on one generator family); ``data.train_<group>s`` overrides it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from genguard.data.manifest import BadFile, DataValidationError
from genguard.registry import Registry

FOLDER = "folder"


@dataclass
class SourceResult:
    manifest: pd.DataFrame
    bad_files: list[BadFile] = field(default_factory=list)


class DataSource(Protocol):
    #: The groups the source's published protocol trains on (None: every group with training rows).
    default_train_groups: tuple[str, ...] | None

    def ingest(self, data: dict[str, Any]) -> SourceResult: ...


SOURCES: Registry[DataSource] = Registry("data source")


def register_source(family: str, name: str) -> Callable[[Callable[..., DataSource]], Callable[..., DataSource]]:
    return SOURCES.register(f"{family}:{name}")


def resolve_source(family: str, data: dict[str, Any]) -> DataSource:
    """The source ``data.source`` names for ``family``: a registered name, else a folder path."""
    name = str(data.get("source") or "")
    if not name:
        raise DataValidationError("no data source given; set data.source= to a registered source "
                                  f"({', '.join(source_names(family))}) or a folder holding your data")
    key = f"{family}:{name}"
    return SOURCES.build(key if key in SOURCES else f"{family}:{FOLDER}")


def source_names(family: str) -> list[str]:
    prefix = f"{family}:"
    return [name[len(prefix):] for name in SOURCES.names() if name.startswith(prefix) and not name.endswith(FOLDER)]


def train_groups(family: str, data: dict[str, Any], group_column: str, setting: str | None = None
                 ) -> list[str] | None:
    """``data.<setting>`` (default ``train_<group>s``) when set, else the source's own protocol."""
    configured = data.get(setting or f"train_{group_column}s")
    if configured:
        return list(configured)
    default = resolve_source(family, data).default_train_groups
    return list(default) if default else None
