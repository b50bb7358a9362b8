"""Batching shared by the training loop and every evaluator: one collate, one seeded loader.

``collate`` stacks tensors of equal shape (images, features, labels) and keeps everything else as a
list (prompts, ids, paths, variable-length clips), so families with non-tensor fields need no
loader of their own. The shuffle order comes from a generator seeded by (seed, epoch): the same
seed gives the same batches in every process, which is what resume and the DeepSpeed ranks rely on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


def collate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rows (dicts) -> one batch dict: equal-shape tensors stacked, numbers as a tensor, the rest as lists."""
    batch: dict[str, Any] = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        first = values[0]
        if isinstance(first, torch.Tensor) and all(isinstance(v, torch.Tensor) and v.shape == first.shape
                                                  for v in values):
            batch[key] = torch.stack(values)
        elif isinstance(first, bool | int | float) and all(type(v) is type(first) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = list(values)
    return batch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch ``epoch`` of a run seeded ``seed`` (same in every process)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                num_workers: int = 0) -> DataLoader:
    if isinstance(dataset, IterableDataset):  # yields whole batches itself (e.g. random patch batches)
        return DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=epoch_generator(seed, epoch),
                      num_workers=num_workers, collate_fn=collate)


def move_batch(batch: dict[str, Any], device: torch.device | str, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Tensors to ``device``; floating tensors to ``dtype`` too (bf16 under DeepSpeed); the rest as is."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype) if (dtype is not None and value.is_floating_point()) else value.to(device)
        out[key] = value
    return out
