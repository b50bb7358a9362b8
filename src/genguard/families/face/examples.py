"""Tiny, runnable examples of every face-forgery detector: a spec that builds in a second on a CPU and
an in-memory dataset of the right shape. The method contract test runs each method from these, and
they make a quick smoke test for anyone adding a detector.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from genguard.families.face.methods import DETECTORS

_TINY = {"name": "genguard-tiny-vit", "pretrained": None}
_OPTIONS: dict[str, dict[str, Any]] = {
    # 2 blocks x 4 projections x (64 + 1 + 64) x 2 = 2,064 residual parameters
    "effort": {"backbone": _TINY, "residual_rank": 2},
    # both blocks, both residual additions, rank 4: 4 sites x 64 x 4 = 1,024 basis parameters
    "selop": {"backbone": _TINY, "rank": 4, "blocks": [0, 1], "init_samples": 16, "init_batch_size": 8},
    # K = 2 subspaces of rank 2 on every projection; the probe keeps half of the 8 projections
    "masm": {"backbone": _TINY, "subspaces": 2, "subspace_rank": 2, "mask_unit": "linear", "head_epochs": 1,
             "probe_batches": 2, "probe_batch_size": 4, "select_ratio": 0.5},
}


def tiny_spec(method: str) -> dict[str, Any]:
    """An ``init_spec`` for :func:`genguard.registry.build_model`."""
    if method not in DETECTORS:
        raise KeyError(f"no tiny example for {method!r}; face detectors: {DETECTORS}")
    return {"family": "face", "method": method, **_OPTIONS[method]}


class ExampleFaces(Dataset):
    """Crude face crops: a textured background, a skin-toned ellipse with darker eyes and mouth; fakes
    (odd rows) carry a brighter blob in the face centre, so there is something to learn. Normalised with
    the backbone's statistics, as the pipeline's images are."""

    def __init__(self, model: Any, n: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        backbone = model.backbone
        size = backbone.image_size
        self.labels = torch.arange(n) % 2
        axis = torch.linspace(-1.0, 1.0, size)
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        face = ((x / 0.6) ** 2 + (y / 0.8) ** 2 <= 1.0).float()
        features = sum(((x - cx) ** 2 + (y - cy) ** 2 <= r ** 2).float()
                       for cx, cy, r in ((-0.25, -0.2, 0.1), (0.25, -0.2, 0.1), (0.0, 0.4, 0.12)))
        blob = torch.exp(-(x ** 2 + y ** 2) / 0.08)
        images = []
        for label in self.labels.tolist():
            background = torch.rand(3, 1, 1, generator=generator) * 0.6 + 0.1 * torch.rand(3, size, size,
                                                                                           generator=generator)
            skin = torch.tensor([0.8, 0.6, 0.5])[:, None, None] * (0.7 + 0.3 * torch.rand(1, generator=generator))
            image = background * (1 - face) + skin * face - 0.4 * features * face
            if label:
                image = image + 0.35 * blob
            image = image + 0.03 * torch.randn(3, size, size, generator=generator)
            images.append(image.clamp(0.0, 1.0))
        mean = torch.tensor(backbone.image_mean)[:, None, None]
        std = torch.tensor(backbone.image_std)[:, None, None]
        self.images = (torch.stack(images) - mean) / std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index], "index": torch.tensor(index)}


def example_dataset(model: Any, n: int = 16, seed: int = 0) -> Dataset:
    return ExampleFaces(model, n, seed)
