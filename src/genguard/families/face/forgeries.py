"""Held-out face forgeries: kinds a self-blend-trained detector never sees, for cross-forgery tests.

Two recipes, each a pure function of its inputs (randomness only through an explicit generator):

``region_swap`` ("FaceSwap"-like: another identity's face in the target's frame)
    1. align the donor to the target with the least-squares similarity transform (Umeyama) between
       their inner-face landmarks (brows, nose, eyes, mouth: points 17-67; the jaw line differs
       between people and would tilt the fit);
    2. warp the donor into the target's frame (bilinear);
    3. match its colour to the target's: per-channel mean and standard deviation in CIE L*a*b*,
       measured inside the blend region (Reinhard-style colour transfer);
    4. blend region = the target's landmark hull intersected with the warped donor's hull, eroded and
       feathered (widths drawn per forgery, in fractions of the face size);
    5. fake = M * donor + (1 - M) * target: full replacement inside, soft edge, untouched outside.

``generator_reconstruction`` ("a generator's face": a learned decoder's output in the face region)
    1. encode the image with a small ``AutoencoderKL`` and decode the posterior mode
       (``genguard.models.diffusion.vae_reconstruct``); the VAE is trained here only on the training
       split's real faces (:func:`train_face_vae`, in the project's one training loop);
    2. match the decoded face's RGB mean and std inside the mask to the input's (colour correction);
    3. paste it back through a feathered landmark-hull mask: fake = M * decoded + (1 - M) * image.
       Content, pose and colour stay; only the generator's fingerprint (smoothing, decoder texture)
       and a blend boundary are added.

Both keep the image outside the mask's support byte-for-byte, like SBI (``genguard.families.face.sbi``),
so the three kinds differ in *what* is blended, not in where the image changes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from genguard.config import dataclass_from_dict
from genguard.families.face.faces import hull_mask
from genguard.families.face.sbi import face_size, feathered_mask, to_uint8, warp_affine

INNER_FACE = slice(17, 68)


@dataclass
class BlendMaskConfig:
    """Erode and feather widths of a landmark-hull blend mask, drawn uniformly per forgery, as fractions
    of the face size (so the same config suits 64 px and 256 px crops) **[INFERRED]**."""

    erode_sigma: tuple[float, float] = (0.01, 0.03)
    feather_sigma: tuple[float, float] = (0.01, 0.04)

    def __post_init__(self) -> None:
        self.erode_sigma = tuple(float(v) for v in self.erode_sigma)
        self.feather_sigma = tuple(float(v) for v in self.feather_sigma)
        for name in ("erode_sigma", "feather_sigma"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None) -> BlendMaskConfig:
        return dataclass_from_dict(cls, values, "blend_mask")

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) for key, value in asdict(self).items()}


def blend_mask(hard_mask: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               config: BlendMaskConfig | None = None) -> np.ndarray:
    """``hard_mask`` eroded and feathered with widths drawn from ``rng`` (erode first, then feather)."""
    config = config or BlendMaskConfig()
    size = face_size(landmarks)
    erode = float(rng.uniform(*config.erode_sigma)) * size
    feather = float(rng.uniform(*config.feather_sigma)) * size
    return feathered_mask(hard_mask, erode, feather)


def landmark_blend_mask(landmarks: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
                        config: BlendMaskConfig | None = None) -> np.ndarray:
    """The feathered convex hull of the 68 landmarks (what ``generator_reconstruction`` pastes through)."""
    return blend_mask(hull_mask(landmarks, shape) > 0.5, landmarks, rng, config)


# --------------------------------------------------------------------------------------------------
# Region swap
# --------------------------------------------------------------------------------------------------

def similarity_transform(source_points: np.ndarray, target_points: np.ndarray) -> np.ndarray:
    """The 2x3 scale-rotation-translation that best maps ``source_points`` onto ``target_points`` in the
    least-squares sense (Umeyama 1991; no reflection)."""
    source = np.asarray(source_points, dtype=np.float64)
    target = np.asarray(target_points, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    variance = (source_centred ** 2).sum() / len(source)
    scale = float(np.trace(np.diag(singular) @ sign) / variance)
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def match_channel_statistics(values: np.ndarray, reference: np.ndarray, region: np.ndarray,
                             min_spread: float) -> np.ndarray:
    """Each channel of ``values`` shifted and scaled so its mean and std inside ``region`` equal
    ``reference``'s. A channel whose spread is below ``min_spread`` (a grey face's chroma, which is
    rounding noise) is not stretched: it takes the reference's mean, flat."""
    out = np.empty(values.shape, dtype=np.float64)
    for channel in range(values.shape[-1]):
        own, wanted = values[..., channel], reference[..., channel][region]
        mean, spread = own[region].mean(), own[region].std()
        gain = wanted.std() / spread if spread > min_spread else 0.0
        out[..., channel] = (own - mean) * gain + wanted.mean()
    return out


def colour_transfer(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``image`` (float RGB 0..255) with each CIE L*a*b* channel's mean and std inside ``region`` matched
    to ``reference``'s (Reinhard et al. 2001); returns float RGB 0..255."""
    from skimage.color import lab2rgb, rgb2lab

    inside = np.asarray(region, dtype=bool)
    matched = match_channel_statistics(rgb2lab(np.clip(image, 0, 255) / 255.0),
                                       rgb2lab(np.clip(reference, 0, 255) / 255.0), inside, min_spread=0.5)
    with warnings.catch_warnings():
        # Far from the region the shifted colours may leave the sRGB gamut; clipping them is intended.
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)
        return lab2rgb(matched) * 255.0


