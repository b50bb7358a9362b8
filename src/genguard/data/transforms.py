"""Image -> tensor preprocessing, recorded with every model so inference repeats it exactly.

``resize_mode``: ``resize`` (shorter side to ``image_size`` then centre crop; the default, fine for
the embedded 64-px crops) or ``center_crop`` (no resampling, UnivFD's test protocol: resampling
erases the high-frequency traces these detectors read).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

RESIZE_MODES = ("resize", "center_crop")


@dataclass(frozen=True)
class Preprocess:
    image_size: int
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)  # CLIP statistics
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    resize_mode: str = "resize"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    @classmethod
    def from_dict(cls, cfg: dict) -> Preprocess:
        cfg = dict(cfg)
        cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
        return cls(**cfg)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """PIL image -> HxWx3 uint8 at the model's input size."""
        image = image.convert("RGB")
        size = self.image_size
        if self.resize_mode == "resize" and min(image.size) != size:
            scale = size / min(image.size)
            image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                                 Image.BICUBIC)
        if image.width < size or image.height < size:  # center_crop on a small image: pad, never upsample
            canvas = Image.new("RGB", (max(size, image.width), max(size, image.height)))
            canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2))
            image = canvas
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return np.array(image.crop((left, top, left + size, top + size)), dtype=np.uint8)  # writable copy

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW uint8 -> normalised float tensor."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images_uint8.float() / 255.0 - mean) / std

    def batch(self, images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
        """PIL images or an NxHxWx3 uint8 array -> normalised Nx3xHxW tensor."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"expected an NxHxWx3 uint8 array, got shape {images.shape}")
            images = [Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)) for a in images]
        arrays = np.stack([self.to_uint8(image) for image in images])
        return self.normalise(torch.from_numpy(arrays).permute(0, 3, 1, 2))


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class ManifestImages(Dataset):
    """Manifest rows -> {"image", "label", "index"}; optional image-space perturbation and flip."""

    def __init__(self, frame: pd.DataFrame, preprocess: Preprocess, *,
                 perturbation: Callable[[Image.Image], Image.Image] | None = None, hflip: bool = False) -> None:
        self.paths = frame["path"].tolist()
        self.labels = torch.as_tensor(frame["label"].to_numpy().copy(), dtype=torch.long)
        self.preprocess, self.perturbation, self.hflip = preprocess, perturbation, hflip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = load_rgb(self.paths[index])
        if self.perturbation is not None:
            image = self.perturbation(image)
        array = torch.from_numpy(self.preprocess.to_uint8(image)).permute(2, 0, 1).unsqueeze(0)
        tensor = self.preprocess.normalise(array)[0]
        if self.hflip and torch.rand(()) < 0.5:  # torch RNG: seeded and checkpointed by the engine
            tensor = tensor.flip(-1)
        return {"image": tensor, "label": self.labels[index], "index": torch.tensor(index)}


class FeatureRows(Dataset):
    """Cached features -> {"features", "label", "index"} (frozen-backbone training)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features, self.labels = features, labels.long()

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index], "label": self.labels[index], "index": torch.tensor(index)}
