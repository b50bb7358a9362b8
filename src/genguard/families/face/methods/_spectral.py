"""SVD re-parametrisation of attention projections, shared by Effort and MASM.

A projection weight W (out x in) is split by its singular value decomposition W = U diag(sigma) V into a
frozen *principal* part and K trainable *tail subspaces* of rank r each (the K*r smallest singular
triplets, largest first; subspace k holds triplets ``s - K*r + k*r ...``)::

    W' = P + sum_k U_k diag(s_k) V_k          P = W - sum_k U_k^0 diag(s_k^0) V_k^0  (frozen)

P is computed by subtraction, not as U_r diag(sigma_r) V_r: the two are equal in exact arithmetic, and
the subtraction makes the decomposed layer reproduce W up to one float rounding at initialisation
(tested), whatever the SVD's own accuracy. P depends on W only (sign flips of singular vectors cancel in
the products), so a model rebuilt from its spec gets the same P back.

open_clip fuses q, k and v into ``nn.MultiheadAttention.in_proj_weight`` (3d x d); Effort's code
decomposes HF CLIP's separate q/k/v/out Linears. Here the fused weight is decomposed as three d x d
row blocks, each with its own SVD and subspaces (exactly the separate-Linear decomposition), and
``out_proj.weight`` as one block. The mechanism is ``torch.nn.utils.parametrize``: ``in_proj_weight``
(and ``out_proj.weight``) become computed properties, so ``nn.MultiheadAttention`` and open_clip run
unchanged; P is held by parametrize as ``<attn>.parametrizations.in_proj_weight.original`` (a frozen
parameter: a *pretrained* backbone's P is rebuilt from the spec, not stored) and the factors as
``<attn>.parametrizations.in_proj_weight.0.{u,s,v}`` (never 0-dim, so DeepSpeed can broadcast them).
:func:`fold_attention` removes the parametrisation and leaves the plain weight W' (inference).

Only square blocks are decomposed (all four attention projections are): then [U_principal | U_tail] is
a square orthogonal matrix, which is what lets the orthogonality terms below avoid storing U_principal
(about 800 MB in fp32 for ViT-L/14's 96 projections).

The SVD runs once per build in float64, on a CUDA device when the weight is on the CPU and one is
available (96 SVDs of 1024 x 1024 take minutes on a few CPU cores); on the meta device it only
produces shapes, so parameter counts at paper scale need no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

#: q, k, v (rows of the fused in_proj_weight) and the output projection.
PROJECTIONS = ("q", "k", "v", "out")


class SpectralResidual(nn.Module):
    """Parametrisation W' = P + sum_k U_k diag(s_k) V_k of ``blocks`` stacked square blocks of a weight.

    Shapes: u (blocks, K, d, r), s (blocks, K, r), v (blocks, K, r, d). Buffers (rebuilt from W, never
    trained): ``tail_u`` / ``tail_v`` (blocks, d, K*r): the tail singular vectors at initialisation, as
    columns; ``initial_s`` (blocks, K, r); ``weight_sq_norm`` (blocks,): ||W_block||_F^2.
    """

    def __init__(self, weight: torch.Tensor, blocks: int, subspaces: int, rank: int) -> None:
        super().__init__()
        rows, cols = weight.shape
        if rows % blocks or rows // blocks != cols:
            raise ValueError(f"spectral split expects {blocks} square blocks, got a {rows} x {cols} weight")
        tail = subspaces * rank
        if not 1 <= tail < cols:
            raise ValueError(f"{subspaces} subspace(s) of rank {rank} need 1 <= K*r < {cols} (the width); "
                             "at least one principal direction must stay frozen")
        self.blocks, self.subspaces, self.rank, self.width = blocks, subspaces, rank, cols
        u, s, vh = _tail_triplets(weight.detach().reshape(blocks, cols, cols), tail)
        dtype = weight.dtype
        self.u = nn.Parameter(u.reshape(blocks, cols, subspaces, rank).permute(0, 2, 1, 3).contiguous().to(dtype))
        self.s = nn.Parameter(s.reshape(blocks, subspaces, rank).to(dtype))
        self.v = nn.Parameter(vh.reshape(blocks, subspaces, rank, cols).contiguous().to(dtype))
        self.register_buffer("tail_u", u.to(dtype))
        self.register_buffer("tail_v", vh.transpose(1, 2).contiguous().to(dtype))
        self.register_buffer("initial_s", self.s.detach().clone())
        self.register_buffer("weight_sq_norm", weight.detach().reshape(blocks, -1).double().pow(2).sum(1).to(dtype))

    # ------------------------------------------------------------------ the weight
    def delta(self) -> torch.Tensor:
        """sum_k U_k diag(s_k) V_k per block, stacked as the weight is (blocks*d, d)."""
        blocks, k, d, r = self.u.shape
        left = (self.u * self.s.unsqueeze(2)).permute(0, 2, 1, 3).reshape(blocks, d, k * r)
        right = self.v.reshape(blocks, k * r, d)
        return torch.bmm(left, right).reshape(blocks * d, d)

    def forward(self, principal: torch.Tensor) -> torch.Tensor:
        return principal + self.delta().to(principal.dtype)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """What parametrize stores as ``original`` when the weight is assigned: P = W - delta."""
        return weight - self.delta().detach().to(weight.dtype)

    # ------------------------------------------------------------------ views for the regularisers
    def u_columns(self) -> torch.Tensor:
        """[U_1 | ... | U_K] per block: (blocks, d, K*r)."""
        blocks, k, d, r = self.u.shape
        return self.u.permute(0, 2, 1, 3).reshape(blocks, d, k * r)

    def v_columns(self) -> torch.Tensor:
        """[V_1^T | ... | V_K^T] per block: (blocks, d, K*r)."""
        blocks, k, r, d = self.v.shape
        return self.v.permute(0, 3, 1, 2).reshape(blocks, d, k * r)

    def trainable_count(self) -> int:
        return self.u.numel() + self.s.numel() + self.v.numel()


def _tail_triplets(blocks: torch.Tensor, tail: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``tail`` smallest singular triplets of each block, largest first: U (b, d, t), S (b, t), Vh (b, t, d)."""
    device = blocks.device
    work = "cuda" if device.type == "cpu" and torch.cuda.is_available() else device
    u, s, vh = torch.linalg.svd(blocks.to(work, torch.float64), full_matrices=False)
    return u[..., -tail:].to(device), s[..., -tail:].to(device), vh[..., -tail:, :].to(device)


