"""Binary detectors (real = 0, fake = 1): the trainable base every detection family builds on.

A detector maps an input to one logit per row, P(fake) = sigmoid(logit). It splits into ``encode``
(backbone) and ``classify`` (everything after), so a frozen-backbone method trains on features
cached once. Batches hold ``label`` and either ``image`` or ``features``; the default objective is
BCE on the logits. Families subclass it (AIGI: captions; face forgery: frame crops of videos) and
name themselves with ``family`` so :func:`genguard.registry.build_model` can rebuild any detector.
:class:`TrainedDetector` carries a trained one with its preprocessing; :class:`DetectorPredictor` is
what a family registers for the MLflow pyfunc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from genguard.data.images import Preprocess, image_inputs
from genguard.evaluation.metrics import sigmoid
from genguard.io.model_files import ModelFiles, load_model_dir, package_weight_prefixes
from genguard.training.trainable import Trainable


class BinaryDetector(Trainable):
    #: True when ``encode`` has no trainable parameters; the pipeline then caches features once.
    frozen_backbone: bool = False
    #: State-dict prefixes of frozen towers rebuilt from a *pretrained* spec, hence not stored.
    frozen_pretrained_prefixes: tuple[str, ...] = ("backbone.",)

    def __init__(self, family: str, init_spec: dict[str, Any]) -> None:
        # What ``genguard.registry.build_model`` needs to rebuild this exact module (no pickling).
        super().__init__({"family": family, **init_spec})

    # --- forward path -------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encode(images))

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One logit per row, from cached ``features`` or from the ``image``."""
        if "features" in batch:
            return self.classify(batch["features"])
        return self(batch["image"])

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.predict_step(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
        return loss, {"bce": float(loss.detach())}

    # --- inputs ---------------------------------------------------------------------------------
    def preprocess_overrides(self) -> dict[str, Any]:
        """Input options the method fixes (normalisation statistics, patch selection)."""
        return {}

    # --- persistence --------------------------------------------------------------------------
    def storable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to save: what a rebuild from :meth:`stored_init_spec` cannot reproduce.

        * Submodules whose weights ship in an installed package (``weights_from_package``: the offline
          prior's EfficientNet trunk and MiniLM encoder) are rebuilt from it, so only their trainable
          parameters (adapters) are stored; the prior's own small tensors (projection, centre) are.
        * A *pretrained* open_clip backbone's frozen weights are rebuilt from its spec (open_clip tag or
          local file), so only what training changed is stored; a random-init backbone is stored whole
          (its init is seeded, but storing it keeps files self-contained).
        """
        state = self.state_dict()
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        drop = package_weight_prefixes(self)
        spec = self.init_spec.get("backbone") or {}
        if spec.get("pretrained") and not getattr(getattr(self, "backbone", None), "prior_in_weights", False):
            drop += self.frozen_pretrained_prefixes
        if not drop:
            return state
        return {k: v for k, v in state.items() if not k.startswith(drop) or k in trainable}

    def stored_init_spec(self) -> dict[str, Any]:
        """The spec a model folder records: a backbone whose prior travels in the weights
        (``prior_in_weights``) is rebuilt without its prior file, so the folder loads anywhere."""
        if not getattr(getattr(self, "backbone", None), "prior_in_weights", False):
            return self.init_spec
        return {**self.init_spec, "backbone": {**(self.init_spec.get("backbone") or {}), "pretrained": None}}

    def prepare_for_inference(self) -> BinaryDetector:
        """Hook for merging adapters etc.; called once after loading for prediction."""
        return self.eval()


# --------------------------------------------------------------------------------------------------
# A trained detector: the module, the exact input preprocessing it was trained with, what else
# inference needs. The model folder (``genguard.io.model_files``) stores the last two under "extra".


@dataclass
class TrainedDetector:
    model: torch.nn.Module
    preprocess: Preprocess
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_files(cls, files: ModelFiles, *, for_inference: bool = True) -> TrainedDetector:
        extra = dict(files.extra)
        preprocess = Preprocess.from_dict(extra.pop("preprocess"))
        model = files.model.prepare_for_inference() if for_inference else files.model
        return cls(model, preprocess, extra)

    @classmethod
    def load(cls, model_dir: str | Path, *, for_inference: bool = True) -> TrainedDetector:
        return cls.from_files(load_model_dir(model_dir), for_inference=for_inference)

    @classmethod
    def coerce(cls, model: TrainedDetector | ModelFiles) -> TrainedDetector:
        """What a node receives as ``<method>.model``: the trained object in memory, or the model folder
        the catalog read back (kept as trained: adapters unmerged, the same numbers as in training)."""
        return model if isinstance(model, TrainedDetector) else cls.from_files(model, for_inference=False)

    def files_extra(self) -> dict[str, Any]:
        """What the model folder stores beside the weights (``ModelDataset.save``)."""
        return {"preprocess": self.preprocess.to_dict(), **self.extra}

    def batch_inputs(self, images: Sequence[Image.Image] | np.ndarray, **inputs: Any) -> dict[str, Any]:
        """The model's batch for ``images`` (families add their own inputs, e.g. caption features)."""
        return {"image": self.preprocess.batch(images)}

    @torch.no_grad()
    def predict_proba(self, images: Sequence[Image.Image] | np.ndarray, batch_size: int = 64,
                      **inputs: Sequence[Any] | None) -> np.ndarray:
        """P(fake) per image (PIL images or an NxHxWx3 uint8 array), float64; ``inputs``: per-image
        side inputs a family's ``batch_inputs`` reads (sliced with the images)."""
        self.model.eval()
        out = []
        for start in range(0, len(images), batch_size):
            window = {k: (v[start:start + batch_size] if v is not None else None) for k, v in inputs.items()}
            batch = self.batch_inputs(images[start:start + batch_size], **window)
            out.append(sigmoid(self.model.predict_step(batch).detach().float().cpu().numpy()))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


class DetectorPredictor:
    """What the MLflow pyfunc calls (``genguard.registry.PREDICTORS``): images (a uint8 [N, H, W, 3]
    array, a list of PIL images, or a DataFrame with a ``path`` column) -> P(fake) as float32 [N].
    DataFrame columns named in ``input_columns`` are passed on as per-image side inputs."""

    trained_type: type[TrainedDetector] = TrainedDetector
    input_columns: dict[str, str] = {}   # DataFrame column -> predict_proba keyword

    def __init__(self, model_dir: str) -> None:
        self.detector = self.trained_type.load(model_dir)

    def predict(self, model_input: Any) -> np.ndarray:
        images = image_inputs(model_input)
        if len(images) == 0:
            return np.zeros((0,), dtype=np.float32)
        inputs = {keyword: model_input[column].astype(str).tolist() for column, keyword in self.input_columns.items()
                  if isinstance(model_input, pd.DataFrame) and column in model_input.columns}
        probabilities = np.asarray(self.detector.predict_proba(images, **inputs), dtype=np.float32).reshape(-1)
        if probabilities.shape[0] != len(images):
            raise RuntimeError(f"detector returned {probabilities.shape[0]} scores for {len(images)} images")
        return probabilities
