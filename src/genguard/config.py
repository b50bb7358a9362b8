"""Parameter blocks -> typed dataclasses, with unknown keys named instead of silently ignored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], values: Mapping[str, Any] | None, section: str) -> T:
    """``cls(**values)``; a misspelt key (``epochz``) raises a ValueError that lists the allowed ones."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {section} options {unknown}; allowed: {sorted(known)}")
    return cls(**values)
