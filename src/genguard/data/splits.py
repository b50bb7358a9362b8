"""The evaluation protocol over a manifest: which rows train, which validate, which test.

AIGI papers train on one generator family and test on every family; ``train_generators`` names the
training families (None: every family that has training rows). Test always covers all generators.
"""

from __future__ import annotations

import pandas as pd

from genguard.data.manifest import DataValidationError


def protocol_splits(manifest: pd.DataFrame, train_generators: list[str] | None = None,
                    max_per_group: int | None = None, seed: int = 0) -> dict[str, pd.DataFrame]:
    if train_generators:
        available = sorted(manifest.loc[manifest["split"] == "train", "generator"].unique())
        unknown = sorted(set(train_generators) - set(available))
        if unknown:
            raise DataValidationError(
                f"data.train_generators names {unknown}, which have no training rows; generators with "
                f"training rows: {available}. Fix: set data.train_generators to some of those (or null).")
        in_train_family = manifest["generator"].isin(train_generators)
    else:
        in_train_family = pd.Series(True, index=manifest.index)
    parts = {
        "train": manifest[(manifest["split"] == "train") & in_train_family],
        "val": manifest[(manifest["split"] == "val") & in_train_family],
        "test": manifest[manifest["split"] == "test"],
    }
    if max_per_group:
        # Quick runs on big folders: a deterministic, class- and generator-balanced subset.
        parts = {name: (frame.groupby(["generator", "label"], group_keys=False)
                        .apply(lambda g: g.sample(n=min(len(g), max_per_group), random_state=seed)))
                 for name, frame in parts.items()}
    return {name: frame.reset_index(drop=True) for name, frame in parts.items()}