# ---------------------------------------------------------------------------------------------------
# Attention modules


@dataclass
class SplitSite:
    """One decomposed weight: block ``layer``'s ``in_proj_weight`` (q, k, v) or ``out_proj.weight``."""

    layer: int
    weight: str                      # "in_proj" | "out_proj"
    owner: nn.Module                 # the module holding the parametrised tensor
    tensor: str                      # its attribute name
    split: SpectralResidual

    @property
    def projections(self) -> tuple[str, ...]:
        return PROJECTIONS[:3] if self.weight == "in_proj" else PROJECTIONS[3:]

    def principal(self) -> torch.Tensor:
        return self.owner.parametrizations[self.tensor].original

    def weight_now(self) -> torch.Tensor:
        return getattr(self.owner, self.tensor)


def attention_of(block: nn.Module) -> nn.MultiheadAttention:
    attention = getattr(block, "attn", None)
    if type(attention) is not nn.MultiheadAttention and not parametrize.is_parametrized(attention):
        raise ValueError(f"expected open_clip's ResidualAttentionBlock with nn.MultiheadAttention, got "
                         f"{type(attention).__name__}")
    if not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
        raise ValueError("the spectral split expects fused q/k/v projections (in_proj_weight)")
    return attention


def decompose_attention(block: nn.Module, layer: int, subspaces: int, rank: int) -> list[SplitSite]:
    """Re-parametrise q, k, v and out of ``block``'s attention (in place); returns the two split sites."""
    attention = attention_of(block)
    if parametrize.is_parametrized(attention):
        raise ValueError(f"block {layer}'s attention is already decomposed")
    sites = []
    for name, owner, tensor, blocks in (("in_proj", attention, "in_proj_weight", 3),
                                        ("out_proj", attention.out_proj, "weight", 1)):
        split = SpectralResidual(getattr(owner, tensor), blocks, subspaces, rank)
        parametrize.register_parametrization(owner, tensor, split)
        sites.append(SplitSite(layer, name, owner, tensor, split))
    return sites


def fold_sites(sites: list[SplitSite]) -> None:
    """Replace each parametrisation by the plain weight it computes (W' = P + delta)."""
    for site in sites:
        if parametrize.is_parametrized(site.owner, site.tensor):
            parametrize.remove_parametrizations(site.owner, site.tensor, leave_parametrized=True)


def select_blocks(count: int, blocks: tuple[int, ...] | None) -> list[int]:
    """Block indices to decompose (None: all); negative indices count from the end, as in Python."""
    if blocks is None:
        return list(range(count))
    chosen = sorted({b % count for b in blocks if -count <= b < count})
    if len(chosen) != len(set(blocks)):
        raise ValueError(f"blocks {list(blocks)} must be distinct indices of the {count} transformer blocks")
    return chosen


# ---------------------------------------------------------------------------------------------------
# Regularisers (per block of each split; averaged by the callers)


def basis_deviation_sq(columns: torch.Tensor, initial_tail: torch.Tensor) -> torch.Tensor:
    """||B^T B - I||_F^2 of the full basis B = [B_principal | columns] per block, less the frozen principal
    block's own (constant, ~0) deviation: ||C^T C - I||^2 + 2 ||B_principal^T C||^2, where
    ||B_principal^T C||^2 = ||C||^2 - ||T0^T C||^2 because B_principal B_principal^T = I - T0 T0^T
    (T0: the tail vectors at initialisation; square blocks). Shape (blocks,)."""
    eye = torch.eye(columns.shape[-1], device=columns.device, dtype=columns.dtype)
    gram = columns.transpose(1, 2) @ columns - eye
    into_principal = columns.pow(2).sum((1, 2)) - (initial_tail.transpose(1, 2) @ columns).pow(2).sum((1, 2))
    return gram.pow(2).sum((1, 2)) + 2.0 * into_principal.clamp_min(0.0)


def squared_norm_now(site: SplitSite) -> torch.Tensor:
    """||W'_block||_F^2 per block (blocks,), with gradients to the factors."""
    split = site.split
    return site.weight_now().reshape(split.blocks, -1).float().pow(2).sum(1)
