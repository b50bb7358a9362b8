"""Concept erasure on the text-to-image testbed: TICoE, its two modules (CCCM, HVRL), and the ESD and UCE
baselines it is compared with.

- **TICoE** (Text-Image Collaborative Erasing, arXiv 2604.15829, CVPR 2026; official trainer
  OpenAscent-L/TICoE, re-implemented from the description in ``specs/t2i_security_methods.md`` §1.4 —
  the repository has no licence, nothing is copied): a trainable copy of the UNet (student) learns the
  negative-guidance target u − γ(c − u) of the frozen original (teacher). The text condition is a
  Dirichlet-weighted convex mix of a prompt bank (:class:`ConvexConceptManifold`, CCCM); the noisy input is a
  forward-noised VAE latent of a reference image, refined by a small multi-scale transformer
  (:class:`HierarchicalVisualRepresentation`, HVRL) trained jointly and discarded afterwards.
- **ESD** (Gandikota et al., arXiv 2303.07345; rohitgandikota/erasing): the same target, ε(∅) − η(ε(c) − ε(∅)),
  with x_t from partial DDIM sampling by the *student* at guidance 3 (the original formulation, review note 2).
- **UCE** (Gandikota et al., arXiv 2308.14761; rohitgandikota/unified-concept-editing): a closed-form re-solve of
  every cross-attention ``to_k`` / ``to_v`` (the official form, review note 1).

Every method works in the testbed's native parameterisation (v for the embedded model, ε for SD-1.x): the
targets are linear combinations of predictions at the same (x_t, t), and ε and v differ by a condition-independent
affine map given (x_t, t), so the same formulas hold.

What is stored (``init_spec`` + state dict, through ``genguard.io.model_files``): the erasers record the wrapped
testbed's ``init_spec`` as ``model_spec`` and keep their *whole* state — frozen testbed (teacher UNet, VAE, text
encoder), student UNet, HVRL and the CCCM buffers. Loading rebuilds a randomly initialised testbed from
``model_spec`` and overwrites every weight. That doubles the UNet on disk but needs no second file and no path
to the base model; at SD scale export only ``eraser.student`` (or :meth:`ConceptEraser.edited_model`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import IterableDataset

# Importing the testbed also registers ``t2i_testbed``, which rebuilding an eraser's ``model_spec`` needs.
from genguard.families.t2i.testbed import TextToImageModel
from genguard.registry import MODELS, build_model
from genguard.training.trainable import Trainable

FAMILY = "t2i"
TRAIN_PARAMS = ("full", "xattn", "noxattn")
#: Parameters ESD's "noxattn" (ESD-u) leaves frozen besides the cross-attention: the CompVis script skips names
#: starting with ``out.`` (SD's output norm + conv) and containing ``time_embed``; these are their diffusers names.
NOXATTN_FROZEN_PREFIXES = ("time_embedding", "conv_out", "conv_norm_out")


# --------------------------------------------------------------------------------------------------
# Shared pieces


def select_trainable(unet: nn.Module, train_params: str) -> list[str]:
    """Set ``requires_grad`` on ``unet`` for ESD's parameter subsets and return the trainable names.

    ``full``: everything (TICoE, Co-Erasing image stage). ``xattn``: the cross-attention blocks ``attn2`` only
    (ESD-x). ``noxattn``: everything except ``attn2``, the time embedding and the output layer (ESD-u; the
    CompVis ESD script's exclusions, which Co-Erasing's code reuses).
    """
    if train_params not in TRAIN_PARAMS:
        raise ValueError(f"train_params must be one of {TRAIN_PARAMS}, got {train_params!r}")
    names = []
    for name, parameter in unet.named_parameters():
        if train_params == "full":
            trainable = True
        elif train_params == "xattn":
            trainable = "attn2" in name
        else:
            trainable = "attn2" not in name and not name.startswith(NOXATTN_FROZEN_PREFIXES)
        parameter.requires_grad_(trainable)
        if trainable:
            names.append(name)
    if not names:
        raise ValueError(f"train_params {train_params!r} selects no UNet parameter (no cross-attention layers?)")
    return names


def negative_guidance_target(unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                             context: torch.Tensor, empty: torch.Tensor, scale: float) -> torch.Tensor:
    """u − scale·(c − u) from ``unet`` at (latents, t): ESD's and TICoE's erasure target.

    Conditional and unconditional halves go through one batched call (as both official trainers do).
    """
    with torch.no_grad():
        both = unet(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]),
                    encoder_hidden_states=torch.cat([context, empty])).sample
        conditional, unconditional = both.chunk(2)
        return unconditional - scale * (conditional - unconditional)


def binned_timesteps(count: int, train_timesteps: int, bins: int) -> torch.Tensor:
    """TICoE's timestep draw: a bin b ~ U{0..bins−1}, then t ~ U{⌊Tb/bins⌋ .. ⌊T(b+1)/bins⌋ − 1}
    (effectively U{0..T−1}; kept as the code does it). Global RNG, so a run is seeded and resumed by the loop."""
    bins = max(1, min(int(bins), train_timesteps))
    chosen = torch.randint(0, bins, (count,))
    low = chosen * train_timesteps // bins
    high = (chosen + 1) * train_timesteps // bins
    return (low + (torch.rand(count) * (high - low)).long()).clamp_max(train_timesteps - 1)


def with_unet(model: TextToImageModel, unet: nn.Module) -> TextToImageModel:
    """A copy of the text-to-image ``model`` whose UNet is (a copy of) ``unet``: the edited model, savable with
    ``save_model_dir`` as an ordinary testbed (its ``init_spec`` is unchanged; only weights differ)."""
    # deepcopy with the UNet pre-seeded in the memo: everything is copied except the UNet, which is replaced.
    replacement = copy.deepcopy(unet).requires_grad_(False)
    edited = copy.deepcopy(model, memo={id(model.unet): replacement})
    return edited


class ReferenceStream(IterableDataset):
    """An endless stream of ``{"image": batch}`` drawn uniformly *with replacement* from reference ``images``
    (N x 3 x S x S in [0, 1]), as TICoE's trainer draws x₀. ``state_dict`` makes the stream resumable."""

    def __init__(self, images: torch.Tensor, batch_size: int, generator: torch.Generator | None = None) -> None:
        if len(images) == 0:
            raise ValueError("ReferenceStream needs at least one reference image")
        self.images, self.batch_size = images, int(batch_size)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            picks = torch.randint(0, len(self.images), (self.batch_size,), generator=self.generator)
            yield {"image": self.images[picks]}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


