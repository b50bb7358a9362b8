"""LoRA on the q, k, v projections of ``nn.MultiheadAttention`` (what open_clip's towers use).

For the input x of the q/k/v projections (rows of the fused ``in_proj_weight`` W = [W_q; W_k; W_v])::

    q = x W_q^T + b_q + s * drop(x) A_q^T B_q^T        (same for k and v, each with its own A, B)

A_j ~ Kaiming-uniform(a=sqrt(5)), B_j = 0, so an adapted model equals the base model at step 0.
s = alpha / r (Hu et al.) or alpha / sqrt(r) (rank-stabilised; CLIP-LoRA's and DGS-Net's code).
``drop`` is inverted dropout with p = ``LoRAConfig.dropout`` on the LoRA *input branch only*, in
training mode only, one independent mask per projection (q, k, v: separate LoRA layers in
CLIP-LoRA), drawn from the global torch RNG. The base path always sees x undropped. With p = 0, or
in eval mode, this equals the weight re-parametrisation W + s [B_q A_q; B_k A_k; B_v A_v] up to
float rounding; :func:`merge_lora` folds that update into W (in float32) for inference.

Design. ``add_lora`` keeps each attention module object and swaps its class to
:class:`LoRAMultiheadAttention` (a subclass of ``nn.MultiheadAttention``; torch's own parametrize
utility swaps classes the same way), registering the two LoRA parameters on it. Its ``forward``
has ``nn.MultiheadAttention``'s signature (open_clip calls ``attn(q_x, k_x, v_x,
need_weights=False, attn_mask=mask)`` with a bool or float mask, ``batch_first`` either way, and
unbatched input also works): qkv = x W^T + b + s * B(A(drop(x))), split heads,
``F.scaled_dot_product_attention`` with the mask (and ``key_padding_mask``), ``out_proj``. One code
path for every dropout rate was preferred over "parametrisation when p = 0, module otherwise": one
implementation to test, and one state-dict layout whatever the rate. ``merge_lora`` folds the
update into ``in_proj_weight``, deletes the LoRA parameters and restores the plain class, so a
merged model is an ordinary ``nn.MultiheadAttention`` (torch's fast path included).

State-dict names (below an attention at ``<p>``, e.g. ``visual.transformer.resblocks.0.attn``): the
base ``<p>.in_proj_weight``, ``<p>.in_proj_bias``, ``<p>.out_proj.weight``, ``<p>.out_proj.bias``
stay where they are (frozen pretrained weights load by name, before and after merging); LoRA adds
``<p>.lora_a`` (3, r, d) = [A_q, A_k, A_v] and ``<p>.lora_b`` (3, d, r) = [B_q, B_k, B_v]. State
dicts written by the earlier parametrisation version (``<p>.parametrizations.in_proj_weight.
original`` / ``.0.lora_a`` / ``.0.lora_b``, same shapes) are renamed on load. All parameters are
plain tensors of rank >= 2 (DeepSpeed's broadcast cannot handle 0-dim ones); scale and dropout
rate are Python floats. bf16 works as the base attention does: parameters cast with the module,
or fp32 parameters under autocast (every matmul goes through ``F.linear``/SDPA).

PEFT, checked against peft 0.21.2 (``peft/tuners/lora/layer.py::MultiheadAttention`` and
``peft/tuners/tuners_utils.py::_get_in_out_features``), and not used:

* fused in_proj: supported only as *one* rank-r update of the whole 3d x d weight (``lora_A``
  d -> r shared by q, k, v; ``lora_B`` r -> 3d), not rank r per projection; and LoRA is always put
  on ``out_proj`` too ("no way to specify only one of them"), which our methods do not adapt;
* dropout: ``forward`` merges the delta into ``in_proj_weight`` (``merge``: ``del``/re-assign of
  the parameter), calls the base attention, then ``unmerge``s, so ``lora_dropout`` is silently
  ignored (probe: r=4, lora_dropout=0.8, B != 0, train mode: two passes identical);
* merging: ``merge_and_unload`` -> ``unload_and_optionally_merge_module`` is exact (W + s BA);
  ``use_rslora`` gives alpha/sqrt(r) (``LoraLayer.update_layer``); the open_clip call
  ``attn(q, k, v, need_weights=False, attn_mask=...)`` works (``forward(query, *args, **kwargs)``);
* but it renames the base weights (``attn.base_layer.in_proj_weight``,
  ``attn.base_layer.out_proj.base_layer.weight``) and deletes/re-registers parameters in every
  forward, which breaks loading frozen pretrained weights by name and is hostile to DeepSpeed's
  partitioned parameters.

The DGS-Net dropout (the reason for this module) is thus out of PEFT's reach.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["SCALINGS", "LoRAConfig", "LoRAMultiheadAttention", "add_lora", "lora_parameters", "merge_lora"]

SCALINGS = ("alpha/r", "alpha/sqrt(r)")
_LEGACY_PREFIX = "parametrizations.in_proj_weight."
_LEGACY_NAMES = (("original", "in_proj_weight"), ("0.lora_a", "lora_a"), ("0.lora_b", "lora_b"))


@dataclass(frozen=True)
class LoRAConfig:
    """Rank, alpha, scaling rule and LoRA-branch dropout (input branch only, training only)."""

    rank: int
    alpha: float
    scaling: str = "alpha/r"  # or "alpha/sqrt(r)" (rank-stabilised)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"LoRA scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> LoRAConfig:
        values = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown lora options {unknown}; allowed: {sorted(known)}")
        missing = [name for name in ("rank", "alpha") if name not in values]
        if missing:
            raise ValueError(f"lora options {missing} are required")
        return cls(**values)

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank if self.scaling == "alpha/r" else math.sqrt(self.rank))


class LoRAMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with LoRA on q, k, v; made by :func:`add_lora`, never built directly."""

    lora_a: nn.Parameter  # (3, r, d): A_q, A_k, A_v
    lora_b: nn.Parameter  # (3, d, r): B_q, B_k, B_v
    lora_config: LoRAConfig

    def _attach(self, config: LoRAConfig) -> None:
        weight = self.in_proj_weight
        d, r = self.embed_dim, config.rank
        self.lora_config = config
        self.lora_a = nn.Parameter(torch.empty(3, r, d, device=weight.device, dtype=weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(3, d, r, device=weight.device, dtype=weight.dtype))
        with torch.no_grad():
            for j in range(3):
                nn.init.kaiming_uniform_(self.lora_a[j], a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        """s [B_q A_q; B_k A_k; B_v A_v] (3d x d, float32), what merging adds to ``in_proj_weight``."""
        d = self.embed_dim
        return self.lora_config.scale * torch.bmm(self.lora_b.float(), self.lora_a.float()).reshape(3 * d, d)

    def _merge(self) -> None:
        with torch.no_grad():
            weight = self.in_proj_weight
            weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        del self.lora_a, self.lora_b, self.lora_config
        self.__class__ = nn.MultiheadAttention

    # ------------------------------------------------------------------------------ forward
    def _project(self, x: torch.Tensor, first: int, count: int) -> list[torch.Tensor]:
        """Projections ``first .. first+count-1`` (0 q, 1 k, 2 v) of one input, base + LoRA."""
        d = self.embed_dim
        rows = slice(first * d, (first + count) * d)
        bias = self.in_proj_bias[rows] if self.in_proj_bias is not None else None
        base = F.linear(x, self.in_proj_weight[rows], bias)
        p = self.lora_config.dropout if self.training else 0.0
        deltas = [F.linear(F.linear(F.dropout(x, p, True) if p > 0 else x, self.lora_a[j]), self.lora_b[j])
                  for j in range(first, first + count)]
        update = deltas[0] if count == 1 else torch.cat(deltas, dim=-1)
        return list((base + self.lora_config.scale * update).split(d, dim=-1))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if query is key and key is value:
            q, k, v = self._project(query, 0, 3)
        elif key is value:
            (q,), (k, v) = self._project(query, 0, 1), self._project(key, 1, 2)
        else:
            (q,), (k,), (v,) = (self._project(query, 0, 1), self._project(key, 1, 1),
                                self._project(value, 2, 1))
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) -> (1, L, E)
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        n, length, _ = q.shape
        source = k.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = (t.reshape(n, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        bias = _attention_bias(attn_mask, key_padding_mask, n, heads, length, source, q.dtype)
        causal = is_causal and bias is None
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
            if causal:
                scores = scores.masked_fill(
                    torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            elif bias is not None:
                scores = scores + bias
            weights = scores.softmax(dim=-1)
            weights = F.dropout(weights, dropout_p, True) if dropout_p > 0 else weights
            out = weights @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p,
                                                 is_causal=causal)
            weights = None
        out = F.linear(out.transpose(1, 2).reshape(n, length, self.embed_dim),
                       self.out_proj.weight, self.out_proj.bias)
        if unbatched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    # ------------------------------------------------------------------------------ storage
    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for old, new in _LEGACY_NAMES:  # the parametrisation version's names, same shapes
            if prefix + _LEGACY_PREFIX + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + _LEGACY_PREFIX + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _attention_bias(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, n: int, heads: int,
                    length: int, source: int, dtype: torch.dtype) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s masks (bool: True = masked; float: added) as one additive bias."""

    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    bias = None
    if attn_mask is not None:
        bias = additive(attn_mask)
        bias = bias.view(1, 1, length, source) if bias.dim() == 2 else bias.view(n, heads, length, source)
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(n, 1, 1, source)
        bias = padding if bias is None else bias + padding
    return bias


def add_lora(module: nn.Module, config: LoRAConfig | Mapping[str, Any]) -> list[nn.Parameter]:
    """LoRA on q, k, v of every ``nn.MultiheadAttention`` under ``module`` (in place); returns the new
    trainable parameters (``lora_a``, ``lora_b`` per attention). The base parameters keep their
    ``requires_grad``."""
    if isinstance(config, Mapping):
        config = LoRAConfig.from_dict(config)
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"add_lora expects a LoRAConfig (or its dict), got {config!r}")
    attentions = [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]
    if not attentions:
        raise ValueError(f"no nn.MultiheadAttention found under {type(module).__name__} to adapt with LoRA")
    for attention in attentions:
        if isinstance(attention, LoRAMultiheadAttention):
            raise ValueError("this nn.MultiheadAttention already has LoRA (add_lora called twice?)")
        if type(attention) is not nn.MultiheadAttention or parametrize.is_parametrized(attention):
            raise ValueError(f"LoRA expects plain nn.MultiheadAttention modules, "
                             f"got {type(attention).__name__}")
        if not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
            raise ValueError("LoRA expects fused q/k/v projections "
                             "(in_proj_weight, kdim == vdim == embed_dim)")
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError("LoRA does not support nn.MultiheadAttention with add_bias_kv or add_zero_attn")
    params: list[nn.Parameter] = []
    for attention in attentions:
        attention.__class__ = LoRAMultiheadAttention
        attention._attach(config)
        params += [attention.lora_a, attention.lora_b]
    return params


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters under ``module`` (empty after merging)."""
    return [p for m in module.modules() if isinstance(m, LoRAMultiheadAttention)
            for p in (m.lora_a, m.lora_b)]


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA update into its ``in_proj_weight`` (in place) and restore plain
    ``nn.MultiheadAttention`` modules; a no-op where there is no LoRA. Returns ``module``."""
    for attention in [m for m in module.modules() if isinstance(m, LoRAMultiheadAttention)]:
        attention._merge()
    return module
