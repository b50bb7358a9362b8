"""AIGI detectors: :class:`genguard.models.detector.BinaryDetector` on images, plus captions.

Methods override ``training_loss``, ``parameter_groups`` and ``training_stages``/``begin_stage``
(DGS-Net: a frozen linear-probe teacher, then the student); DGS-Net's gradient surgery is a tensor
hook registered in its ``training_loss``. Methods that read captions (``uses_captions``) get a
row-aligned ``text_features`` tensor in every batch: the frozen text tower's embedding of each
image's caption, computed once by the pipeline.
"""

from __future__ import annotations

from typing import Any

import torch

from genguard.models.detector import BinaryDetector

FAMILY = "aigi"


class Detector(BinaryDetector):
    #: True when training batches need ``text_features`` (per-image caption embeddings).
    uses_captions: bool = False

    def __init__(self, init_spec: dict[str, Any]) -> None:
        super().__init__(FAMILY, init_spec)

    @property
    def needs_captions_at_inference(self) -> bool:
        return False

    @torch.no_grad()
    def encode_captions(self, captions: list[str], batch_size: int = 256) -> torch.Tensor:
        """Frozen text-tower embeddings of ``captions`` (one row each; each distinct caption once)."""
        unique = sorted(set(captions))
        rows = [self.backbone.encode_prompts(unique[i:i + batch_size]) for i in range(0, len(unique), batch_size)]
        table = torch.cat(rows) if rows else torch.zeros(0, self.backbone.embed_dim)
        position = {caption: i for i, caption in enumerate(unique)}
        return table[[position[c] for c in captions]].float().contiguous()
