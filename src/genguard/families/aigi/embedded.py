"""The embedded default AIGI dataset: real photo crops versus fakes from four tiny diffusers generators.

Why this exists: the published AIGI benchmarks (ForenSynths, GenImage, AIGIBench) are tens of GB and
need a GPU to be useful. This builder makes a small, honest stand-in on a 2-core CPU in about a minute,
from real photographs that ship in wheels and Debian packages (``genguard.families.aigi.photos``):

* reals: square crops of the photos (side drawn in [96, 224]), resized bicubically to ``image_size``;
* fakes, one generator family per subset, each a randomly initialised diffusers model trained here,
  briefly, on the train-split real crops:

  ``vae_recon``         AutoencoderKL reconstructions of real crops: same content, only the
                        autoencoder's fingerprint differs (the "semantically aligned" fakes);
  ``gan_upsampler``     a transposed-convolution decoder (diffusers ``Upsample2D`` blocks) that
                        re-creates a ×4 downsampled crop; it leaves the checkerboard / upsampling
                        traces typical of GAN generators;
  ``diffusion_sdedit``  a UNet2DModel trained with the DDPM noise-prediction loss; real crops are
                        noised to strength ~0.5 and denoised with DDIM (SDEdit);
  ``diffusion_sample``  pure DDIM samples of the same UNet from Gaussian noise.

Splits are drawn by *source photo* (crops of one photo never cross splits), then the crops of each
split are dealt among the families, so every ``generator`` subset has its own reals, and the fakes of
the first three families are made from exactly those reals. Reals and fakes are written the same way
(lossless PNG, same size), so a detector cannot separate them by compression or resizing traces.

Layout (AIGIBench / ForenSynths with split folders on top)::

    out_dir/<split>/<generator>/{0_real,1_fake}/<name>.png
    out_dir/manifest.parquet      (the AIGI manifest schema, plus ``origin``: the source photo)
    out_dir/build_info.json       (config, cache key, counts, timings, losses, licences)

The build is cached by a key over the config, ``BUILDER_VERSION`` and the photo sources, is built in a
temporary sibling directory that replaces ``out_dir`` only when complete, and is deterministic for a
given config, photo set, torch build and thread count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from genguard.config import dataclass_from_dict
from genguard.data.builds import BUILD_INFO_FILE, MANIFEST_FILE, cached_build
from genguard.data.manifest import SPLITS, normalise_manifest, sha256_file
from genguard.families.aigi.photos import RealPhoto, all_photos
from genguard.families.aigi.schema import AIGI_SCHEMA
from genguard.io.atomic import atomic_dir, write_json_atomic
from genguard.models import diffusion
from genguard.progress import progress
from genguard.training import TrainConfig, count_parameters, fit

logger = logging.getLogger(__name__)

# Bump when a change in this file changes the images produced for an unchanged config.
BUILDER_VERSION = "2"  # 2: manifest column "origin" (the source photo), same images as 1
GENERATOR_FAMILIES: tuple[str, ...] = ("vae_recon", "gan_upsampler", "diffusion_sdedit", "diffusion_sample")
_DIFFUSION_FAMILIES = frozenset({"diffusion_sdedit", "diffusion_sample"})
_LABEL_DIRS = {0: "0_real", 1: "1_fake"}


@dataclass
class DefaultAigiConfig:
    """Every knob of the default dataset; the cache key is computed over all of them."""

    seed: int = 0
    image_size: int = 64
    # Crops: `crops_per_photo` square crops per photo, `crops_per_small_photo` when its shorter side is
    # below `small_photo_min_side`; side drawn uniformly in [crop_side_min, crop_side_max].
    crops_per_photo: int = 8
    crops_per_small_photo: int = 4
    small_photo_min_side: int = 400
    crop_side_min: int = 96
    crop_side_max: int = 224
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.5, "val": 0.15, "test": 0.35})
    generators: tuple[str, ...] = GENERATOR_FAMILIES
    # Training. All three models are fully convolutional (no attention), so they are trained on random
    # `train_patch_size` patches of the crops and applied to full crops: 16² patches cost 1/16 of a
    # 64² crop per sample, and on 2 CPU cores more, cheaper steps beat fewer, larger ones.
    train_patch_size: int = 16
    batch_size: int = 16
    vae_steps: int = 300
    vae_lr: float = 2e-3
    # Two blocks = one ×2 downsampling: a 64²×3 crop becomes a 32²×4 latent (3× fewer values).
    vae_channels: tuple[int, ...] = (16, 32)
    vae_latent_channels: int = 4
    vae_kl_weight: float = 1e-3
    upsampler_steps: int = 300
    upsampler_lr: float = 2e-3
    upsampler_factor: int = 4
    upsampler_channels: int = 32
    diffusion_steps: int = 300
    diffusion_lr: float = 1e-3
    unet_channels: tuple[int, ...] = (16, 32, 32)
    diffusion_train_timesteps: int = 1000
    # "epsilon" is the DDPM noise-prediction loss; "v_prediction" and "sample" are the diffusers
    # alternatives (kept as knobs: with so little training they give smoother, less noisy outputs).
    diffusion_prediction_type: str = "epsilon"
    # SDEdit: the DDIM schedule has `sdedit_schedule_steps` steps and starts at the fraction
    # `sdedit_strength` of it, i.e. about strength × schedule_steps denoising steps.
    sdedit_strength: float = 0.5
    sdedit_schedule_steps: int = 20
    sample_steps: int = 10
    generation_batch_size: int = 64

    def __post_init__(self) -> None:
        self.generators = tuple(self.generators)
        self.vae_channels = tuple(int(c) for c in self.vae_channels)
        self.unet_channels = tuple(int(c) for c in self.unet_channels)
        self.split_fractions = {str(k): float(v) for k, v in dict(self.split_fractions).items()}
        self.train_patch_size = min(self.train_patch_size, self.image_size)
        self.validate()

    def validate(self) -> None:
        unknown = [g for g in self.generators if g not in GENERATOR_FAMILIES]
        if unknown or not self.generators or len(set(self.generators)) != len(self.generators):
            raise ValueError(f"generators must be distinct names from {list(GENERATOR_FAMILIES)}; "
                             f"got {list(self.generators)}")
        if set(self.split_fractions) != set(SPLITS) or any(v <= 0 for v in self.split_fractions.values()):
            raise ValueError(f"split_fractions needs positive values for exactly {list(SPLITS)}; "
                             f"got {self.split_fractions}")
        if not 0 < self.crop_side_min <= self.crop_side_max:
            raise ValueError("need 0 < crop_side_min <= crop_side_max")
        if min(self.crops_per_photo, self.crops_per_small_photo) < 1:
            raise ValueError("crops_per_photo and crops_per_small_photo must be >= 1")
        if self.diffusion_prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError("diffusion_prediction_type must be 'epsilon', 'v_prediction' or 'sample'")
        if not 0.0 < self.sdedit_strength <= 1.0:
            raise ValueError("sdedit_strength must be in (0, 1]")
        factor = self.upsampler_factor
        if factor < 2 or factor & (factor - 1):
            raise ValueError("upsampler_factor must be a power of two >= 2 (one Upsample2D per ×2)")
        for name, multiple in (("vae_channels", 2 ** (len(self.vae_channels) - 1)),
                               ("unet_channels", 2 ** (len(self.unet_channels) - 1)),
                               ("upsampler_factor", factor)):
            for size_name in ("image_size", "train_patch_size"):
                if getattr(self, size_name) % multiple:
                    raise ValueError(f"{size_name}={getattr(self, size_name)} must be a multiple of "
                                     f"{multiple} for {name}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None) -> DefaultAigiConfig:
        """Build from a (Kedro parameters) mapping; unknown keys are an error, not silently ignored."""
        return dataclass_from_dict(cls, values, "data.embedded.config")

    @property
    def noise_schedule(self) -> diffusion.NoiseSchedule:
        return diffusion.NoiseSchedule(train_timesteps=self.diffusion_train_timesteps,
                                       prediction_type=self.diffusion_prediction_type)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


@dataclass
class _Crop:
    """One real crop and where it goes."""

    photo_source: str
    index: int
    licence: str
    pixels: np.ndarray  # image_size × image_size × 3, uint8
    split: str = ""
    generator: str = ""

    @property
    def source(self) -> str:
        return f"{self.photo_source}#crop{self.index}"

    @property
    def file_name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.photo_source).strip("-")
        return f"{slug}_c{self.index:02d}.png"


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------

def build_default_aigi_dataset(out_dir: str | Path, config: DefaultAigiConfig | Mapping[str, Any] | None = None,
                               photo_root: str | Path | None = None, show_progress: bool = True) -> pd.DataFrame:
    """Build (or return the cached) default AIGI dataset under ``out_dir``; returns its manifest.

    ``photo_root`` is where ``photos.fetch_debian_photos`` unpacked the Debian wallpapers; with
    ``None`` or an empty folder only the 8 wheel photos are used (fewer images, same structure).
    Manifest paths are ``str(Path(out_dir) / <split>/<generator>/<label>/<name>.png``, i.e. relative
    when ``out_dir`` was given relative (to the working directory), absolute when it was absolute.
    """
    out_dir = Path(out_dir)
    if not isinstance(config, DefaultAigiConfig):
        config = DefaultAigiConfig.from_dict(config)
    photos = sorted(all_photos(photo_root), key=lambda photo: photo.source)
    key = cache_key(config, photos)

    cached = cached_build(out_dir, key, AIGI_SCHEMA)
    if cached is not None:
        logger.info("default AIGI dataset in %s is up to date (cache key %s…)", out_dir, key[:12])
        return cached

    if len(photos) < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} real photos (one per split), found {len(photos)}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    logger.info("building the default AIGI dataset from %d photos into %s", len(photos), out_dir)

    # Everything random below draws from seeds derived from config.seed (explicit generators, and
    # seeded model initialisation that restores the global RNG), so the build neither depends on nor
    # perturbs the caller's RNG state.
    with atomic_dir(out_dir) as staging:
        tick = time.perf_counter()
        crops = _crop_photos(photos, config, show_progress)
        if len({crop.file_name for crop in crops}) != len(crops):
            raise ValueError("two photo sources map to the same file name; rename one of them")
        _assign_splits_and_families(crops, photos, config)
        timings["crop_photos_s"] = time.perf_counter() - tick

        rows: list[dict[str, Any]] = []
        for crop in crops:
            rows.append(_write_image(staging, out_dir, crop.pixels, crop.split, crop.generator, 0,
                                     crop.file_name, crop.source, crop.licence, crop.photo_source))

        train_images = _to_tensor(np.stack([c.pixels for c in crops if c.split == "train"]))
        losses: dict[str, list[float]] = {}
        parameters: dict[str, int] = {}
        unet = None
        for family in config.generators:
            reals = [c for c in crops if c.generator == family]
            tick = time.perf_counter()
            if family == "vae_recon":
                vae, losses["vae_recon"] = train_vae(train_images, config, show_progress)
                parameters["vae_recon"] = count_parameters(vae, trainable_only=False)
                timings["train_vae_recon_s"] = time.perf_counter() - tick
                tick = time.perf_counter()
                fakes = vae_reconstruct(vae, _to_tensor(np.stack([c.pixels for c in reals])), config)
            elif family == "gan_upsampler":
                upsampler, losses["gan_upsampler"] = train_upsampler(train_images, config, show_progress)
                parameters["gan_upsampler"] = count_parameters(upsampler, trainable_only=False)
                timings["train_gan_upsampler_s"] = time.perf_counter() - tick
                tick = time.perf_counter()
                fakes = upsampler_reconstruct(upsampler, _to_tensor(np.stack([c.pixels for c in reals])), config)
            else:
                if unet is None:  # one UNet serves both diffusion families
                    unet, losses["diffusion_unet"] = train_diffusion_unet(train_images, config, show_progress)
                    parameters["diffusion_unet"] = count_parameters(unet, trainable_only=False)
                    timings["train_diffusion_unet_s"] = time.perf_counter() - tick
                    tick = time.perf_counter()
                generator = torch.Generator().manual_seed(_derived_seed(config.seed, "generate", family))
                if family == "diffusion_sdedit":
                    fakes = sdedit(unet, _to_tensor(np.stack([c.pixels for c in reals])), config, generator)
                else:
                    fakes = diffusion_sample(unet, len(reals), config, generator)
            timings[f"generate_{family}_s"] = time.perf_counter() - tick
            for crop, fake in zip(reals, _to_uint8(fakes), strict=True):
                # A pure sample is paired with (not derived from) a real of the same subset and split,
                # hence "noise~"; it carries that real's licence so the column stays total.
                origin = f"noise~{crop.source}" if family == "diffusion_sample" else crop.source
                rows.append(_write_image(staging, out_dir, fake, crop.split, family, 1, crop.file_name,
                                         f"{family}<-{origin}", crop.licence, crop.photo_source))

        manifest = normalise_manifest(pd.DataFrame(rows), AIGI_SCHEMA)
        manifest.to_parquet(staging / MANIFEST_FILE, index=False)
        timings["total_s"] = time.perf_counter() - started
        write_json_atomic(staging / BUILD_INFO_FILE, _build_info(
            config, key, photos, manifest, timings, losses, parameters))
    logger.info("default AIGI dataset: %d images in %.1f s", len(manifest), timings["total_s"])
    return manifest


def cache_key(config: DefaultAigiConfig, photos: list[RealPhoto]) -> str:
    payload = {"config": config.to_dict(), "builder_version": BUILDER_VERSION,
               "photos": sorted(photo.source for photo in photos)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# Real crops and splits
# --------------------------------------------------------------------------------------------------

def _derived_seed(seed: int, *parts: object) -> int:
    """An independent, stable seed per purpose, so adding a photo or a family does not reshuffle the rest."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _crop_photos(photos: list[RealPhoto], config: DefaultAigiConfig, show_progress: bool) -> list[_Crop]:
    crops: list[_Crop] = []
    for photo in progress(photos, desc="crop photos", enabled=show_progress):
        rgb = photo.load()
        height, width = rgb.shape[:2]
        short_side = min(height, width)
        count = config.crops_per_photo if short_side >= config.small_photo_min_side else config.crops_per_small_photo
        rng = np.random.default_rng(_derived_seed(config.seed, "crop", photo.source))
        image = Image.fromarray(rgb)
        for index in range(count):
            high = min(config.crop_side_max, short_side)
            low = min(config.crop_side_min, high)
            side = int(rng.integers(low, high + 1))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            patch = image.crop((left, top, left + side, top + side)).resize(
                (config.image_size, config.image_size), Image.Resampling.BICUBIC)
            crops.append(_Crop(photo.source, index, photo.licence, np.asarray(patch)))
    return crops


def _split_sizes(n_photos: int, fractions: Mapping[str, float]) -> dict[str, int]:
    total = sum(fractions.values())
    sizes = {split: max(1, round(n_photos * fractions[split] / total)) for split in ("val", "test")}
    sizes["train"] = n_photos - sizes["val"] - sizes["test"]
    if sizes["train"] < 1:
        raise ValueError(f"{n_photos} photos are too few for three splits")
    return sizes


def _assign_splits_and_families(crops: list[_Crop], photos: list[RealPhoto], config: DefaultAigiConfig) -> None:
    # Split by photo: crops of one photo are strongly correlated, so they must stay on one side.
    order = np.random.default_rng(_derived_seed(config.seed, "split")).permutation(len(photos))
    sizes = _split_sizes(len(photos), config.split_fractions)
    split_of: dict[str, str] = {}
    cursor = 0
    for split in SPLITS:
        for position in order[cursor:cursor + sizes[split]]:
            split_of[photos[position].source] = split
        cursor += sizes[split]
    for crop in crops:
        crop.split = split_of[crop.photo_source]
    # Within a split, shuffle the crops and deal them round-robin to the families: every subset gets
    # its own reals, spread over the split's photos, with counts differing by at most one.
    for split in SPLITS:
        members = [crop for crop in crops if crop.split == split]
        if len(members) < len(config.generators):
            raise ValueError(f"split {split!r} has {len(members)} crops, fewer than the "
                             f"{len(config.generators)} generator families; raise crops_per_photo or add photos")
        shuffled = np.random.default_rng(_derived_seed(config.seed, "families", split)).permutation(len(members))
        for rank, position in enumerate(shuffled):
            members[position].generator = config.generators[rank % len(config.generators)]


# --------------------------------------------------------------------------------------------------
# Generators: models, training (in the one training loop) and sampling (genguard.models.diffusion)
# --------------------------------------------------------------------------------------------------

def make_vae(config: DefaultAigiConfig):
    return diffusion.make_vae(config.vae_channels, config.vae_latent_channels, config.image_size)


class TransposedConvUpsampler(torch.nn.Module):
    """GAN-generator-like decoder: 3×3 stem, one transposed-conv ``Upsample2D`` per ×2, 1×1 to-RGB.

    Transposed convolutions with stride 2 and kernel 4 overlap unevenly and leave the periodic
    checkerboard pattern that frequency-domain GAN detectors key on; a 1×1 to-RGB layer (as in
    ProGAN) does not smooth it away.
    """

    def __init__(self, factor: int, channels: int) -> None:
        from diffusers.models.upsampling import Upsample2D

        super().__init__()
        self.factor = factor
        self.stem = torch.nn.Conv2d(3, channels, kernel_size=3, padding=1)
        blocks, width = [], channels
        for _ in range(int(math.log2(factor))):
            out_width = max(8, width // 2)
            blocks.append(Upsample2D(width, use_conv_transpose=True, out_channels=out_width))
            width = out_width
        self.blocks = torch.nn.ModuleList(blocks)
        self.to_rgb = torch.nn.Conv2d(width, 3, kernel_size=1)

    def forward(self, low_resolution: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.stem(low_resolution))
        for block in self.blocks:
            hidden = F.silu(block(hidden))
        return self.to_rgb(hidden)


def make_unet(config: DefaultAigiConfig):
    return diffusion.make_unet(config.unet_channels, config.image_size)


def _seeded(factory, config: DefaultAigiConfig, name: str):
    """Build a model with weights initialised from a seed derived from the config (the global RNG is
    left as it was: module initialisers draw from it, and callers should not see it move)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(config.seed, "init", name))
        return factory(config)


def _train(name: str, objective, images: torch.Tensor, generator: torch.Generator, config: DefaultAigiConfig,
           steps: int, lr: float, show_progress: bool) -> list[float]:
    """``steps`` Adam steps on random patches with a cosine decay to zero, in the one training loop.

    With only a few hundred steps, annealing the step size is what brings the loss down at the end
    instead of leaving it bouncing at the constant-lr noise floor. Returns the per-step losses.
    """
    stream = diffusion.RandomPatches(images, config.train_patch_size, config.batch_size, generator)
    train = TrainConfig(steps=max(1, steps), batch_size=config.batch_size, lr=lr, optimizer={"name": "adam"},
                        schedule={"name": "cosine"}, select_best=False)
    losses: list[float] = []
    fit(objective, stream, None, train, on_step=lambda step, logs: losses.append(logs["loss"]),
        desc=f"train {name}", show_progress=show_progress)
    objective.eval()
    return losses


def _patch_generator(config: DefaultAigiConfig, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(_derived_seed(config.seed, "batches", name))


def train_vae(images: torch.Tensor, config: DefaultAigiConfig, show_progress: bool = False):
    """AutoencoderKL trained with L1 reconstruction + a small KL term; returns (model, per-step losses)."""
    vae = _seeded(make_vae, config, "vae_recon")
    generator = _patch_generator(config, "vae_recon")
    objective = diffusion.VAEObjective(vae, config.vae_kl_weight, generator)
    return vae, _train("vae_recon", objective, images, generator, config, config.vae_steps, config.vae_lr, show_progress)


def _downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(images, scale_factor=1.0 / factor, mode="area")


def train_upsampler(images: torch.Tensor, config: DefaultAigiConfig, show_progress: bool = False):
    """The transposed-conv decoder trained as a ×factor super-resolver (L1); returns (model, losses)."""
    model = _seeded(lambda c: TransposedConvUpsampler(c.upsampler_factor, c.upsampler_channels),
                    config, "gan_upsampler")
    objective = diffusion.ReconstructionObjective(model, lambda batch: _downsample(batch, config.upsampler_factor))
    return model, _train("gan_upsampler", objective, images, _patch_generator(config, "gan_upsampler"), config,
                         config.upsampler_steps, config.upsampler_lr, show_progress)


def train_diffusion_unet(images: torch.Tensor, config: DefaultAigiConfig, show_progress: bool = False):
    """UNet2DModel trained with the DDPM loss (ε-prediction by default); returns (model, losses)."""
    unet = _seeded(make_unet, config, "diffusion_unet")
    generator = _patch_generator(config, "diffusion_unet")
    objective = diffusion.DenoisingObjective(unet, config.noise_schedule, generator)
    return unet, _train("diffusion_unet", objective, images, generator, config, config.diffusion_steps,
                        config.diffusion_lr, show_progress)


def vae_reconstruct(vae, images: torch.Tensor, config: DefaultAigiConfig) -> torch.Tensor:
    return diffusion.vae_reconstruct(vae, images, config.generation_batch_size)


def upsampler_reconstruct(model: torch.nn.Module, images: torch.Tensor, config: DefaultAigiConfig) -> torch.Tensor:
    return diffusion.in_chunks(lambda chunk: model(_downsample(chunk, config.upsampler_factor)), images,
                               config.generation_batch_size)


def sdedit(unet, images: torch.Tensor, config: DefaultAigiConfig, generator: torch.Generator) -> torch.Tensor:
    """SDEdit of real crops: noised to ``sdedit_strength`` of the schedule, denoised with DDIM."""
    return diffusion.sdedit(unet, images, config.noise_schedule, strength=config.sdedit_strength,
                            schedule_steps=config.sdedit_schedule_steps, generator=generator,
                            chunk_size=config.generation_batch_size)


def diffusion_sample(unet, count: int, config: DefaultAigiConfig, generator: torch.Generator) -> torch.Tensor:
    """Unconditional DDIM samples from Gaussian noise."""
    return diffusion.sample(unet, count, config.image_size, config.noise_schedule, steps=config.sample_steps,
                            generator=generator, chunk_size=config.generation_batch_size)


# --------------------------------------------------------------------------------------------------
# Image I/O, manifest and build info
# --------------------------------------------------------------------------------------------------

def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×H×W float32 in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """N×3×H×W in [-1, 1] → N×H×W×3 uint8: fakes are quantised exactly once, like the reals."""
    return (images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
            .permute(0, 2, 3, 1).contiguous().numpy())


def _write_image(staging: Path, out_dir: Path, pixels: np.ndarray, split: str, generator: str, label: int,
                 file_name: str, source: str, licence: str, origin: str) -> dict[str, Any]:
    relative = Path(split, generator, _LABEL_DIRS[label], file_name)
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same encoder and settings for every image (lossless PNG, fixed compression level, no metadata),
    # so the file bytes depend on the pixels only.
    Image.fromarray(pixels).save(target, format="PNG", compress_level=6)
    return {"path": str(out_dir / relative), "label": label, "generator": generator, "split": split,
            "sha256": sha256_file(target), "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
            "source": source, "licence": licence, "origin": origin}


def _build_info(config: DefaultAigiConfig, key: str, photos: list[RealPhoto], manifest: pd.DataFrame,
                timings: dict[str, float], losses: dict[str, list[float]],
                parameters: dict[str, int]) -> dict[str, Any]:
    import diffusers

    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (split, generator, label), group in manifest.groupby(["split", "generator", "label"]):
        counts.setdefault(split, {}).setdefault(generator, {})["fake" if label else "real"] = len(group)

    def summary(values: list[float]) -> dict[str, float]:
        window = max(1, len(values) // 10)
        return {"first_mean": float(np.mean(values[:window])), "last_mean": float(np.mean(values[-window:]))}

    return {
        "builder_version": BUILDER_VERSION,
        "cache_key": key,
        "config": config.to_dict(),
        "photos": [{"source": p.source, "licence": p.licence, "attribution": p.attribution} for p in photos],
        "licences": dict(sorted(manifest["licence"].value_counts().to_dict().items())),
        "counts": counts,
        "n_images": len(manifest),
        "timings_s": {name: round(value, 3) for name, value in timings.items()},
        "losses": {name: [round(v, 6) for v in values] for name, values in losses.items()},
        "loss_summary": {name: summary(values) for name, values in losses.items()},
        "parameters": parameters,
        "environment": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
    }
