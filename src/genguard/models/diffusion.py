"""Diffusers building blocks every family trains the same way: model factories, their training
objectives as :class:`~genguard.training.trainable.Trainable` models (so they train in the one
training loop, not a loop of their own), noise schedulers and DDIM sampling / SDEdit.

Used by the AIGI embedded dataset (its generator families) and by the text-to-image testbed. Sizes
are config; nothing here knows what the images are for.

Randomness: training streams and losses draw from one explicit ``torch.Generator`` (patch picks,
flips, noise, timesteps, VAE posterior samples, in that order per step), so a build is reproducible
from its seed and never touches the caller's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from genguard.training.trainable import Trainable


def group_count(channels: tuple[int, ...] | list[int]) -> int:
    """GroupNorm needs a group count dividing every width; up to 8 groups, as in small diffusers configs."""
    return math.gcd(8, *channels)


def make_vae(channels: tuple[int, ...], latent_channels: int, image_size: int, *, attention: bool = False):
    """An ``AutoencoderKL`` with ``len(channels)`` blocks (``len - 1`` halvings of the resolution).

    ``attention=False`` drops the mid-block attention: the model stays convolutional (trained on
    patches, applied to whole images) and cheap on a CPU.
    """
    from diffusers import AutoencoderKL

    depth = len(channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * depth, up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=tuple(channels), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=group_count(channels), sample_size=image_size, mid_block_add_attention=attention)


def make_unet(channels: tuple[int, ...], image_size: int, *, attention: bool = False):
    """An unconditional ``UNet2DModel`` (convolutional only by default, like :func:`make_vae`)."""
    from diffusers import UNet2DModel

    depth = len(channels)
    return UNet2DModel(
        sample_size=image_size, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
        layers_per_block=1, down_block_types=("DownBlock2D",) * depth, up_block_types=("UpBlock2D",) * depth,
        norm_num_groups=group_count(channels), add_attention=attention)


@dataclass(frozen=True)
class NoiseSchedule:
    train_timesteps: int = 1000
    prediction_type: str = "epsilon"     # epsilon | v_prediction | sample
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001         # used by the linear schedules only
    beta_end: float = 0.02
    clip_sample: bool = True           # pixel models; latent models (their latents are not in [-1, 1]) turn it off

    def schedulers(self):
        """(DDPM for training, DDIM for sampling) over the same betas.

        Cosine betas suit small images better than the linear schedule; "trailing" DDIM spacing makes
        the first sampling step start at t = T-1, i.e. from pure noise.
        """
        from diffusers import DDIMScheduler, DDPMScheduler

        common = {"num_train_timesteps": self.train_timesteps, "beta_schedule": self.beta_schedule,
                  "beta_start": self.beta_start, "beta_end": self.beta_end, "clip_sample": self.clip_sample,
                  "prediction_type": self.prediction_type}
        return (DDPMScheduler(**common),
                DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="trailing"))


# --------------------------------------------------------------------------------------------------
# Training streams and objectives


class RandomPatches(IterableDataset):
    """An endless stream of ``{"image": batch}``: random ``patch`` x ``patch`` crops with random
    horizontal flips, drawn from ``images`` (N x 3 x H x W) with ``generator``.

    Fully convolutional models train on small patches and apply to whole images: on 2 CPU cores
    more, cheaper steps beat fewer, larger ones. ``state_dict`` makes the stream resumable.
    """

    def __init__(self, images: torch.Tensor, patch: int, batch_size: int, generator: torch.Generator) -> None:
        self.images, self.patch, self.batch_size, self.generator = images, patch, batch_size, generator

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        count, _, size, _ = self.images.shape
        patch, generator = self.patch, self.generator
        while True:
            picks = torch.randint(0, count, (self.batch_size,), generator=generator)
            tops = torch.randint(0, size - patch + 1, (self.batch_size,), generator=generator)
            lefts = torch.randint(0, size - patch + 1, (self.batch_size,), generator=generator)
            flips = torch.rand(self.batch_size, generator=generator) < 0.5
            batch = torch.stack([self.images[i, :, t:t + patch, l:l + patch]
                                 for i, t, l in zip(picks.tolist(), tops.tolist(), lefts.tolist())])
            yield {"image": torch.where(flips[:, None, None, None], batch.flip(-1), batch)}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class VAEObjective(Trainable):
    """AutoencoderKL: L1 reconstruction of a posterior sample + ``kl_weight`` x KL per latent element.

    The KL is averaged per latent element: weak enough to keep reconstructions sharp, strong enough
    to keep the latent a Gaussian code rather than a copy of the pixels.
    """

    def __init__(self, vae: torch.nn.Module, kl_weight: float, generator: torch.Generator) -> None:
        super().__init__({"objective": "vae", "kl_weight": kl_weight})
        self.vae, self.kl_weight, self.generator = vae, kl_weight, generator

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator=self.generator)).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return F.l1_loss(reconstruction, images) + self.kl_weight * kl, {}


class ReconstructionObjective(Trainable):
    """Any image-to-image model trained to reproduce its target with L1 (``degrade`` makes its input)."""

    def __init__(self, model: torch.nn.Module, degrade: Any) -> None:
        super().__init__({"objective": "reconstruction"})
        self.model, self.degrade = model, degrade

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        return F.l1_loss(self.model(self.degrade(images)), images), {}


class DenoisingObjective(Trainable):
    """The DDPM loss: noise images at random timesteps, predict the noise (or v, or the image).

    Extra batch entries named in ``conditioning`` are passed to the UNet by keyword (a text-to-image
    UNet's ``encoder_hidden_states``), so conditional and unconditional models share the objective.
    """

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, generator: torch.Generator,
                 conditioning: tuple[str, ...] = ()) -> None:
        super().__init__({"objective": "denoising", "prediction_type": schedule.prediction_type})
        self.unet, self.schedule, self.generator, self.conditioning = unet, schedule, generator, conditioning
        self.ddpm, _ = schedule.schedulers()

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        noise = torch.randn(images.shape, generator=self.generator)
        timesteps = torch.randint(0, self.schedule.train_timesteps, (images.shape[0],), generator=self.generator)
        noisy = self.ddpm.add_noise(images, noise, timesteps)
        if self.schedule.prediction_type == "epsilon":
            target = noise
        elif self.schedule.prediction_type == "v_prediction":
            target = self.ddpm.get_velocity(images, noise, timesteps)
        else:
            target = images
        extra = {name: batch[name] for name in self.conditioning}
        return F.mse_loss(self.unet(noisy, timesteps, **extra).sample, target), {}


# --------------------------------------------------------------------------------------------------
# Sampling


def in_chunks(function, images: torch.Tensor, chunk_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([function(chunk) for chunk in images.split(chunk_size)])


def vae_reconstruct(vae, images: torch.Tensor, chunk_size: int) -> torch.Tensor:
    # The posterior mode, not a sample: the output should differ from its input only by the model.
    return in_chunks(lambda chunk: vae.decode(vae.encode(chunk).latent_dist.mode()).sample, images, chunk_size)


def ddim_denoise(unet, scheduler, sample: torch.Tensor, timesteps: torch.Tensor, **conditioning) -> torch.Tensor:
    for timestep in timesteps:
        noise_prediction = unet(sample, timestep, **conditioning).sample
        sample = scheduler.step(noise_prediction, timestep, sample, eta=0.0).prev_sample
    return sample


def sdedit(unet, images: torch.Tensor, schedule: NoiseSchedule, *, strength: float, schedule_steps: int,
           generator: torch.Generator, chunk_size: int) -> torch.Tensor:
    """SDEdit: noise images to ``strength`` of a ``schedule_steps`` DDIM schedule, then denoise them."""
    _, ddim = schedule.schedulers()
    ddim.set_timesteps(schedule_steps)
    start = min(len(ddim.timesteps) - 1, int(round(len(ddim.timesteps) * (1.0 - strength))))
    timesteps = ddim.timesteps[start:]
    # Draw all the noise up front so results do not depend on the chunking.
    noise = torch.randn(images.shape, generator=generator)
    noisy = ddim.add_noise(images, noise, timesteps[:1].repeat(images.shape[0]))
    return in_chunks(lambda chunk: ddim_denoise(unet, ddim, chunk, timesteps), noisy, chunk_size)


def sample(unet, count: int, image_size: int, schedule: NoiseSchedule, *, steps: int, generator: torch.Generator,
           chunk_size: int) -> torch.Tensor:
    """Unconditional DDIM samples from Gaussian noise."""
    _, ddim = schedule.schedulers()
    ddim.set_timesteps(steps)
    noise = torch.randn((count, 3, image_size, image_size), generator=generator)
    return in_chunks(lambda chunk: ddim_denoise(unet, ddim, chunk, ddim.timesteps), noise, chunk_size)
