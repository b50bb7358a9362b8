"""The contract between a detector method and the shared training engine / evaluation.

A detector is an ``nn.Module`` mapping images to one logit per image (P(fake) = sigmoid(logit)).
It splits into ``encode`` (backbone) and ``classify`` (everything after), so a frozen-backbone method
can be trained on cached features. The engine only ever calls:

- ``training_loss(batch)`` -> (scalar loss, {name: float}) with batch keys ``label`` and either
  ``image`` or ``features``;
- ``parameter_groups(lr, weight_decay)`` -> optimizer groups (methods with several learning rates);
- ``gradient_hook()`` -> None or a callable run after backward, before the optimizer step. It may
  edit ``.grad`` in place, or return a *deferred* loss whose gradient the engine back-propagates too
  before stepping (DGS-Net's gradient surgery plugs in here, not in a forked loop: its loss stops at
  a detached copy of the image features, the hook edits that feature gradient and returns
  ``(features * edited_gradient).sum()`` so the encoder sees the edited gradient, in one pass);
- ``training_stages()`` / ``begin_stage(name, train_set)`` -> methods trained in stages (DGS-Net:
  a frozen linear-probe teacher, then the student) get one engine run per stage.

Methods that read captions (``uses_captions``) get a row-aligned ``text_features`` tensor in every
batch: the frozen text tower's embedding of each image's caption, computed once by the pipeline.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Detector(nn.Module):
    #: True when ``encode`` has no trainable parameters; the pipeline then caches features once.
    frozen_backbone: bool = False
    #: True when training batches need ``text_features`` (per-image caption embeddings).
    uses_captions: bool = False
    #: State-dict prefixes of frozen towers rebuilt from a *pretrained* spec, hence not stored.
    frozen_pretrained_prefixes: tuple[str, ...] = ("backbone.",)

    def __init__(self, init_spec: dict[str, Any]) -> None:
        super().__init__()
        # What ``genguard.methods.build_detector`` needs to rebuild this exact module (no pickling).
        self.init_spec = init_spec

    # --- forward path -------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encode(images))

    def logits_for(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "features" in batch:
            return self.classify(batch["features"])
        return self(batch["image"])

    # --- training hooks -----------------------------------------------------------------------
    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits_for(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
        return loss, {"bce": float(loss.detach())}

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    def gradient_hook(self):
        return None

    def training_stages(self) -> list[tuple[str, dict[str, Any]]]:
        """(stage name, overrides of the train config) in order; one engine run each."""
        return [("main", {})]

    def begin_stage(self, name: str, train_set: Any) -> None:
        """Called before each stage's engine run (freeze/unfreeze parts, fit data-derived buffers)."""

    # --- inputs ---------------------------------------------------------------------------------
    @property
    def needs_captions_at_inference(self) -> bool:
        return False

    def preprocess_overrides(self) -> dict[str, Any]:
        """Input options the method fixes (normalisation statistics, patch selection)."""
        return {}

    @torch.no_grad()
    def encode_captions(self, captions: list[str], batch_size: int = 256) -> torch.Tensor:
        """Frozen text-tower embeddings of ``captions`` (one row each; each distinct caption once)."""
        unique = sorted(set(captions))
        rows = [self.backbone.encode_prompts(unique[i:i + batch_size]) for i in range(0, len(unique), batch_size)]
        table = torch.cat(rows) if rows else torch.zeros(0, self.backbone.embed_dim)
        position = {caption: i for i, caption in enumerate(unique)}
        return table[[position[c] for c in captions]].float().contiguous()

    # --- persistence --------------------------------------------------------------------------
    def storable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to save. A *pretrained* backbone's frozen weights are rebuilt from its spec
        (open_clip tag or local file), so only what training changed is stored; a random-init
        backbone is stored whole (its init is seeded, but storing it keeps files self-contained)."""
        state = self.state_dict()
        spec = self.init_spec.get("backbone") or {}
        if not spec.get("pretrained"):
            return state
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in state.items() if not k.startswith(self.frozen_pretrained_prefixes) or k in trainable}

    def prepare_for_inference(self) -> Detector:
        """Hook for merging adapters etc.; called once after loading for prediction."""
        return self.eval()


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
