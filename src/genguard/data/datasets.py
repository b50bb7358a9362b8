"""Datasets that can travel to another process as a spec (a JSON dict plus files it names).

The DeepSpeed ranks are separate processes: the training node writes each dataset with
:func:`dataset_to_spec` and every rank rebuilds it with :func:`dataset_from_spec`. A dataset type
takes part by defining ``to_spec(folder) -> dict`` and registering a ``from_spec`` function under
its ``kind`` in :data:`DATASET_KINDS`; a family's dataset names its module in the spec so a rank
can import it (and so register it) first. One mechanism for every family: no list of types here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from genguard.registry import Registry

DATASET_KINDS: Registry[Dataset] = Registry("dataset kind")


def dataset_to_spec(dataset: Dataset, folder: Path) -> dict[str, Any]:
    to_spec = getattr(dataset, "to_spec", None)
    if to_spec is None:
        raise TypeError(f"{type(dataset).__name__} cannot be shipped to DeepSpeed ranks: give it a "
                        "to_spec(folder) method and register its kind in genguard.data.datasets.DATASET_KINDS")
    folder.mkdir(parents=True, exist_ok=True)
    spec = dict(to_spec(folder))
    spec.setdefault("module", type(dataset).__module__)
    return spec


def dataset_from_spec(spec: dict[str, Any]) -> Dataset:
    importlib.import_module(spec["module"])
    return DATASET_KINDS.build(spec["kind"], spec=spec)


def save_extras(extras: dict[str, torch.Tensor], folder: Path) -> str | None:
    if not extras:
        return None
    path = folder / "extras.safetensors"
    save_file({k: v.contiguous() for k, v in extras.items()}, str(path))
    return str(path)


def load_extras(path: str | None) -> dict[str, torch.Tensor] | None:
    return load_file(path) if path else None


def check_extras(extras: dict[str, torch.Tensor] | None, rows: int) -> dict[str, torch.Tensor]:
    extras = dict(extras or {})
    for name, tensor in extras.items():
        if len(tensor) != rows:
            raise ValueError(f"extra input {name!r} has {len(tensor)} rows for {rows} dataset rows")
    return extras


class FeatureRows(Dataset):
    """Cached features -> {"features", "label", "index", **extras} (frozen-backbone training)."""

    kind = "feature_rows"

    def __init__(self, features: torch.Tensor, labels: torch.Tensor,
                 extras: dict[str, torch.Tensor] | None = None) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features, self.labels = features, labels.long()
        self.extras = check_extras(extras, len(features))

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index], "label": self.labels[index], "index": torch.tensor(index),
                **{name: tensor[index] for name, tensor in self.extras.items()}}

    def to_spec(self, folder: Path) -> dict[str, Any]:
        path = folder / "features.safetensors"
        save_file({"features": self.features.contiguous(), "labels": self.labels.contiguous()}, str(path))
        return {"kind": self.kind, "file": str(path), "extras_file": save_extras(self.extras, folder)}


@DATASET_KINDS.register(FeatureRows.kind)
def _feature_rows_from_spec(spec: dict[str, Any]) -> FeatureRows:
    tensors = load_file(spec["file"])
    return FeatureRows(tensors["features"], tensors["labels"], extras=load_extras(spec.get("extras_file")))


class FeatureBank(Dataset):
    """K cached views of each row (e.g. augmented copies of a training image): every time a row is read
    one of its K views is drawn, from the global torch RNG (seeded and checkpointed by the training loop).

    ``features`` is [K, N, d]; the dict matches :class:`FeatureRows`, so a model cannot tell them apart.
    """

    kind = "feature_bank"

    def __init__(self, features: torch.Tensor, labels: torch.Tensor,
                 extras: dict[str, torch.Tensor] | None = None) -> None:
        if features.dim() != 3 or features.shape[1] != len(labels):
            raise ValueError(f"a feature bank is [views, rows, dim] with {len(labels)} rows, got {tuple(features.shape)}")
        self.features, self.labels = features, labels.long()
        self.extras = check_extras(extras, len(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        view = int(torch.randint(self.features.shape[0], ()))
        return {"features": self.features[view, index], "label": self.labels[index], "index": torch.tensor(index),
                **{name: tensor[index] for name, tensor in self.extras.items()}}

    def to_spec(self, folder: Path) -> dict[str, Any]:
        path = folder / "feature_bank.safetensors"
        save_file({"features": self.features.contiguous(), "labels": self.labels.contiguous()}, str(path))
        return {"kind": self.kind, "file": str(path), "extras_file": save_extras(self.extras, folder)}


@DATASET_KINDS.register(FeatureBank.kind)
def _feature_bank_from_spec(spec: dict[str, Any]) -> FeatureBank:
    tensors = load_file(spec["file"])
    return FeatureBank(tensors["features"], tensors["labels"], extras=load_extras(spec.get("extras_file")))
