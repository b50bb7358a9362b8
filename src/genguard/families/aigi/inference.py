"""Using a trained AIGI detector: P(fake) for images, the model folder's AIGI fields, the MLflow
pyfunc predictor.

A trained detector travels as :class:`TrainedDetector`: the module, the exact input preprocessing it
was trained with, and what else inference needs (its caption source, the best round). The model
folder (``genguard.io.model_files``) stores the last two under ``extra``; nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from genguard.data.images import Preprocess
from genguard.evaluation.metrics import sigmoid
from genguard.families.aigi.captions import captions_for_images
from genguard.io.model_files import ModelFiles, load_model_dir
from genguard.registry import PREDICTORS


def fake_probability(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """P(fake) = sigmoid(logit) in float64, for test scores and inference alike."""
    values = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    return sigmoid(values, dtype=np.float64)


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

    def files_extra(self) -> dict[str, Any]:
        """What the model folder stores beside the weights (``ModelDataset.save``)."""
        return {"preprocess": self.preprocess.to_dict(), **self.extra}

    @torch.no_grad()
    def predict_proba(self, images: Sequence[Image.Image] | np.ndarray, batch_size: int = 64,
                      captions: Sequence[str] | None = None) -> np.ndarray:
        """P(fake) per image; images are PIL images or an NxHxWx3 uint8 array.

        Detectors that classify with each image's caption (NS-Net per_sample) take ``captions``; when
        none are given and the model was trained with template captions, they are made from the
        images the same way as in training. Caption-file models need them passed explicitly.
        """
        self.model.eval()
        if getattr(self.model, "needs_captions_at_inference", False) and captions is None:
            captions = captions_for_images(images, self.extra.get("captions"))
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        out = []
        for start in range(0, len(images), batch_size):
            batch = {"image": self.preprocess.batch(images[start:start + batch_size])}
            if captions is not None and getattr(self.model, "uses_captions", False):
                batch["text_features"] = self.model.encode_captions(list(captions[start:start + batch_size]))
            out.append(fake_probability(self.model.predict_step(batch)))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def as_trained_detector(model: TrainedDetector | ModelFiles) -> TrainedDetector:
    """What a node receives as ``<method>.model``: the trained object in memory, or the model folder
    the catalog read back (kept as trained: adapters unmerged, the same numbers as in training)."""
    return model if isinstance(model, TrainedDetector) else TrainedDetector.from_files(model, for_inference=False)


def load_detector(model_dir: str | Path, *, for_inference: bool = True) -> TrainedDetector:
    return TrainedDetector.from_files(load_model_dir(model_dir), for_inference=for_inference)


# --------------------------------------------------------------------------------------------------
# MLflow pyfunc: images or a DataFrame of paths in, P(fake) out


def _load_paths(paths: pd.Series) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(Path(path)) as handle:
            images.append(handle.convert("RGB"))  # convert() loads the pixels, so the file can close
    return images


def _as_uint8_batch(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected images as [N, H, W, 3], got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    # JSON serving hands over int64 lists; floats would be ambiguous ([0,1] or [0,255]) so refuse them.
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("integer pixel values must be within 0..255")
        return array.astype(np.uint8)
    raise ValueError(f"pixels must be uint8 (0..255), got dtype {array.dtype}")


def prepare_images(model_input: Any) -> np.ndarray | list[Image.Image]:
    """Pyfunc input -> what :meth:`TrainedDetector.predict_proba` takes (uint8 batch or PIL list).

    Accepted: a uint8 (or 0..255 integer) array [N, H, W, 3] (one [H, W, 3] image is promoted), a
    list of PIL images, or a DataFrame with a ``path`` column (images may differ in size).
    """
    if isinstance(model_input, pd.DataFrame):
        if "path" not in model_input.columns:
            columns = list(model_input.columns)
            raise ValueError(f"a DataFrame input needs a 'path' column, got columns {columns}")
        return _load_paths(model_input["path"])
    if isinstance(model_input, list) and all(isinstance(item, Image.Image) for item in model_input):
        return [item.convert("RGB") for item in model_input]
    return _as_uint8_batch(np.asarray(model_input))


class DetectorPredictor:
    """What the MLflow pyfunc calls: P(fake) as float32 [N]; an optional ``caption`` column feeds
    detectors that classify with each image's caption (NS-Net per_sample)."""

    def __init__(self, model_dir: str) -> None:
        self.detector = load_detector(model_dir)

    def predict(self, model_input: Any) -> np.ndarray:
        images = prepare_images(model_input)
        if len(images) == 0:
            return np.zeros((0,), dtype=np.float32)
        captions = None
        if isinstance(model_input, pd.DataFrame) and "caption" in model_input.columns:
            captions = model_input["caption"].astype(str).tolist()
        probabilities = np.asarray(self.detector.predict_proba(images, captions=captions),
                                   dtype=np.float32).reshape(-1)
        if probabilities.shape[0] != len(images):
            raise RuntimeError(f"detector returned {probabilities.shape[0]} scores for {len(images)} images")
        return probabilities


PREDICTORS.register("aigi")(DetectorPredictor)
