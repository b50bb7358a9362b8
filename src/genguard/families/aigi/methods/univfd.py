"""UnivFD (Ojha et al., CVPR 2023, arXiv 2302.10174): frozen CLIP image encoder + one linear layer.

Only ``head`` is trained; the pipeline therefore caches image features once and trains on them.
The original uses the unnormalised projected embedding (768-d for ViT-L/14) and Adam at lr 1e-4.
"""

from __future__ import annotations

import torch
from torch import nn

from genguard.families.aigi.detector import Detector
from genguard.models.backbones import Backbone, create_backbone


class UnivFD(Detector):
    frozen_backbone = True

    def __init__(self, backbone: Backbone, init_spec: dict) -> None:
        super().__init__(init_spec)
        self.backbone = backbone.freeze().eval()
        self.head = nn.Linear(backbone.embed_dim, 1)

    def train(self, mode: bool = True) -> UnivFD:
        super().train(mode)
        self.backbone.eval()  # frozen: keep dropout/norm statistics in inference mode
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone.encode_image(images)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(-1)


def build_univfd(backbone: dict | None = None, **unused) -> UnivFD:
    if unused:
        raise ValueError(f"univfd takes no method options, got {sorted(unused)}")
    model = UnivFD(create_backbone(backbone), init_spec={"method": "univfd", "backbone": backbone or {}})
    return model