# --------------------------------------------------------------------------------------------------
# CCCM


class ConvexConceptManifold(nn.Module):
    """Continuous convex concept manifold (TICoE §3, arXiv 2604.15829; official ``ticoe/prompt_bank.py``).

    Bank e_i = LN(E(p_i)) (non-affine LayerNorm over the last dim when ``layernorm``); each resample draws
    w ~ Dirichlet(1/τ · 1_N), mixes ẽ = Σ w_i e_i (inside the bank's convex hull), adds N(0, σ²) jitter and
    applies LN again. The mixture is kept for ``resample_every`` calls (200 in the official trainer, so 500
    iterations see 3 mixtures; 1 = the dense ablation). Only e_c gets the extra LN; the empty prompt stays raw
    (review note 3), and :attr:`stats` reports how far LN moves a real prompt embedding (cosine, norm ratio).

    The raw bank, the current mixture and the call counter are persistent buffers, so a resumed or reloaded
    eraser continues with the same condition. Randomness comes from the global RNG (seeded by the loop).
    """

    def __init__(self, raw_bank: torch.Tensor, *, tau: float = 0.7, noise_std: float = 1e-3,
                 resample_every: int = 200, layernorm: bool = True) -> None:
        super().__init__()
        if raw_bank.dim() != 3 or len(raw_bank) == 0:
            raise ValueError(f"the prompt bank must be N x L x D embeddings with N >= 1, got {tuple(raw_bank.shape)}")
        if tau <= 0 or resample_every < 1:
            raise ValueError("CCCM needs tau > 0 and resample_every >= 1")
        self.tau, self.noise_std, self.resample_every, self.layernorm = tau, noise_std, int(resample_every), layernorm
        self.register_buffer("raw_bank", raw_bank.detach().clone())
        self.register_buffer("current", torch.zeros_like(raw_bank[:1]))
        self.register_buffer("weights", torch.zeros(len(raw_bank)))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.stats = self.layernorm_stats(raw_bank)

    def normalise(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(embeddings, embeddings.shape[-1:]) if self.layernorm else embeddings

    @staticmethod
    def layernorm_stats(raw: torch.Tensor) -> dict[str, float]:
        """Mean cosine and norm ratio ‖LN(E(p))‖ / ‖E(p)‖ over the bank (per prompt, flattened L x D): how much the
        training condition differs from the un-normalised prompt embeddings used at inference (review note 3)."""
        normed = F.layer_norm(raw, raw.shape[-1:])
        flat_raw, flat_normed = raw.flatten(1).double(), normed.flatten(1).double()
        cosine = F.cosine_similarity(flat_normed, flat_raw, dim=1)
        ratio = flat_normed.norm(dim=1) / flat_raw.norm(dim=1).clamp_min(1e-12)
        return {"ln_cosine": float(cosine.mean()), "ln_norm_ratio": float(ratio.mean())}

    @property
    def bank(self) -> torch.Tensor:
        return self.normalise(self.raw_bank)

    def sample_weights(self) -> torch.Tensor:
        concentration = torch.full((len(self.raw_bank),), 1.0 / self.tau, dtype=torch.float64)
        return torch.distributions.Dirichlet(concentration).sample().to(self.raw_bank.dtype)

    def mix(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ w_i e_i (1 x L x D), before jitter and the final LN."""
        return torch.einsum("n,nld->ld", weights.to(self.raw_bank), self.bank)[None]

    def resample(self) -> torch.Tensor:
        weights = self.sample_weights()
        mixed = self.mix(weights)
        if self.noise_std:
            mixed = mixed + self.noise_std * torch.randn_like(mixed)
        self.weights.copy_(weights)
        self.current.copy_(self.normalise(mixed))
        return self.current

    def forward(self) -> torch.Tensor:
        """The condition e_c for this training call (1 x L x D); resamples every ``resample_every`` calls."""
        if int(self.calls) % self.resample_every == 0:
            self.resample()
        self.calls += 1
        return self.current.clone()  # a copy: the next resample writes the buffer in place


# --------------------------------------------------------------------------------------------------
# HVRL


def sinusoidal_positions(count: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """The Transformer's sine/cosine table (count x dim): sin on even, cos on odd channels."""
    position = torch.arange(count, dtype=torch.float32, device=device)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(count, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


class HierarchicalVisualRepresentation(nn.Module):
    """HVRL (TICoE §3, arXiv 2604.15829; official ``ticoe/hvrl.py``): z_t is resized bilinearly
    (align_corners=False) to each scale in ``scales`` (⌊sH⌋ x ⌊sW⌋), flattened to tokens and concatenated, given a
    sinusoidal position embedding over the global token index, passed through ``depth`` PyTorch
    ``TransformerEncoderLayer`` blocks (d_model = C, feed-forward 4C, PyTorch defaults: dropout 0.1, ReLU,
    post-norm); the first H·W (full-resolution) tokens give F, and z_f = z_t + λ·F.

    ``heads`` must divide C (4 for SD's and the testbed's C = 4); ``None`` picks the largest divisor of C up to 4.
    """

    def __init__(self, channels: int, *, scales: Sequence[float] = (1.0, 0.75, 0.5), depth: int = 2,
                 heads: int | None = None, lam: float = 0.5, dropout: float = 0.1) -> None:
        super().__init__()
        heads = heads or max(h for h in range(1, min(4, channels) + 1) if channels % h == 0)
        if channels % heads:
            raise ValueError(f"HVRL heads ({heads}) must divide the latent channels ({channels})")
        if not scales or float(scales[0]) != 1.0:
            raise ValueError(f"HVRL scales must start with 1.0 (its first H·W tokens are the output), got {scales}")
        self.scales, self.lam, self.channels = tuple(float(s) for s in scales), float(lam), channels
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(channels, heads, dim_feedforward=4 * channels, dropout=dropout,
                                       batch_first=True) for _ in range(depth)])

    def tokens(self, latents: torch.Tensor) -> torch.Tensor:
        height, width = latents.shape[-2:]
        parts = []
        for scale in self.scales:
            size = (max(1, math.floor(scale * height)), max(1, math.floor(scale * width)))
            resized = latents if size == (height, width) else F.interpolate(
                latents, size=size, mode="bilinear", align_corners=False)
            parts.append(resized.flatten(2).transpose(1, 2))
        return torch.cat(parts, dim=1)

    def refinement(self, latents: torch.Tensor) -> torch.Tensor:
        """F (same shape as ``latents``) before the residual."""
        batch, channels, height, width = latents.shape
        tokens = self.tokens(latents)
        hidden = tokens + sinusoidal_positions(tokens.shape[1], channels, latents.device).to(tokens.dtype)
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden[:, : height * width].transpose(1, 2).reshape(batch, channels, height, width)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if self.lam == 0.0:
            return latents  # exact identity, and no wasted transformer pass
        return latents + self.lam * self.refinement(latents)


# --------------------------------------------------------------------------------------------------
# Erasers


class ConceptEraser(Trainable):
    """What every fine-tuning eraser shares: the wrapped testbed (frozen; its UNet is the teacher), a trainable
    copy of its UNet (:attr:`student`), the concept prompts' raw embeddings and the empty prompt's.

    Pass ``model`` to wrap a ready (trained) :class:`~genguard.families.t2i.testbed.TextToImageModel` instance —
    its parameters are frozen in place (it is the teacher) — or only ``model_spec`` to build one; either way
    ``init_spec["model_spec"]`` is the testbed's own spec. Use the result through :attr:`student`,
    :meth:`generate` (``model.generate(..., unet=student)``) or :meth:`edited_model`.
    """

    def __init__(self, init_spec: dict[str, Any], *, model_spec: dict[str, Any] | None, model: TextToImageModel | None,
                 prompts: Sequence[str], train_params: str, erase_weight: float) -> None:
        if model is None and model_spec is None:
            raise ValueError("give the text-to-image model to erase from (model=) or its spec (model_spec=)")
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"an eraser needs at least one non-empty concept prompt, got {prompts!r}")
        model = model if model is not None else build_model(dict(model_spec))
        super().__init__({"family": FAMILY, **init_spec, "model_spec": dict(model.init_spec), "prompts": prompts,
                          "train_params": train_params, "erase_weight": erase_weight})
        self.prompts, self.train_params, self.erase_weight = prompts, train_params, float(erase_weight)
        self.model = model
        self.student = copy.deepcopy(model.unet)
        model.requires_grad_(False)
        self.trainable_names = select_trainable(self.student, train_params)
        with torch.no_grad():
            self.register_buffer("concept_context", model.encode_text(prompts).detach().clone())
            self.register_buffer("empty_context", model.encode_text([""]).detach().clone())

    @property
    def teacher(self) -> nn.Module:
        return self.model.unet

    def train(self, mode: bool = True) -> ConceptEraser:
        super().train(mode)
        self.model.eval()  # the frozen teacher, VAE and text encoder never run in training mode
        return self

    def training_stages(self) -> list[tuple[str, dict[str, Any]]]:
        return [("erase", {})]

    @staticmethod
    def batch_size_of(batch: dict[str, Any]) -> int:
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return len(value)
        return 1

    def reference_latents(self, batch: dict[str, Any], sample: bool = True) -> torch.Tensor:
        """Scaled VAE latents of ``batch["image"]`` (a posterior sample, as TICoE's trainer takes, or the mean);
        ``batch["latent"]`` (already encoded and scaled) skips the VAE."""
        with torch.no_grad():
            if "latent" in batch:
                return batch["latent"].to(self.model.device)
            posterior = self.model.vae.encode(batch["image"].to(self.model.device) * 2.0 - 1.0).latent_dist
            return (posterior.sample() if sample else posterior.mean) * self.model.latent_scale

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """The student's prediction under the first concept prompt at mid-schedule on fixed noise: a deterministic
        fingerprint of the edited weights (the contract test's save/load check)."""
        latents = self.reference_latents(batch, sample=False)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0)).to(latents)
        timesteps = torch.full((len(latents),), self.model.schedule.train_timesteps // 2, device=latents.device)
        noisy = self.model.ddpm.add_noise(latents, noise, timesteps)
        context = self.concept_context[:1].expand(len(latents), -1, -1)
        return self.student(noisy, timesteps, encoder_hidden_states=context).sample.flatten(1)

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": self.effective_weight_decay(weight_decay)}]

    def effective_weight_decay(self, weight_decay: float) -> float:
        # A zero-weight run is the "nothing erased" control arm: with a zero loss the gradient is exactly zero,
        # and Adam leaves the weights bit-identical; decoupled weight decay alone would still shrink them.
        return 0.0 if self.nothing_to_learn else weight_decay

    @property
    def nothing_to_learn(self) -> bool:
        return self.erase_weight == 0.0

    def edited_model(self) -> TextToImageModel:
        """A stand-alone testbed with the student as its UNet (savable with ``save_model_dir``)."""
        return with_unet(self.model, self.student)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | None = None, **kwargs: Any) -> torch.Tensor:
        """Images from the *edited* model (``model.generate`` with ``unet=student``; same arguments)."""
        was_training = self.student.training
        self.student.eval()
        try:
            return self.model.generate(prompts, unet=self.student, **kwargs)
        finally:
            self.student.train(was_training)


