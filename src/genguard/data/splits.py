"""Splits: which rows train, validate and test.

Two pieces every family shares:

* hash splits (:func:`hash_split_unit`, :func:`choose_split`): a row's split depends only on its own
  key (a path, a video id, an identity) and a seed, so adding data never moves existing rows between
  splits (a test example of data version N is never a training example of version N+1), and on
  every machine and Python the same (sha256, not ``hash()``);
* the evaluation protocol (:func:`protocol_splits`): training and validation may be limited to some
  groups (AIGI papers train on one generator family and test on every family; face papers train on
  FF++ and test on Celeb-DF), test always covers every group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd

from genguard.data.manifest import SPLITS, DataValidationError

DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}


def normalised_fractions(split_fractions: dict | None) -> dict[str, float]:
    fractions = dict(DEFAULT_SPLIT_FRACTIONS if split_fractions is None else split_fractions)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise DataValidationError(f"data.split_fractions has unknown splits {unknown}; use {list(SPLITS)}")
    if any(float(v) < 0 for v in fractions.values()) or sum(float(v) for v in fractions.values()) <= 0:
        raise DataValidationError(
            f"data.split_fractions must be non-negative and not all zero, got {fractions}")
    return {s: float(fractions.get(s, 0.0)) for s in SPLITS}


def hash_split_unit(seed: int, key: str) -> float:
    """A number in [0, 1), the same on every machine and Python (unlike ``hash()``)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose_split(unit: float, choices: Sequence[str], fractions: dict[str, float]) -> str:
    """The split among ``choices`` that ``unit`` falls in, with ``fractions`` renormalised over them."""
    weights = [fractions[s] for s in choices]
    total = sum(weights)
    if total <= 0:
        return choices[0]
    threshold = 0.0
    for split, weight in zip(choices, weights, strict=True):
        threshold += weight / total
        if unit < threshold:
            return split
    # Float rounding can leave unit just above the last threshold: take the last split with weight.
    return next(s for s, w in zip(reversed(choices), reversed(weights), strict=True) if w > 0)


def protocol_splits(manifest: pd.DataFrame, *, group_column: str, train_groups: Sequence[str] | None = None,
                    max_per_group: int | None = None, seed: int = 0, setting: str | None = None
                    ) -> dict[str, pd.DataFrame]:
    """``{"train", "val", "test"}`` frames; train/val limited to ``train_groups`` (None: every group).
    ``setting``: the parameter that chose them, named in errors (default ``data.train_<group>s``)."""
    if train_groups:
        available = sorted(manifest.loc[manifest["split"] == "train", group_column].unique())
        unknown = sorted(set(train_groups) - set(available))
        if unknown:
            raise DataValidationError(
                f"the training {group_column}s {unknown} have no training rows; {group_column}s with "
                f"training rows: {available}. Fix: set {setting or f'data.train_{group_column}s'} to some of "
                "those (or null for the data source's own protocol).")
        in_train_group = manifest[group_column].isin(train_groups)
    else:
        in_train_group = pd.Series(True, index=manifest.index)
    parts = {
        "train": manifest[(manifest["split"] == "train") & in_train_group],
        "val": manifest[(manifest["split"] == "val") & in_train_group],
        "test": manifest[manifest["split"] == "test"],
    }
    if max_per_group:
        # Quick runs on big folders: a deterministic, class- and group-balanced subset.
        parts = {name: (frame.groupby([group_column, "label"], group_keys=False)
                        .apply(lambda g: g.sample(n=min(len(g), max_per_group), random_state=seed)))
                 for name, frame in parts.items()}
    return {name: frame.reset_index(drop=True) for name, frame in parts.items()}
