"""UnivFD's training augmentation (Ojha et al., CVPR 2023; WisconsinAIVision/UniversalFakeDetect's
data options), made cacheable for frozen backbones.

The recipe, per training image: Gaussian blur with sigma ~ U[0, 3] with probability 0.5, JPEG
re-encoding with quality ~ U{30..100} with probability 0.5, a random crop (224 of a 256-px resize:
7/8 of the shorter side) and a horizontal flip with probability 0.5. It hardens the probe against
exactly the JPEG and blur conditions of the robustness leaderboard.

A frozen backbone's features are cached once; a fresh augmentation per epoch would defeat the cache.
So the pipeline encodes a *bank* of ``bank`` augmented copies per training image (each copy drawn
from a generator seeded by the image's content and the copy number: reproducible, independent of
row order) and training draws one copy per row and epoch (:class:`genguard.data.datasets.FeatureBank`).
With ``bank: 0`` the probe trains on clean features only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from genguard.config import dataclass_from_dict
from genguard.evaluation.conditions import GaussianBlur, JpegReencode


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = False                    # images fine-tuned from pixels: flip each sample with p = 0.5
    bank: int = 0                          # frozen backbones: augmented copies cached per training image
    seed: int = 0
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)
    crop: float = 0.875                    # random crop side as a share of the shorter side (1: none)
    flip_prob: float = 0.5

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> AugmentConfig:
        values = dict(cfg or {})
        for key in ("blur_sigma", "jpeg_quality"):
            if key in values:
                values[key] = tuple(values[key])
        config = dataclass_from_dict(cls, values, "augment")
        if config.bank < 0 or not 0 < config.crop <= 1:
            raise ValueError("augment.bank must be >= 0 and augment.crop in (0, 1]")
        if not 1 <= config.jpeg_quality[0] <= config.jpeg_quality[1] <= 100:
            raise ValueError(f"augment.jpeg_quality must be a range within 1..100, got {config.jpeg_quality}")
        if not 0 <= config.blur_sigma[0] <= config.blur_sigma[1]:
            raise ValueError(f"augment.blur_sigma must be a range of sigmas >= 0, got {config.blur_sigma}")
        for name in ("blur_prob", "jpeg_prob", "flip_prob"):
            if not 0 <= getattr(config, name) <= 1:
                raise ValueError(f"augment.{name} must be a probability")
        return config


@dataclass(frozen=True)
class BankCopy:
    """Copy ``copy`` of every image: the recipe with a generator seeded by (seed, image content, copy).

    A picklable image -> image callable, so it plugs in where test conditions do (``ManifestImages``).
    """

    config: AugmentConfig
    copy: int

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB")
        key = hashlib.sha256(rgb.tobytes()).digest()[:8]
        rng = np.random.default_rng([self.config.seed, self.copy, int.from_bytes(key, "little")])
        return augment(rgb, self.config, rng)


def augment(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """The recipe on one RGB image (every draw taken, used or not, so copies stay aligned)."""
    use_blur, sigma = rng.random() < config.blur_prob, rng.uniform(*config.blur_sigma)
    use_jpeg, quality = rng.random() < config.jpeg_prob, int(rng.integers(config.jpeg_quality[0],
                                                                            config.jpeg_quality[1] + 1))
    crop_x, crop_y, flip = rng.random(), rng.random(), rng.random() < config.flip_prob
    if use_blur and sigma > 0:
        image = GaussianBlur(float(sigma))(image)
    if use_jpeg:
        image = JpegReencode(quality)(image)
    if config.crop < 1:
        width, height = image.size
        side = max(1, round(min(width, height) * config.crop))
        left, top = round(crop_x * (width - side)), round(crop_y * (height - side))
        image = image.crop((left, top, left + side, top + side))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image
