"""Tiny, runnable examples of every AIGI detector: a spec that builds in a second on a CPU and an
in-memory dataset of the right shape. The method contract test runs each method from these, and
they make a quick smoke test for anyone adding a detector.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from genguard.families.aigi.methods import DETECTORS

_TINY_32 = {"name": "genguard-tiny-vit-32", "pretrained": None}
_PATCHES = {"patch_size": 8, "grid": 4}
_OPTIONS: dict[str, dict[str, Any]] = {
    "pin_clip": {"backbone": {"name": "genguard-tiny-vit", "pretrained": None}, "noise_heads": 2},
    "univfd": {"backbone": {"name": "genguard-tiny-vit", "pretrained": None}},
    "ns_net": {"backbone": _TINY_32, "patch_selection": _PATCHES},
    "dgs_net": {"backbone": _TINY_32, "patch_selection": _PATCHES, "teacher_epochs": 1},
}


def tiny_spec(method: str) -> dict[str, Any]:
    """An ``init_spec`` for :func:`genguard.registry.build_model`."""
    if method not in DETECTORS:
        raise KeyError(f"no tiny example for {method!r}; AIGI detectors: {DETECTORS}")
    return {"family": "aigi", "method": method, **_OPTIONS[method]}


class ExampleRows(Dataset):
    """In-memory rows: images (fakes a little brighter, so there is something to learn), labels and,
    for detectors that read captions, caption embeddings."""

    def __init__(self, model: Any, n: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        size = model.backbone.image_size
        self.labels = torch.arange(n) % 2
        self.images = torch.randn(n, 3, size, size, generator=generator) + 0.5 * self.labels[:, None, None, None]
        self.text = (torch.randn(n, model.backbone.embed_dim, generator=generator)
                     if getattr(model, "uses_captions", False) else None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = {"image": self.images[index], "label": self.labels[index], "index": torch.tensor(index)}
        if self.text is not None:
            row["text_features"] = self.text[index]
        return row


def example_dataset(model: Any, n: int = 16, seed: int = 0) -> Dataset:
    return ExampleRows(model, n, seed)
