"""Spectral-entropy Patch Selection: the NS-Net / DGS-Net image transform for AIGI detection.

An RGB image is cut into non-overlapping P×P patches; each patch is scored by the Shannon entropy of
its normalised 2-D power spectrum; the ⌊N/2⌋ lowest- and N − ⌊N/2⌋ highest-entropy patches
(N = grid²) are shuffled and pasted into a grid×grid mosaic. Nothing is resampled, so the
high-frequency generator traces that detectors read survive, while the semantic layout is destroyed.

Source: NS-Net (arXiv 2508.01248), as coded in the DGS-Net repository (arXiv 2511.13108), which
applies it at train and test time (its data-loading code).

Small images: the reference code duplicates patches (its low and high lists overlap) and leaves cells
black when an image has fewer than N patches, and it crashes when a side is below P pixels (no
patches at all). ``small_image_policy`` makes the first case a choice: ``"black"`` reproduces the
reference, ``"repeat"`` cycles through the ranked patches so no cell is left empty (black cells are
a trivial cue that correlates with source resolution, not with real/fake). Sides below P are padded
with black up to P under both policies, so the transform never fails on a valid image.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, fields

import numpy as np

SMALL_IMAGE_POLICIES = ("repeat", "black")
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as in the reference


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"patch selection needs an HxWx3 uint8 RGB array, got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"patch selection got an empty image of shape {image.shape}")
    return image


def image_patches(image: np.ndarray, patch_size: int) -> np.ndarray:
    """[N, P, P, 3] uint8 patches in row-major order; the bottom/right remainder is dropped."""
    image = _check_image(image)
    p = patch_size
    gh, gw = image.shape[0] // p, image.shape[1] // p
    tiles = image[: gh * p, : gw * p].reshape(gh, p, gw, p, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(tiles.reshape(gh * gw, p, p, 3))


def spectral_entropy(patches: np.ndarray) -> np.ndarray:
    """[N] float64 entropy (bits) of each patch's normalised grayscale power spectrum."""
    gray = (patches.astype(np.float64) @ _GRAY_WEIGHTS) / 255.0
    # The reference fftshifts first; a shift only permutes bins and entropy is permutation-invariant.
    power = np.abs(np.fft.fft2(gray, axes=(-2, -1))) ** 2
    power = power.reshape(len(gray), -1)
    q = power / (power.sum(axis=1, keepdims=True) + 1e-12)
    return -(q * np.log2(q + 1e-12)).sum(axis=1)


def select_patch_indices(entropy: np.ndarray, n_select: int, policy: str = "repeat") -> np.ndarray:
    """Indices of the n_low lowest (ascending) then n_high highest (descending) entropy patches."""
    if policy not in SMALL_IMAGE_POLICIES:
        raise ValueError(f"small_image_policy must be one of {SMALL_IMAGE_POLICIES}, got {policy!r}")
    n_low, n_high = n_select // 2, n_select - n_select // 2
    ascending = np.argsort(np.asarray(entropy), kind="stable")  # stable: ties resolve by position
    descending = ascending[::-1]
    if policy == "black" or len(ascending) == 0:
        # Slicing never repeats within a list: fewer than n_select come back, as in the reference.
        return np.concatenate([ascending[:n_low], descending[:n_high]])
    # With >= n_select patches the modulo is the identity; with fewer it cycles to fill every cell.
    return np.concatenate(
        [ascending[np.arange(n_low) % len(ascending)], descending[np.arange(n_high) % len(descending)]]
    )


@dataclass(frozen=True)
class PatchSelection:
    patch_size: int = 32
    grid: int = 7
    shuffle: bool = True
    seed: int = 100
    small_image_policy: str = "repeat"

    def __post_init__(self) -> None:
        for name in ("patch_size", "grid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PatchSelection.{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            # Non-negative because it seeds np.random.default_rng (XORed with a CRC32).
            raise ValueError(f"PatchSelection.seed must be an integer >= 0, got {self.seed!r}")
        if self.small_image_policy not in SMALL_IMAGE_POLICIES:
            raise ValueError(
                f"PatchSelection.small_image_policy must be one of {SMALL_IMAGE_POLICIES}, "
                f"got {self.small_image_policy!r}"
            )

    @property
    def output_size(self) -> int:
        return self.grid * self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        image = _check_image(image)
        p, g = self.patch_size, self.grid
        h, w = image.shape[:2]
        padded = np.pad(image, ((0, max(p - h, 0)), (0, max(p - w, 0)), (0, 0))) if min(h, w) < p else image
        patches = image_patches(padded, p)
        idx = select_patch_indices(spectral_entropy(patches), self.n_patches, self.small_image_policy)
        if self.shuffle:
            if rng is None:
                # Seeded by content, not by call order, so evaluation repeats exactly in any order.
                rng = np.random.default_rng(zlib.crc32(image.tobytes()) ^ self.seed)
            idx = idx[rng.permutation(len(idx))]
        cells = np.zeros((self.n_patches, p, p, 3), dtype=np.uint8)  # unfilled cells stay black
        cells[: len(idx)] = patches[idx]
        mosaic = cells.reshape(g, g, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * p, g * p, 3)
        return np.ascontiguousarray(mosaic)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, cfg: dict | None) -> PatchSelection | None:
        if not cfg:
            return None  # absent or empty config means "no patch selection"
        unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown PatchSelection keys: {unknown}")
        return cls(**cfg)
