"""The text-to-image testbed both T2I methods run on: a diffusers latent text-to-image model
(``UNet2DConditionModel`` with cross-attention, ``AutoencoderKL``, a CLIP text encoder and tokenizer, a
DDPM/DDIM noise schedule) whose sizes come from config.

One class for both scales:

- **embedded** (``pretrained: null``): random-init tiny components, trained by the project in two stages of
  the one training loop: ``autoencoder`` (the VAE alone) then ``denoiser`` (UNet + text encoder jointly,
  on the frozen VAE's latents, with 10 % of captions dropped for classifier-free guidance);
- **paper scale** (``pretrained: <folder or hub id>``): a Stable Diffusion 1.x checkpoint in diffusers
  layout (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``), loaded as it is; nothing trains here.

Choices where the sources leave room (recorded here, not in the spec):

- v-prediction for the tiny model: at a few hundred CPU steps an ε-model's samples stay noise while a
  v-model already follows prompts (Salimans & Ho 2022, arXiv 2202.00512, §4: v is well-conditioned at
  both ends of the schedule); SD-1.x keeps its own ε. Every method below works in the model's native
  parameterisation: guidance and negative guidance are linear in the prediction, and ε and v differ by a
  condition-independent affine map given (x_t, t), so the same formulas hold.
- 2 attention heads per cross-attention layer (``attention_head_dim: 2``, which diffusers reads as the
  head count): SD-1.x has 8 heads of 40-160 dims; with 32-64 channels 8 heads would be 4-8 dims each.
- The latent is scaled to unit variance, as SD's 0.18215 does: the scale is measured on the training
  images once the autoencoder is trained (a buffer, saved with the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genguard.models.diffusion import NoiseSchedule, group_count
from genguard.registry import MODELS
from genguard.training.trainable import Trainable

FAMILY = "t2i"
METHOD = "t2i_testbed"
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class PromptError(ValueError):
    """A prompt the model cannot take (empty, too long for its text encoder, unknown concept)."""


def check_checkpoint_folder(path: str | Path) -> None:
    """A local diffusers checkpoint must hold every component; name the missing ones and the fix."""
    folder = Path(path)
    missing = [c for c in SD_COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a complete diffusers text-to-image checkpoint: missing {', '.join(missing)}/. "
            "Point t2i_model.pretrained at a Stable Diffusion 1.x folder in diffusers layout (as written by "
            "StableDiffusionPipeline.save_pretrained) or at a hub id such as CompVis/stable-diffusion-v1-4.")


def _is_local(pretrained: str) -> bool:
    return Path(pretrained).exists() or pretrained.startswith((".", "/", "~", "data/"))


class TextToImageModel(Trainable):
    """Tokenizer + text encoder + UNet + VAE + noise schedule. ``encode_text`` and ``generate`` are what the
    methods use; ``training_loss`` trains the embedded testbed in the one loop."""

    def __init__(self, *, image_size: int = 32, vae: dict[str, Any] | None = None, unet: dict[str, Any] | None = None,
                 text: dict[str, Any] | None = None, schedule: dict[str, Any] | None = None,
                 pretrained: str | None = None, caption_dropout: float = 0.1, autoencoder_steps: int = 300,
                 autoencoder_lr: float = 2e-3, kl_weight: float = 1e-6, seed: int = 0) -> None:
        vae, unet, text = dict(vae or {}), dict(unet or {}), dict(text or {})
        super().__init__({"family": FAMILY, "method": METHOD, "image_size": image_size, "vae": vae, "unet": unet,
                          "text": text, "schedule": dict(schedule or {}), "pretrained": pretrained,
                          "caption_dropout": caption_dropout, "autoencoder_steps": autoencoder_steps,
                          "autoencoder_lr": autoencoder_lr, "kl_weight": kl_weight, "seed": seed})
        self.caption_dropout, self.kl_weight = caption_dropout, kl_weight
        self.autoencoder_steps, self.autoencoder_lr = autoencoder_steps, autoencoder_lr
        self.generator = torch.Generator().manual_seed(seed)
        self.pretrained = pretrained
        if pretrained:
            self._load_pretrained(pretrained)
        else:
            # The random init comes from ``seed`` alone (not the caller's global RNG): same spec, same model.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build_tiny(image_size, vae, unet, text, schedule or {})
        self.ddpm, _ = self.schedule.schedulers()

    # ---------------------------------------------------------------------------------- building
    def _build_tiny(self, image_size: int, vae: dict[str, Any], unet: dict[str, Any], text: dict[str, Any],
                    schedule: dict[str, Any]) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from genguard.families.t2i.tokenizer import clip_tokenizer

        vae_channels = tuple(vae.get("channels", (32, 64)))
        latent_channels = int(vae.get("latent_channels", 4))
        self.vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels), block_out_channels=vae_channels,
            layers_per_block=1, latent_channels=latent_channels, norm_num_groups=group_count(vae_channels),
            sample_size=image_size, mid_block_add_attention=False)
        width = int(text.get("width", 64))
        max_length = int(text.get("max_length", 16))
        self.tokenizer = clip_tokenizer(max_length)
        self.text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(self.tokenizer), hidden_size=width, intermediate_size=2 * width,
            num_hidden_layers=int(text.get("layers", 2)), num_attention_heads=int(text.get("heads", 4)),
            max_position_embeddings=max_length, bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id))
        channels = tuple(unet.get("channels", (32, 64, 64)))
        # Which resolutions get cross-attention is config: on a CPU each one at a higher resolution costs
        # a few times more per step, and prompt-following of *shape* needs one at the top latent resolution.
        cross = tuple(unet.get("cross_attention", (False,) + (True,) * (len(channels) - 1)))
        self.unet = UNet2DConditionModel(
            sample_size=image_size // 2 ** (len(vae_channels) - 1), in_channels=latent_channels,
            out_channels=latent_channels, block_out_channels=channels,
            layers_per_block=int(unet.get("layers_per_block", 1)),
            down_block_types=tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross),
            up_block_types=tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(cross)),
            cross_attention_dim=width, attention_head_dim=int(unet.get("heads", 2)),
            norm_num_groups=group_count(channels))
        self.schedule = NoiseSchedule(**{"prediction_type": "v_prediction", "clip_sample": False, **schedule})
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.image_size = image_size

    def _load_pretrained(self, pretrained: str) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel

        from genguard.families.t2i.tokenizer import clip_tokenizer

        if _is_local(pretrained):
            check_checkpoint_folder(pretrained)
        self.unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet")
        self.vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae")
        self.text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder")
        tokenizer_dir = str(Path(pretrained) / "tokenizer") if _is_local(pretrained) else f"{pretrained}/tokenizer"
        self.tokenizer = clip_tokenizer(self.text_encoder.config.max_position_embeddings, tokenizer_dir)
        config = DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler").config
        self.schedule = NoiseSchedule(train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type,
                                      beta_schedule=config.beta_schedule, beta_start=config.beta_start,
                                      beta_end=config.beta_end, clip_sample=False)
        self.register_buffer("latent_scale", torch.tensor(float(self.vae.config.scaling_factor)))
        self.image_size = int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ---------------------------------------------------------------------------------- text
    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def tokenize(self, prompts: Sequence[str], *, allow_empty: bool = True) -> torch.Tensor:
        """Token ids (N x max_length), padded with ``<|endoftext|>``; a prompt that does not fit fails by name."""
        prompts = list(prompts)
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise PromptError(f"prompt {prompt!r} is not a string")
            if not allow_empty and not prompt.strip():
                raise PromptError("an empty prompt: every prompt must name what to draw")
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=False).input_ids
        too_long = [(p, len(i)) for p, i in zip(prompts, ids) if len(i) > self.max_length]
        if too_long:
            prompt, length = too_long[0]
            raise PromptError(f"prompt {prompt!r} is {length} tokens with start/end; the text encoder takes "
                              f"{self.max_length}. Shorten it ({len(too_long)} prompt(s) too long)")
        return torch.tensor(ids, dtype=torch.long)

    def encode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids=input_ids.to(self.device)).last_hidden_state

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Cross-attention context (N x max_length x width): the text encoder's last hidden state, as SD uses."""
        return self.encode_ids(self.tokenize(prompts))

    # ---------------------------------------------------------------------------------- images
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = int(self.unet.config.sample_size)
        return int(self.unet.config.in_channels), size, size

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] -> scaled latents (a posterior sample with ``generator``, else its mean)."""
        posterior = self.vae.encode(images.to(self.device) * 2.0 - 1.0).latent_dist
        latents = posterior.sample(generator=generator) if generator is not None else posterior.mean
        return latents * self.latent_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(latents / self.latent_scale).sample + 1.0) / 2.0).clamp(0.0, 1.0)

    def initial_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """One noise tensor per seed: a prompt's image depends on its own seed only, not on its batch."""
        return torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s)))
                            for s in seeds]).to(self.device)

    def sampling_scheduler(self, steps: int):
        """A fresh DDIM scheduler set to ``steps`` (stateless: several trajectories may share it)."""
        _, ddim = self.schedule.schedulers()
        ddim.set_timesteps(steps)
        return ddim

    def guided_prediction(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                          empty: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance: u + w (c - u), both halves in one UNet call."""
        both = self.unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=torch.cat([context, empty])
                         ).sample
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    def denoise(self, latents: torch.Tensor, context: torch.Tensor, *, steps: int, guidance: float,
                unet: nn.Module | None = None) -> torch.Tensor:
        """DDIM (η = 0) with guidance from ``latents`` at t = T; ``unet`` swaps in another UNet (an edited copy)."""
        scheduler = self.sampling_scheduler(steps)
        empty = self.encode_text([""]).expand(len(context), -1, -1)
        original = self.unet
        try:
            if unet is not None:
                self.unet = unet
            for timestep in scheduler.timesteps:
                prediction = self.guided_prediction(latents, timestep, context, empty, guidance)
                latents = scheduler.step(prediction, timestep, latents, eta=0.0).prev_sample
        finally:
            self.unet = original
        return latents

    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | None = None, *, seeds: Sequence[int], steps: int = 20,
                 guidance: float = 4.0, context: torch.Tensor | None = None, batch_size: int = 64,
                 unet: nn.Module | None = None) -> torch.Tensor:
        """Images in [0, 1] (N x 3 x S x S) for ``prompts`` (or a ready ``context``), one seed per image.

        Deterministic for a seed: the initial noise comes from the seed alone and DDIM with η = 0 adds none.
        """
        if context is None:
            context = self.encode_text(list(prompts or []))
        if len(seeds) != len(context):
            raise ValueError(f"{len(context)} prompts but {len(seeds)} seeds: give one seed per prompt")
        images = []
        for start in range(0, len(context), batch_size):
            chunk = context[start:start + batch_size]
            latents = self.initial_latents(seeds[start:start + batch_size])
            images.append(self.decode_latents(self.denoise(latents, chunk, steps=steps, guidance=guidance,
                                                           unet=unet)))
        return torch.cat(images) if images else torch.empty(0, 3, self.image_size, self.image_size)

    # ---------------------------------------------------------------------------------- training
    def training_stages(self) -> list[tuple[str, dict[str, Any]]]:
        if self.pretrained:
            return []  # a published checkpoint is used as it is
        return [("autoencoder", {"steps": self.autoencoder_steps, "epochs": None, "lr": self.autoencoder_lr,
                                 "schedule": {"name": "constant"}}),
                ("denoiser", {})]

    def begin_stage(self, name: str, train_set: Any) -> None:
        self.stage = name
        self.vae.requires_grad_(name == "autoencoder")
        self.unet.requires_grad_(name == "denoiser")
        self.text_encoder.requires_grad_(name == "denoiser")
        if name == "denoiser":
            images = torch.stack([train_set[i]["image"] for i in range(min(len(train_set), 512))])
            with torch.no_grad():
                latents = self.vae.encode(images * 2.0 - 1.0).latent_dist.mean
            self.latent_scale.fill_(1.0 / float(latents.std().clamp_min(1e-6)))

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        if getattr(self, "stage", "denoiser") == "autoencoder":
            posterior = self.vae.encode(images * 2.0 - 1.0).latent_dist
            reconstruction = self.vae.decode(posterior.sample(generator=self.generator)).sample
            reconstruction_loss = F.mse_loss(reconstruction, images * 2.0 - 1.0)
            kl = posterior.kl().mean() / posterior.mean[0].numel()
            return reconstruction_loss + self.kl_weight * kl, {"reconstruction": float(reconstruction_loss.detach())}
        with torch.no_grad():
            latents = self.encode_images(images, self.generator)
        ids = batch["input_ids"]
        drop = torch.rand(len(ids), generator=self.generator) < self.caption_dropout
        ids = torch.where(drop[:, None], self.tokenize([""]).expand_as(ids), ids)
        noise = torch.randn(latents.shape, generator=self.generator)
        timesteps = torch.randint(0, self.schedule.train_timesteps, (len(latents),), generator=self.generator)
        noisy = self.ddpm.add_noise(latents, noise, timesteps)
        target = self.ddpm.get_velocity(latents, noise, timesteps) \
            if self.schedule.prediction_type == "v_prediction" else noise
        prediction = self.unet(noisy, timesteps, encoder_hidden_states=self.encode_ids(ids)).sample
        return F.mse_loss(prediction, target), {}

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """The denoiser's output at mid-schedule on fixed noise: a deterministic fingerprint of the weights."""
        latents = self.encode_images(batch["image"])
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        timesteps = torch.full((len(latents),), self.schedule.train_timesteps // 2)
        noisy = self.ddpm.add_noise(latents, noise, timesteps)
        return self.unet(noisy, timesteps, encoder_hidden_states=self.encode_ids(batch["input_ids"])).sample.flatten(1)


@MODELS.register(METHOD)
def build_t2i_testbed(**options: Any) -> TextToImageModel:
    return TextToImageModel(**options)