def region_swap(target_image: np.ndarray, target_landmarks: np.ndarray, donor_image: np.ndarray,
                donor_landmarks: np.ndarray, rng: np.random.Generator,
                config: BlendMaskConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The donor's face blended into the target image (see the module docstring); returns (fake, mask).

    Images are HxWx3 uint8 (sizes may differ); landmarks are 68x2 (x, y) in their own image's pixels.
    ``rng`` draws the mask's erode and feather widths only, so one generator seed per video gives
    every frame the same recipe.
    """
    target = np.asarray(target_image)
    shape = target.shape[:2]
    move = similarity_transform(np.asarray(donor_landmarks)[INNER_FACE],
                                np.asarray(target_landmarks)[INNER_FACE])
    donor = warp_affine(donor_image, move, shape, order=1, mode="nearest")
    donor_region = warp_affine(hull_mask(donor_landmarks, np.asarray(donor_image).shape[:2]), move, shape,
                               order=1, mode="constant") > 0.5
    region = (hull_mask(target_landmarks, shape) > 0.5) & donor_region
    if not region.any():
        raise ValueError("the aligned donor face does not overlap the target face")
    donor = colour_transfer(donor, target.astype(np.float64), region)
    mask = blend_mask(region, target_landmarks, rng, config)
    weight = mask[..., None].astype(np.float64)
    return to_uint8(weight * donor + (1.0 - weight) * target), mask


# --------------------------------------------------------------------------------------------------
# Generator reconstruction
# --------------------------------------------------------------------------------------------------

@dataclass
class FaceVAEConfig:
    """The small AutoencoderKL behind ``generator_reconstruction`` and its brief training."""

    channels: tuple[int, ...] = (16, 32)   # two blocks: one x2 downsampling to a 4-channel latent
    latent_channels: int = 4
    kl_weight: float = 1e-3
    steps: int = 200
    lr: float = 2e-3
    batch_size: int = 16
    # Fully convolutional: trained on random patches, applied to whole crops. On 2 CPU cores 16 px
    # patches reach the same full-crop L1 as 32 px ones (about 0.055 on [-1, 1]) in a third of the time.
    patch_size: int = 16
    generation_batch_size: int = 64

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or self.steps < 1 or self.batch_size < 1 or self.patch_size < 1:
            raise ValueError("vae needs channels, steps >= 1, batch_size >= 1 and patch_size >= 1")
        if self.patch_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"vae.patch_size must be a multiple of {2 ** (len(self.channels) - 1)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None) -> FaceVAEConfig:
        return dataclass_from_dict(cls, values, "vae")

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}


def images_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """NxHxWx3 uint8 -> Nx3xHxW float32 in [-1, 1]."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_face_vae(faces: np.ndarray, config: FaceVAEConfig, seed: int,
                   show_progress: bool = False) -> tuple[torch.nn.Module, list[float]]:
    """A seeded ``AutoencoderKL`` trained on ``faces`` (NxHxWx3 uint8; the training split's real crops
    only) with L1 + KL, Adam and a cosine decay, in ``genguard.training.fit``; returns (vae, losses).

    The global torch RNG is left as it was (initialisation draws from a forked copy of it).
    """
    from genguard.models import diffusion
    from genguard.training import TrainConfig, fit

    images = images_to_tensor(faces)
    patch = min(config.patch_size, images.shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = diffusion.make_vae(config.channels, config.latent_channels, images.shape[-1])
    generator = torch.Generator().manual_seed(seed + 1)
    objective = diffusion.VAEObjective(vae, config.kl_weight, generator)
    stream = diffusion.RandomPatches(images, patch, config.batch_size, generator)
    train = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                        optimizer={"name": "adam"}, schedule={"name": "cosine"}, select_best=False, seed=seed)
    losses: list[float] = []
    fit(objective, stream, None, train, on_step=lambda step, logs: losses.append(logs["loss"]),
        desc="train face vae", show_progress=show_progress)
    objective.eval()
    return vae, losses


def generator_reconstruction(image: np.ndarray, mask: np.ndarray, vae: torch.nn.Module, batch_size: int = 64,
                             colour_match: bool = True) -> np.ndarray:
    """``image`` with the face region replaced by ``vae``'s reconstruction, through ``mask``.

    ``image`` is HxWx3 uint8 (or a batch NxHxWx3), ``mask`` HxW float in [0, 1] (or NxHxW); the sides
    must be multiples of the VAE's downsampling. With ``colour_match`` the decoded face's RGB means and
    stds inside the mask are matched to the input's first (the colour correction of face-swap
    pipelines): a VAE trained briefly on mostly grey faces would otherwise return grey faces, a colour
    cue rather than a generator trace. The decoded pixels are blended before the single rounding to
    uint8, so the fake equals the image wherever the mask is 0.
    """
    from genguard.models import diffusion

    pixels = np.asarray(image)
    single = pixels.ndim == 3
    batch = pixels[None] if single else pixels
    weights = np.asarray(mask, dtype=np.float64)
    weights = weights[None] if single else weights
    if batch.shape[:3] != weights.shape:
        raise ValueError(f"mask shape {weights.shape} does not match images {batch.shape[:3]}")
    decoded = diffusion.vae_reconstruct(vae, images_to_tensor(batch), batch_size)
    decoded = decoded.clamp(-1, 1).add(1).mul(127.5).permute(0, 2, 3, 1).double().numpy()
    fakes = np.empty_like(batch)
    for index, (original, face, weight) in enumerate(zip(batch, decoded, weights, strict=True)):
        region = weight > 0.5
        if colour_match and region.any():
            matched = match_channel_statistics(face, original.astype(np.float64), region, min_spread=1.0)
            face = np.clip(matched, 0.0, 255.0)
        fakes[index] = to_uint8(weight[..., None] * face + (1.0 - weight[..., None]) * original)
    return fakes[0] if single else fakes
