"""Deterministic test-time image degradations, addressed by name.

One string names one degradation, so configs, DVC params and MLflow metric prefixes can carry it:

* ``clean`` – identity (the input object is returned unchanged);
* ``jpeg_<quality>`` – re-encode as JPEG in memory with PIL at that quality (1..100), e.g. ``jpeg_75``;
* ``blur_<sigma>`` – Gaussian blur with standard deviation ``sigma`` pixels, e.g. ``blur_1``, ``blur_0.5``;
* ``resize_<factor>`` – shrink by ``factor`` in (0, 1] and scale back to the original size, both
  bilinear, e.g. ``resize_0.5``.

Every non-identity degradation returns an RGB image of the input's size. All are pure functions of
the pixels (no randomness), so a perturbed test set is reproducible bit for bit on one machine.
The callables are small dataclass instances rather than closures so they pickle into DataLoader
worker processes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

# The default robustness suite; any other parameter value parses too (see get_perturbation).
_STANDARD_SUITE: tuple[str, ...] = (
    "clean",
    "jpeg_95",
    "jpeg_75",
    "blur_1",
    "blur_2",
    "resize_0.5",
)

VALID_FORMS = (
    "clean | jpeg_<quality 1..100> | blur_<sigma > 0 px> | resize_<factor in (0, 1]> "
    "(e.g. jpeg_75, blur_0.5, resize_0.5)"
)

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_PATTERNS = {
    "jpeg": re.compile(r"jpeg_(\d+)"),
    "blur": re.compile(rf"blur_{_NUMBER}"),
    "resize": re.compile(rf"resize_{_NUMBER}"),
}


def _format_number(value: float) -> str:
    # Canonical spelling so "blur_1.0" and "blur_1" name the same thing in logs.
    return f"{value:g}"


@dataclass(frozen=True)
class Identity:
    name: str = "clean"

    def __call__(self, image: Image.Image) -> Image.Image:
        return image


@dataclass(frozen=True)
class JpegReencode:
    quality: int

    @property
    def name(self) -> str:
        return f"jpeg_{self.quality}"

    def __call__(self, image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        # Chroma subsampling changes the damage a lot; pin it (4:2:0, libjpeg's usual default) so the
        # degradation does not depend on Pillow's defaults of the day.
        image.convert("RGB").save(buffer, format="JPEG", quality=self.quality, subsampling=2)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")


@dataclass(frozen=True)
class GaussianBlur:
    sigma: float

    @property
    def name(self) -> str:
        return f"blur_{_format_number(self.sigma)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        # scipy's exact Gaussian (per channel, reflect border) is what the CNNDetection/AIGIBench
        # robustness code uses, so "sigma" means the same as in their tables; PIL's GaussianBlur is
        # a box-filter approximation.
        from scipy.ndimage import gaussian_filter

        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        blurred = gaussian_filter(pixels, sigma=(self.sigma, self.sigma, 0), mode="reflect")
        return Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8), mode="RGB")


@dataclass(frozen=True)
class DownUpResize:
    factor: float

    @property
    def name(self) -> str:
        return f"resize_{_format_number(self.factor)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        small = (max(1, round(width * self.factor)), max(1, round(height * self.factor)))
        return rgb.resize(small, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BILINEAR)


Perturbation = Callable[[Image.Image], Image.Image]


def get_perturbation(name: str) -> Perturbation:
    """Parse ``name`` (see module docstring) into a callable ``PIL.Image -> PIL.Image``.

    Raises ValueError for an unknown form or an out-of-range parameter, listing the valid forms.
    """
    text = str(name).strip().lower()
    if text == "clean":
        return Identity()
    if match := _PATTERNS["jpeg"].fullmatch(text):
        quality = int(match.group(1))
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {name!r}; valid: {VALID_FORMS}")
        return JpegReencode(quality)
    if match := _PATTERNS["blur"].fullmatch(text):
        sigma = float(match.group(1))
        if sigma <= 0:
            raise ValueError(f"blur sigma must be > 0 (use 'clean'), got {name!r}; valid: {VALID_FORMS}")
        return GaussianBlur(sigma)
    if match := _PATTERNS["resize"].fullmatch(text):
        factor = float(match.group(1))
        if not 0 < factor <= 1:
            raise ValueError(f"resize factor must be in (0, 1], got {name!r}; valid: {VALID_FORMS}")
        return DownUpResize(factor)
    raise ValueError(f"unknown perturbation {name!r}; valid: {VALID_FORMS}")


def list_perturbations() -> list[str]:
    """Names of the standard robustness suite (``clean`` first).

    Other parameter values (``jpeg_50``, ``blur_3``, ...) are accepted by :func:`get_perturbation`
    as well; this list is what an evaluation runs when it is not told otherwise.
    """
    return list(_STANDARD_SUITE)
