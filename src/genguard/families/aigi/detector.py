"""AIGI detectors: trainable models (:class:`genguard.training.Trainable`) from images to one logit
per image, P(fake) = sigmoid(logit).

A detector splits into ``encode`` (backbone) and ``classify`` (everything after), so a
frozen-backbone method can be trained on cached features. Batches hold ``label`` and either
``image`` or ``features``; the default objective is BCE on the logits. Methods override
``training_loss``, ``parameter_groups``, ``gradient_hook`` (DGS-Net's gradient surgery plugs in
there: its loss stops at a detached copy of the image features, the hook edits that feature
gradient and returns ``(features * edited_gradient).sum()`` so the encoder sees the edited gradient,
in one pass) and ``training_stages``/``begin_stage`` (DGS-Net: a frozen linear-probe teacher, then
the student).

Methods that read captions (``uses_captions``) get a row-aligned ``text_features`` tensor in every
batch: the frozen text tower's embedding of each image's caption, computed once by the pipeline.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genguard.training import Trainable

FAMILY = "aigi"


class Detector(Trainable):
    #: True when ``encode`` has no trainable parameters; the pipeline then caches features once.
    frozen_backbone: bool = False
    #: True when training batches need ``text_features`` (per-image caption embeddings).
    uses_captions: bool = False
    #: State-dict prefixes of frozen towers rebuilt from a *pretrained* spec, hence not stored.
    frozen_pretrained_prefixes: tuple[str, ...] = ("backbone.",)

    def __init__(self, init_spec: dict[str, Any]) -> None:
        # What ``genguard.registry.build_model`` needs to rebuild this exact module (no pickling).
        super().__init__({"family": FAMILY, **init_spec})

    # --- forward path -------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encode(images))

    def predict_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One logit per row, from cached ``features`` or from the ``image``."""
        if "features" in batch:
            return self.classify(batch["features"])
        return self(batch["image"])

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.predict_step(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
        return loss, {"bce": float(loss.detach())}

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

