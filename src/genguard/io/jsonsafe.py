"""Values made safe for strict JSON (MLflow tables, DVC metrics, browsers reject ``NaN``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so ``json.dumps`` needs no default hook."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def nan_to_none(obj: Any) -> Any:
    """Recursively replace NaN/inf floats by None (and numpy scalars by Python ones)."""
    if isinstance(obj, dict):
        return {key: nan_to_none(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(value) for value in obj]
    obj = plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