class TICoEEraser(ConceptEraser):
    """TICoE (arXiv 2604.15829): per step — e_c from :class:`ConvexConceptManifold` over ``prompts`` (the prompt
    bank); x₀ = a reference image's VAE latent (``batch["image"]``, e.g. from :class:`ReferenceStream`);
    t from 50 bins; z_t = forward-noised x₀; z_f = HVRL(z_t); target = u − γ(c − u) from the frozen teacher at
    z_f (no grad, one batched call); loss = MSE(student(z_f, t, e_c), target). HVRL is trained through the
    student's input only and discarded after training (it stays in the state dict for analysis).

    Choices (spec §1.4 / §4.1 defaults unless said):

    - ``erase_weight`` scales the erasure *loss*, not γ: γ = 0 would still train the concept toward the
      unconditional prediction, which is itself an erasure. With ``erase_weight = 0`` and
      ``preserve_weight = 0`` the loss is an exact zero, gradients are exact zeros, Adam moves nothing and weight
      decay is switched off (:meth:`effective_weight_decay`): the student stays bit-identical (tested).
    - ``preserve_weight`` (default 0; the released trainer has no such term, spec §1.4(g)): adds
      ‖student(z_f, t, e_b) − teacher(z_f, t, e_b)‖² for one anchor prompt per row drawn from ``anchor_prompts``
      (raw embeddings: the anchors stand for real prompts, which are not re-normalised at inference).
    - The whole batch shares one CCCM mixture (the trainer uses batch 1); the CCCM counter advances once per
      ``training_loss`` call, i.e. per optimizer step at ``grad_accum_steps = 1``.
    - ``use_hvrl=False`` is the "no HVRL" ablation (z_f = z_t).
    - HVRL's learning rate is ``hvrl_lr_ratio`` (5, the code's 5e-5 / 1e-5) times the UNet's.
    """

    def __init__(self, model_spec: dict[str, Any] | None = None, prompts: Sequence[str] = (), *,
                 model: TextToImageModel | None = None, anchor_prompts: Sequence[str] = (), tau: float = 0.7,
                 noise_std: float = 1e-3, resample_every: int = 200, cccm_layernorm: bool = True, gamma: float = 1.0,
                 erase_weight: float = 1.0, preserve_weight: float = 0.0, train_params: str = "full",
                 t_bins: int = 50, use_hvrl: bool = True, hvrl_scales: Sequence[float] = (1.0, 0.75, 0.5),
                 hvrl_depth: int = 2, hvrl_heads: int | None = None, hvrl_lambda: float = 0.5,
                 hvrl_lr_ratio: float = 5.0) -> None:
        anchor_prompts = list(anchor_prompts)
        if preserve_weight and not anchor_prompts:
            raise ValueError("preserve_weight > 0 needs anchor_prompts (the concepts to keep)")
        options = {"anchor_prompts": anchor_prompts, "tau": tau, "noise_std": noise_std,
                   "resample_every": resample_every, "cccm_layernorm": cccm_layernorm, "gamma": gamma,
                   "preserve_weight": preserve_weight, "t_bins": t_bins, "use_hvrl": use_hvrl,
                   "hvrl_scales": list(hvrl_scales), "hvrl_depth": hvrl_depth, "hvrl_heads": hvrl_heads,
                   "hvrl_lambda": hvrl_lambda, "hvrl_lr_ratio": hvrl_lr_ratio}
        super().__init__({"method": "ticoe", **options}, model_spec=model_spec, model=model, prompts=prompts,
                         train_params=train_params, erase_weight=erase_weight)
        self.gamma, self.preserve_weight, self.t_bins = float(gamma), float(preserve_weight), int(t_bins)
        self.hvrl_lr_ratio = float(hvrl_lr_ratio)
        self.cccm = ConvexConceptManifold(self.concept_context, tau=tau, noise_std=noise_std,
                                          resample_every=resample_every, layernorm=cccm_layernorm)
        channels = int(self.model.unet.config.in_channels)
        self.hvrl = HierarchicalVisualRepresentation(channels, scales=hvrl_scales, depth=hvrl_depth,
                                                     heads=hvrl_heads, lam=hvrl_lambda) if use_hvrl else None
        with torch.no_grad():
            anchors = self.model.encode_text(anchor_prompts) if anchor_prompts else self.empty_context[:0]
        self.register_buffer("anchor_context", anchors.detach().clone())

    @property
    def stats(self) -> dict[str, float]:
        """CCCM's LayerNorm diagnostics (review note 3) and the bank size."""
        return {**self.cccm.stats, "bank_size": float(len(self.prompts))}

    @property
    def nothing_to_learn(self) -> bool:
        return self.erase_weight == 0.0 and self.preserve_weight == 0.0

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        groups = super().parameter_groups(lr, weight_decay)
        if self.hvrl is not None:
            groups.append({"params": list(self.hvrl.parameters()), "lr": lr * self.hvrl_lr_ratio,
                           "weight_decay": self.effective_weight_decay(weight_decay)})
        return groups

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        clean = self.reference_latents(batch)
        count = len(clean)
        concept = self.cccm().expand(count, -1, -1)
        timesteps = binned_timesteps(count, self.model.schedule.train_timesteps, self.t_bins).to(clean.device)
        noisy = self.model.ddpm.add_noise(clean, torch.randn_like(clean), timesteps)
        refined = self.hvrl(noisy) if self.hvrl is not None else noisy
        empty = self.empty_context.expand(count, -1, -1)

        contexts, inputs = [concept, empty], [refined, refined]
        if self.preserve_weight:
            picks = torch.randint(0, len(self.anchor_context), (count,))
            anchors = self.anchor_context[picks.to(self.anchor_context.device)]
            contexts.append(anchors)
            inputs.append(refined)
        with torch.no_grad():
            teacher_out = self.teacher(torch.cat(inputs).detach(), timesteps.repeat(len(inputs)),
                                       encoder_hidden_states=torch.cat(contexts)).sample.chunk(len(inputs))
        conditional, unconditional = teacher_out[0], teacher_out[1]
        target = unconditional - self.gamma * (conditional - unconditional)

        student_contexts = [concept] + ([contexts[2]] if self.preserve_weight else [])
        student_out = self.student(torch.cat([refined] * len(student_contexts)),
                                   timesteps.repeat(len(student_contexts)),
                                   encoder_hidden_states=torch.cat(student_contexts)).sample.chunk(len(student_contexts))
        erase_loss = F.mse_loss(student_out[0], target)
        loss = self.erase_weight * erase_loss
        logs = {"erase_loss": float(erase_loss.detach())}
        if self.preserve_weight:
            preserve_loss = F.mse_loss(student_out[1], teacher_out[2])
            loss = loss + self.preserve_weight * preserve_loss
            logs["preserve_loss"] = float(preserve_loss.detach())
        return loss, logs


