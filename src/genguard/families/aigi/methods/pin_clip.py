"""PiN-CLIP (Yan et al., arXiv 2511.16136): positive-incentive noise for CLIP-based AIGI detection.

Mechanism (paper, as far as the spec could read it): a noise generator fuses the image embedding with
the class-semantic text features ("A real photo" / "A fake photo") by cross-attention and outputs a
Gaussian N(mu, sigma^2) in feature space; the noisy feature f + eps is classified by the same head,
and the generator is trained jointly with the (LoRA-adapted) visual encoder under the variational
positive-incentive-noise objective: minimising the expected task loss under the noise is a
variational proxy for maximising I(T; E). Inference uses the clean branch.

Reconstructed choices (spec aigi_clip_methods.md §4.2 marks them INFERRED; each is a parameter with
the spec's default): LoRA r=6, alpha=6 on q,k,v of every visual block, with the group's code base's
convention (DGS-Net: scale alpha/sqrt(r), dropout 0.8 on the LoRA input branch); 8 attention heads in the
generator (the embedded tiny backbone uses 2: 64-d embeddings); sigma = softplus(s + b0) + 1e-4 with
b0 = -5 so the noise starts tiny; L = L_ce + 1.0 * L_vpn + 1e-3 * L_reg, L_reg = mean(mu^2) +
KL(N(mu, sigma^2) || N(0, 0.1^2)) per dimension; one noise sample per step. Input: the spec reads the
shared code base's patch-selected 224-px input (``patch_selection``, as NS-Net/DGS-Net; off by default,
on in ``conf/gpu``) with the normalisation statistics of ``normalisation``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genguard.config import dataclass_from_dict
from genguard.data.images import NORMALISATIONS, input_overrides
from genguard.families.aigi.detector import Detector
from genguard.models.backbones import Backbone, create_backbone
from genguard.models.lora import LoRAConfig


@dataclass(frozen=True)
class PiNCLIPConfig:
    prompts: tuple[str, ...] = ("A real photo", "A fake photo")
    lora_rank: int = 6
    lora_alpha: float = 6.0
    lora_scaling: str = "alpha/sqrt(r)"  # the group's code base (DGS-Net, CLIP-LoRA); not stated in the paper
    lora_dropout: float = 0.8            # likewise: DGS-Net's input-branch dropout
    noise_heads: int = 8
    sigma_bias_init: float = -5.0
    sigma_floor: float = 1e-4
    lambda_vpn: float = 1.0
    lambda_reg: float = 1e-3
    prior_sigma: float = 0.1
    noise_samples: int = 1
    test_noise: str = "off"  # off | mean
    noise_lr: float | None = None  # None: the training lr
    normalisation: str = "backbone"          # backbone | clip | imagenet
    patch_selection: dict | None = None      # e.g. {patch_size: 32, grid: 7}: the spectral-entropy mosaic

    @classmethod
    def from_dict(cls, cfg: dict | None) -> PiNCLIPConfig:
        cfg = dict(cfg or {})
        if "prompts" in cfg:
            cfg["prompts"] = tuple(cfg["prompts"])
        config = dataclass_from_dict(cls, cfg, "pin_clip")
        if config.test_noise not in ("off", "mean"):
            raise ValueError(f"pin_clip.test_noise must be 'off' or 'mean', got {config.test_noise!r}")
        if len(config.prompts) < 2:
            raise ValueError("pin_clip.prompts needs one prompt per class (at least 2)")
        if config.normalisation not in (*NORMALISATIONS, "backbone"):
            raise ValueError(f"pin_clip.normalisation must be imagenet, clip or backbone, got {config.normalisation!r}")
        return config


class PositiveIncentiveNoise(nn.Module):
    """Cross-attention noise generator: query = image embedding, keys/values = class text features."""

    def __init__(self, dim: int, heads: int, sigma_bias_init: float, sigma_floor: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"noise_heads={heads} must divide the embedding size {dim}")
        self.heads, self.head_dim, self.sigma_floor = heads, dim // heads, sigma_floor
        self.norm = nn.LayerNorm(dim)
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.mean_head = nn.Linear(dim, dim)
        self.scale_head = nn.Linear(dim, dim)
        # Start near "no noise": tiny mean, sigma ~ softplus(-5) ~ 7e-3, far below feature scale,
        # yet non-zero weights so gradients reach the attention from the first step.
        for head in (self.mean_head, self.scale_head):
            nn.init.normal_(head.weight, std=1e-3)
        nn.init.zeros_(self.mean_head.bias)
        nn.init.constant_(self.scale_head.bias, sigma_bias_init)

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, dim = features.shape
        q = self.query(self.norm(features)).view(batch, self.heads, 1, self.head_dim)
        k = self.key(text).view(1, -1, self.heads, self.head_dim).transpose(1, 2)  # 1,H,C,dh
        v = self.value(text).view(1, -1, self.heads, self.head_dim).transpose(1, 2)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)  # B,H,1,C
        fused = features + self.out((attention @ v).reshape(batch, dim))
        mean = self.mean_head(fused)
        sigma = F.softplus(self.scale_head(fused)) + self.sigma_floor
        return mean, sigma


def gaussian_kl_to_prior(mean: torch.Tensor, sigma: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """Mean per-dimension KL(N(mean, sigma^2) || N(0, prior_sigma^2))."""
    var_ratio = (sigma / prior_sigma) ** 2
    return (0.5 * (var_ratio + (mean / prior_sigma) ** 2 - 1.0) - torch.log(sigma / prior_sigma)).mean()


class PiNCLIP(Detector):
    frozen_backbone = False

    def __init__(self, backbone: Backbone, config: PiNCLIPConfig, init_spec: dict) -> None:
        super().__init__(init_spec)
        self.config = config
        self.backbone = backbone.freeze()
        self.backbone.add_lora(LoRAConfig(config.lora_rank, config.lora_alpha, config.lora_scaling,
                                                  config.lora_dropout))
        dim = backbone.embed_dim
        # Class-semantic features from the frozen text tower, computed once (they never change).
        text = F.normalize(backbone.encode_prompts(list(config.prompts)), dim=-1)
        self.register_buffer("class_text_features", text)
        self.noise = PositiveIncentiveNoise(dim, config.noise_heads, config.sigma_bias_init, config.sigma_floor)
        self.head = nn.Linear(dim, 1)

    def preprocess_overrides(self) -> dict:
        return input_overrides(self.config.patch_selection, self.config.normalisation)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(images)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        if self.config.test_noise == "mean" and not self.training:
            mean, _ = self.noise(features, self.class_text_features)
            features = features + mean
        return self.head(features).squeeze(-1)

    def sample_noise(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised eps = mu + sigma * xi, so gradients reach the generator."""
        mean, sigma = self.noise(features, self.class_text_features)
        eps = mean + sigma * torch.randn_like(sigma)
        return eps, mean, sigma

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        features = self.encode(batch["image"])
        target = batch["label"].float()
        loss_ce = F.binary_cross_entropy_with_logits(self.head(features).squeeze(-1), target)
        loss_vpn = features.new_zeros(())
        for _ in range(cfg.noise_samples):
            eps, mean, sigma = self.sample_noise(features)
            loss_vpn = loss_vpn + F.binary_cross_entropy_with_logits(
                self.head(features + eps).squeeze(-1), target) / cfg.noise_samples
        loss_reg = (mean ** 2).mean() + gaussian_kl_to_prior(mean, sigma, cfg.prior_sigma)
        loss = loss_ce + cfg.lambda_vpn * loss_vpn + cfg.lambda_reg * loss_reg
        return loss, {
            "ce": float(loss_ce.detach()), "vpn": float(loss_vpn.detach()), "reg": float(loss_reg.detach()),
            "noise_sigma": float(sigma.detach().mean()), "noise_mean_abs": float(mean.detach().abs().mean()),
        }

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        noise_params = list(self.noise.parameters())
        noise_ids = {id(p) for p in noise_params}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in noise_ids]
        return [
            {"params": rest, "lr": lr, "weight_decay": weight_decay},
            {"params": noise_params, "lr": self.config.noise_lr or lr, "weight_decay": weight_decay},
        ]

    def prepare_for_inference(self) -> PiNCLIP:
        self.backbone.merge_lora()
        return self.eval()


def build_pin_clip(backbone: dict | None = None, **options) -> PiNCLIP:
    config = PiNCLIPConfig.from_dict(options)
    spec = {"method": "pin_clip", "backbone": backbone or {}, **_jsonable(asdict(config))}
    return PiNCLIP(create_backbone(backbone), config, init_spec=spec)


def _jsonable(cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
