"""Detector files: ``config.json`` (how to rebuild + preprocessing) and ``weights.safetensors``.

No pickle anywhere: loading imports our own builder by name (``genguard.methods.build_from_spec``)
and reads tensors with safetensors. A directory is written whole or not at all (atomic swap).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from genguard.data.transforms import Preprocess
from genguard.io.atomic import atomic_dir, write_json_atomic

FORMAT_VERSION = 1


def save_detector(model: torch.nn.Module, out_dir: str | Path, preprocess: Preprocess,
                  extra: dict[str, Any] | None = None) -> Path:
    state = {k: v.detach().contiguous().clone() for k, v in model.storable_state_dict().items()}
    config = {"format_version": FORMAT_VERSION, "init_spec": model.init_spec,
              "preprocess": preprocess.to_dict(), "extra": extra or {}}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "weights.safetensors"))
        write_json_atomic(tmp / "config.json", config)
    return Path(out_dir)


@dataclass
class LoadedDetector:
    model: torch.nn.Module
    preprocess: Preprocess
    config: dict[str, Any]

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
            captions = self._captions_from_images(images)
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        out = []
        for start in range(0, len(images), batch_size):
            batch = {"image": self.preprocess.batch(images[start:start + batch_size])}
            if captions is not None and getattr(self.model, "uses_captions", False):
                batch["text_features"] = self.model.encode_captions(list(captions[start:start + batch_size]))
            out.append(torch.sigmoid(self.model.logits_for(batch)).float().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _captions_from_images(self, images: Sequence[Image.Image] | np.ndarray) -> list[str]:
        from genguard.data.captions import template_caption

        source = (self.config.get("extra") or {}).get("captions") or {"kind": "template"}
        if source.get("kind", "template") != "template":
            raise ValueError(f"this detector classifies with each image's caption and was trained on captions "
                             f"from {source}; pass captions=[...] (one per image), or a 'caption' column to the "
                             "MLflow model")
        pictures = images if not isinstance(images, np.ndarray) else [Image.fromarray(a) for a in images]
        return [template_caption(picture) for picture in pictures]


def load_detector(model_dir: str | Path, *, for_inference: bool = True) -> LoadedDetector:
    from genguard.methods import build_from_spec

    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / "config.json", model_dir / "weights.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {model_dir} is not a genguard detector directory "
                                    "(expected config.json + weights.safetensors written by save_detector)")
    config = json.loads(config_path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {config.get('format_version')} "
                         f"is not supported (expected {FORMAT_VERSION})")
    model = build_from_spec(config["init_spec"])
    load_weights(model, load_file(str(weights_path)), source=weights_path)
    if for_inference:
        model = model.prepare_for_inference()
    return LoadedDetector(model, Preprocess.from_dict(config["preprocess"]), config)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Any = "state") -> None:
    """Load stored weights; only frozen pretrained backbone weights may be absent (rebuilt from spec)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    pretrained = bool((getattr(model, "init_spec", {}).get("backbone") or {}).get("pretrained"))
    prefixes = tuple(getattr(model, "frozen_pretrained_prefixes", ("backbone.",)))
    not_rebuildable = [k for k in missing if not (pretrained and k.startswith(prefixes))]
    if unexpected or not_rebuildable:
        raise ValueError(f"{source}: weights do not match the model "
                         f"(missing {not_rebuildable[:5]}, unexpected {unexpected[:5]})")
