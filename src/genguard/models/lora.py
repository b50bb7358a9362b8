"""LoRA on the q, k, v projections of ``nn.MultiheadAttention`` (what open_clip's ViT uses).

The fused ``in_proj_weight`` (3d x d) is re-parametrised as W + scale * [B_q A_q; B_k A_k; B_v A_v]
with torch's parametrize utility, so the attention module itself is untouched and any code that reads
the weight (fast path included) sees the adapted one. B starts at zero: the adapted model equals the
base model at step 0. ``merge_lora`` folds the update into W for inference (no per-call overhead).
Scaling is alpha / r (Hu et al.); ``rank_stabilised=True`` uses alpha / sqrt(r), the convention of
DGS-Net's code (spec aigi_clip_methods.md §7.5).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class QKVLoRA(nn.Module):
    def __init__(self, dim: int, rank: int, alpha: float, rank_stabilised: bool = False) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.scale = alpha / (math.sqrt(rank) if rank_stabilised else rank)
        self.lora_a = nn.Parameter(torch.empty(3, rank, dim))
        self.lora_b = nn.Parameter(torch.zeros(3, dim, rank))
        for i in range(3):
            nn.init.kaiming_uniform_(self.lora_a[i], a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = torch.bmm(self.lora_b, self.lora_a).reshape(weight.shape)  # q, k, v stacked like in_proj
        return weight + self.scale * delta


def add_lora(module: nn.Module, rank: int, alpha: float, rank_stabilised: bool = False) -> list[nn.Parameter]:
    """Attach LoRA to every MultiheadAttention under ``module``; return the new trainable parameters."""
    params: list[nn.Parameter] = []
    for attention in [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]:
        if not attention._qkv_same_embed_dim:
            raise ValueError("LoRA here expects fused q/k/v projections (in_proj_weight)")
        lora = QKVLoRA(attention.embed_dim, rank, alpha, rank_stabilised)
        parametrize.register_parametrization(attention, "in_proj_weight", lora)
        params.extend(lora.parameters())
    if not params:
        raise ValueError("no nn.MultiheadAttention found to adapt with LoRA")
    return params


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight (in place) and drop the parametrisation."""
    for attention in [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]:
        if parametrize.is_parametrized(attention, "in_proj_weight"):
            parametrize.remove_parametrizations(attention, "in_proj_weight", leave_parametrized=True)
    return module