class ESDEraser(ConceptEraser):
    """ESD, original formulation (arXiv 2303.07345; rohitgandikota/erasing — review note 2): per step a stop index
    k ~ U{0..sampling_steps−1}; x_k from k DDIM steps (η = 0) of the *student* at ``guidance`` 3 under the
    concept prompt from N(0, I); t = the schedule's timestep at index k (the noise level of x_k);
    target = ε(∅) − η(ε(c) − ε(∅)) from the frozen teacher, η = 1; loss = MSE(student(x_k, t, c), target).

    Choices:

    - The timestep matches x_k's noise level, as the diffusers ESD script does (``timesteps[iteration]`` of a
      1000-step schedule); the CompVis script draws the DDPM t inside the bin of k counted from the low-noise end.
    - ``sampling_steps`` 25 by default (CPU; review note 6), 50 in the paper. ``train_params``: ``noxattn``
      (ESD-u, the default for shapes) or ``xattn`` (ESD-x, the ablation) or ``full``.
    - Several ``prompts``: one drawn per step (the paper uses one prompt; that is the default use).
    - ``erase_weight`` scales the loss (0 = unchanged student), as for TICoE.
    - The batch only sets how many trajectories are sampled per step (its images are not used).
    """

    def __init__(self, model_spec: dict[str, Any] | None = None, prompts: Sequence[str] = (), *,
                 model: TextToImageModel | None = None, eta: float = 1.0, guidance: float = 3.0, sampling_steps: int = 25,
                 train_params: str = "noxattn", erase_weight: float = 1.0) -> None:
        if sampling_steps < 1:
            raise ValueError("ESD needs sampling_steps >= 1")
        super().__init__({"method": "esd", "eta": eta, "guidance": guidance, "sampling_steps": sampling_steps},
                         model_spec=model_spec, model=model, prompts=prompts, train_params=train_params,
                         erase_weight=erase_weight)
        self.eta, self.guidance, self.sampling_steps = float(eta), float(guidance), int(sampling_steps)

    def target(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """ε_φ(x, ∅) − η(ε_φ(x, c) − ε_φ(x, ∅)) from the teacher."""
        empty = self.empty_context.expand(len(latents), -1, -1)
        return negative_guidance_target(self.teacher, latents, timesteps, context, empty, self.eta)

    @torch.no_grad()
    def partial_sample(self, count: int, context: torch.Tensor, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``stop`` guided DDIM steps of the student from fresh noise; returns (x_stop, its timestep)."""
        scheduler = self.model.sampling_scheduler(self.sampling_steps)
        latents = torch.randn((count, *self.model.latent_shape)).to(context)
        empty = self.empty_context.expand(count, -1, -1)
        for timestep in scheduler.timesteps[:stop]:
            batch_t = timestep.expand(2 * count).to(latents.device)
            both = self.student(torch.cat([latents, latents]), batch_t,
                                encoder_hidden_states=torch.cat([context, empty])).sample
            conditional, unconditional = both.chunk(2)
            guided = unconditional + self.guidance * (conditional - unconditional)
            latents = scheduler.step(guided, timestep, latents, eta=0.0).prev_sample
        return latents, scheduler.timesteps[stop].expand(count).to(latents.device)

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        count = self.batch_size_of(batch)
        prompt = int(torch.randint(0, len(self.prompts), ()))
        concept = self.concept_context[prompt:prompt + 1].expand(count, -1, -1)
        stop = int(torch.randint(0, self.sampling_steps, ()))
        latents, timesteps = self.partial_sample(count, concept, stop)
        target = self.target(latents, timesteps, concept)
        prediction = self.student(latents, timesteps, encoder_hidden_states=concept).sample
        erase_loss = F.mse_loss(prediction, target)
        return self.erase_weight * erase_loss, {"erase_loss": float(erase_loss.detach()), "stop_step": float(stop)}


# --------------------------------------------------------------------------------------------------
# UCE


def last_word_token_embeddings(model: TextToImageModel, prompts: Sequence[str]) -> torch.Tensor:
    """The text encoder's output at each prompt's last word token (N x D), the one token UCE edits per concept.

    Index = (tokens with start/end) − 2, as the official code computes it from the attention mask; for the empty
    prompt that is the start token (position 0), whose output is the same for every prompt under CLIP's causal
    mask — the official default guide for objects.
    """
    prompts = list(prompts)
    ids = model.tokenize(prompts)
    lengths = [len(model.tokenizer(p).input_ids) for p in prompts]
    with torch.no_grad():
        hidden = model.encode_ids(ids)
    positions = torch.tensor([max(0, n - 2) for n in lengths], device=hidden.device)
    return hidden[torch.arange(len(prompts), device=hidden.device), positions]


def cross_attention_modules(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every cross-attention block (diffusers names them ``attn2``) with ``to_k`` / ``to_v``."""
    return [(name, module) for name, module in unet.named_modules()
            if name.endswith("attn2") and hasattr(module, "to_k") and hasattr(module, "to_v")]


def uce_edit(model: TextToImageModel, erase_prompts: Sequence[str], guide_prompts: Sequence[str] | None = None,
             preserve_prompts: Sequence[str] = (), lam: float = 0.5, *, erase_scale: float = 1.0,
             preserve_scale: float = 1.0, unet: nn.Module | None = None) -> nn.Module:
    """UCE (arXiv 2308.14761), the official closed form (review note 1), on every cross-attention ``to_k`` and
    ``to_v`` of a copy of ``unet`` (default ``model.unet``; the input is left untouched):

        W = (λ·W_old + s_e Σ_e v*_e c_eᵀ + s_p Σ_p W_old c_p c_pᵀ)(λI + s_e Σ_e c_e c_eᵀ + s_p Σ_p c_p c_pᵀ)⁻¹,
        v*_e = W_old c_guide(e),

    c = the last word token's text-encoder output (:func:`last_word_token_embeddings`). ``guide_prompts``
    defaults to "" for every erased concept (the official default for objects); one guide for all is broadcast.
    λ = 0.5, scales 1. Solved in float64. Returns the edited UNet (``model.generate(..., unet=edited)`` or
    :func:`with_unet`).
    """
    erase_prompts = list(erase_prompts)
    if not erase_prompts:
        raise ValueError("uce_edit needs at least one concept to erase")
    guides = list(guide_prompts) if guide_prompts is not None else [""] * len(erase_prompts)
    if len(guides) == 1:
        guides = guides * len(erase_prompts)
    if len(guides) != len(erase_prompts):
        raise ValueError(f"{len(erase_prompts)} erase prompts but {len(guides)} guide prompts")
    erase = last_word_token_embeddings(model, erase_prompts).double()
    guide = last_word_token_embeddings(model, guides).double()
    preserve = last_word_token_embeddings(model, list(preserve_prompts)).double() if preserve_prompts \
        else erase[:0]
    dim = erase.shape[1]
    gram = lam * torch.eye(dim, dtype=torch.float64, device=erase.device) \
        + erase_scale * erase.T @ erase + preserve_scale * preserve.T @ preserve

    edited = copy.deepcopy(unet if unet is not None else model.unet)
    with torch.no_grad():
        for _, attention in cross_attention_modules(edited):
            for projection in (attention.to_k, attention.to_v):
                old = projection.weight.double()
                values = guide @ old.T   # v*_e = W_old c_guide, one row per erased concept
                numerator = lam * old + erase_scale * values.T @ erase + preserve_scale * (old @ preserve.T) @ preserve
                # W = numerator · gram⁻¹ (gram is symmetric): solve rather than invert.
                projection.weight.copy_(torch.linalg.solve(gram, numerator.T).T.to(projection.weight.dtype))
    return edited


# --------------------------------------------------------------------------------------------------
# Registration


@MODELS.register("ticoe")
def build_ticoe(**options: Any) -> TICoEEraser:
    return TICoEEraser(**options)


@MODELS.register("esd")
def build_esd(**options: Any) -> ESDEraser:
    return ESDEraser(**options)
