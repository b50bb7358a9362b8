"""SeLop (Wang, Hu et al., arXiv 2601.11915): low-rank orthogonal subspace intervention.

Diagnosis (paper): the few dominant principal components of a CLIP detector's features carry
forgery-irrelevant content (identity, background, lighting): a "low-rank spurious bias". Mechanism:
model all such confounders as one low-rank subspace, remove it from the representation by an orthogonal
projection, and learn forgery cues on the orthogonal complement; 0.39M trainable parameters (v2; 0.43M
in v1) on a frozen CLIP ViT-L/14.

Here: an orthonormal basis Q = qf(A) (thin QR with diag(R) > 0: orthonormal by construction after any
optimiser step) of rank ``rank`` and a centre mu; the intervention maps x -> x - (x - mu) Q Q^T, so
Q^T (x' - mu) = 0 exactly. Q and mu are initialised (``begin_stage``) from the top principal directions
and the mean of the frozen model's representation at that point, over ``init_samples`` seeded training
rows (run on a CUDA device when there is one). The method section was not public; the choices below
are reconstructions, each an option.

* ``variant: layer`` (default; the budget-faithful preset): one (Q, mu) per *site* of the frozen ViT,
  applied to all tokens, in training and at inference. Sites: after each of the two residual additions
  (``sites: residual``) of ``blocks`` (default: the later half, 12-23 of ViT-L/14's 24, since removing
  dominant directions from early blocks of a frozen ViT, which carry high-norm outlier channels, can
  break it). That is 24 sites x 1024 x 16 = 393,216 basis parameters at ViT-L/14, the v2 budget, plus
  the head (1,025): the counts tested on the meta device. (Reading "24 blocks x 1024 x r" as one site
  after each of all 24 blocks gives the same count: ``blocks: all``-style lists with ``sites: block``.)
  The head reads ln_post(CLS) before the projection. The bases are trained by the BCE loss through the
  removal *and* by L_rec (``basis_training: ce+rec``): with Q detached from BCE the layer variant would be
  a linear probe on fixed features again; L_rec keeps each Q on its site's dominant (nuisance)
  directions, the paper's hypothesis.
* ``variant: feature``: on the frozen feature z = ln_post(CLS) (cached by the pipeline): z_c =
  (I - QQ^T)(z - mu); h = z_c + (I - QQ^T) U_a act(V_a z_c), U_a zero-initialised; logit = w^T h + b.
  Parameters d*r + 2*d*k + d + 1 (``adapter_rank`` k = 182 gives 390,145 at d = 1024, r = 16). With
  ``adapter_activation: identity`` this is a *linear probe with the top PCs removed* (logits M z + b with
  M Q = 0: the adapter adds no capacity), kept as the labelled baseline; ``gelu`` (default) puts a
  nonlinearity in the complement branch. Q is trained by L_rec only by default (``rec``): the BCE
  gradient would steer the removed subspace away from the label-predictive shortcut directions.
* ``basis_training``: ``fixed`` (PCA init, frozen) | ``rec`` | ``ce`` | ``ce+rec`` (default: ``ce+rec`` for
  the layer variant, ``rec`` for the feature variant). L_rec = mean ||x_bar - QQ^T x_bar||^2 / mean
  ||x_bar||^2 with x_bar = x - mu detached (an online PCA), ``lambda_rec`` 1; averaged over sites.
* ``mu`` stays at its initial value (``mean_ema: null``); a value beta updates it by EMA in training,
  which DeepSpeed ranks would not share (single-process only).
* The trainable-parameter count is logged at build; ``budget: [lo, hi]`` makes a count outside the range
  an error (``conf/gpu``: [390000, 430000]).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from genguard.config import dataclass_from_dict
from genguard.families.face.detector import FaceDetector
from genguard.families.face.methods import _vit
from genguard.families.face.methods._spectral import select_blocks
from genguard.models.backbones import CLIPBackbone, create_backbone
from genguard.training.trainable import count_parameters

log = logging.getLogger(__name__)

VARIANTS = ("layer", "feature")
SITES = ("residual", "block")
BASIS_TRAINING = ("fixed", "rec", "ce", "ce+rec")
ACTIVATIONS = ("gelu", "identity")


@dataclass(frozen=True)
class SeLopConfig:
    variant: str = "layer"                  # layer (budget-faithful) | feature
    rank: int = 16                          # r, the spurious subspace's rank          [inferred]
    blocks: tuple[int, ...] | None = None   # layer: intervened blocks (None: the later half)
    sites: str = "residual"                 # layer: after each residual add | after the block
    basis_training: str | None = None       # None: ce+rec (layer) / rec (feature)
    lambda_rec: float = 1.0
    adapter_rank: int = 182                 # feature: k (fitted to the 0.39M budget)  [inferred]
    adapter_activation: str = "gelu"        # feature: identity = linear probe with top PCs removed
    init_samples: int = 512                 # rows whose representation initialises Q and mu
    init_batch_size: int = 32
    init_seed: int = 0
    mean_ema: float | None = None           # None: mu fixed after initialisation
    budget: tuple[int, int] | None = None   # allowed trainable-parameter range, e.g. [390000, 430000]

    @classmethod
    def from_dict(cls, cfg: dict | None) -> SeLopConfig:
        cfg = dict(cfg or {})
        for key in ("blocks", "budget"):
            if cfg.get(key) is not None:
                cfg[key] = tuple(int(b) for b in cfg[key])
        config = dataclass_from_dict(cls, cfg, "selop")
        for name, value, allowed in (("variant", config.variant, VARIANTS), ("sites", config.sites, SITES),
                                     ("basis_training", config.basis_mode, BASIS_TRAINING),
                                     ("adapter_activation", config.adapter_activation, ACTIVATIONS)):
            if value not in allowed:
                raise ValueError(f"selop.{name} must be one of {allowed}, got {value!r}")
        if config.rank < 1 or config.adapter_rank < 1 or config.init_samples < 1 or config.init_batch_size < 1:
            raise ValueError("selop.rank, adapter_rank, init_samples and init_batch_size must be >= 1")
        if config.budget is not None and len(config.budget) != 2:
            raise ValueError("selop.budget must be [lowest, highest] trainable parameters")
        if config.mean_ema is not None and not 0 <= config.mean_ema < 1:
            raise ValueError("selop.mean_ema must be in [0, 1) or null")
        return config

    @property
    def basis_mode(self) -> str:
        if self.basis_training is not None:
            return self.basis_training
        return "ce+rec" if self.variant == "layer" else "rec"


def orthonormal(raw: torch.Tensor) -> torch.Tensor:
    """qf(A): the Q of a thin QR with diag(R) > 0 (unique, hence a smooth function of A)."""
    q, r = torch.linalg.qr(raw)
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
    return q * signs.unsqueeze(-2)


class SpuriousSubspaces(nn.Module):
    """(Q_i, mu_i) for ``count`` sites of width d: ``raw_basis`` (count, d, r) with Q_i = qf(A_i),
    ``mean`` (count, d), ``calibrated`` (1,): 0 until initialised from data (identity until then)."""

    def __init__(self, count: int, width: int, rank: int, device: torch.device | None = None) -> None:
        super().__init__()
        if rank >= width:
            raise ValueError(f"selop.rank {rank} must be below the feature width {width}")
        self.raw_basis = nn.Parameter(torch.randn(count, width, rank, device=device))
        self.register_buffer("mean", torch.zeros(count, width, device=device))
        self.register_buffer("calibrated", torch.zeros(1, device=device))
        self.detach_basis = False           # BCE does not reach Q (rec / fixed)
        self.mean_ema: float | None = None
        self.reconstruction: list[torch.Tensor] | None = None  # L_rec terms while a loss collects them

    def bases(self) -> torch.Tensor:
        return orthonormal(self.raw_basis)

    def forward(self, x: torch.Tensor, site: int, centred: bool = False) -> torch.Tensor:
        """x - (x - mu) QQ^T (``centred``: (I - QQ^T)(x - mu)), over the last dimension."""
        if not bool(self.calibrated.item()):
            return x - self.mean[site] if centred else x
        q = orthonormal(self.raw_basis[site]).to(x.dtype)
        centred_x = x - self.mean[site].to(x.dtype).clone()
        if self.reconstruction is not None:
            self.reconstruction.append(reconstruction_error(centred_x.detach(), q))
        used = q.detach() if self.detach_basis else q
        removed = (centred_x @ used) @ used.transpose(0, 1)
        if self.training and self.mean_ema is not None:
            with torch.no_grad():  # after use: this batch is removed around the mean it was seen with
                batch_mean = x.detach().reshape(-1, x.shape[-1]).float().mean(0)
                self.mean[site].mul_(self.mean_ema).add_(batch_mean, alpha=1 - self.mean_ema)
        return centred_x - removed if centred else x - removed

    @torch.no_grad()
    def fit_site(self, site: int, chunks: list[torch.Tensor]) -> None:
        """mu and the top-r principal directions of the rows of ``chunks`` (..., d), in float64."""
        width = chunks[0].shape[-1]
        total = torch.zeros(width, dtype=torch.float64, device=chunks[0].device)
        outer = torch.zeros(width, width, dtype=torch.float64, device=chunks[0].device)
        count = 0
        for chunk in chunks:
            rows = chunk.reshape(-1, width).double()
            total += rows.sum(0)
            outer += rows.transpose(0, 1) @ rows
            count += rows.shape[0]
        mean = total / count
        covariance = outer / count - torch.outer(mean, mean)
        _, vectors = torch.linalg.eigh(covariance)                 # ascending eigenvalues
        rank = self.raw_basis.shape[-1]
        self.raw_basis[site].copy_(vectors[:, -rank:].flip(-1).to(self.raw_basis))
        self.mean[site].copy_(mean.to(self.mean))


def reconstruction_error(centred: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """L_rec = mean ||x - QQ^T x||^2 / mean ||x||^2 (x centred and detached: only Q learns from it)."""
    rows = centred.reshape(-1, centred.shape[-1])
    residual = rows - (rows @ q) @ q.transpose(0, 1)
    return residual.pow(2).sum(-1).mean() / rows.pow(2).sum(-1).mean().clamp_min(1e-12)


class InterventionBlock(ResidualAttentionBlock):
    """open_clip's ResidualAttentionBlock with the spurious subspace removed after its residual
    additions; made by swapping the class of an existing block (its weights keep their names)."""

    spurious: SpuriousSubspaces
    after_attention: bool

    def attention_residual(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.ls_1(self.attention(q_x=self.ln_1(x), attn_mask=attn_mask))

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls_2(self.mlp(self.ln_2(x)))

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if k_x is not None or v_x is not None:
            raise ValueError("SeLop intervenes on self-attention blocks only")
        x = self.attention_residual(q_x, attn_mask)
        if self.after_attention:
            x = self.spurious(x, 0)
        return self.spurious(self.mlp_residual(x), int(self.after_attention))


def add_interventions(block: nn.Module, rank: int, after_attention: bool) -> InterventionBlock:
    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        raise ValueError("selop's layer variant expects open_clip's ResidualAttentionBlock, "
                         f"got {type(block).__name__}")
    width = block.ln_1.normalized_shape[0]
    block.__class__ = InterventionBlock
    block.after_attention = after_attention
    block.spurious = SpuriousSubspaces(2 if after_attention else 1, width, rank, block.ln_1.weight.device)
    return block


class SeLop(FaceDetector):
    def __init__(self, backbone: CLIPBackbone, config: SeLopConfig, init_spec: dict) -> None:
        super().__init__(init_spec)
        self.config = config
        self.backbone = backbone.freeze().eval()
        visual = backbone.visual
        width, device = _vit.width(visual), visual.ln_post.weight.device
        self.frozen_backbone = config.variant == "feature"  # the pipeline then caches ln_post(CLS) once
        if config.variant == "layer":
            blocks = _vit.transformer_blocks(visual)
            chosen = (select_blocks(len(blocks), config.blocks) if config.blocks is not None
                      else list(range(len(blocks) // 2, len(blocks))))
            self.intervened = chosen
            for index in chosen:
                add_interventions(blocks[index], config.rank, after_attention=config.sites == "residual")
        else:
            self.intervened = []
            self.spurious = SpuriousSubspaces(1, width, config.rank, device)
            self.adapter_down = nn.Linear(width, config.adapter_rank, bias=False, device=device)
            self.adapter_up = nn.Linear(config.adapter_rank, width, bias=False, device=device)
            nn.init.zeros_(self.adapter_up.weight)  # h = z_c at the start
        self.head = nn.Linear(width, 1, device=device)
        for subspaces in self.subspace_modules():
            subspaces.raw_basis.requires_grad_(config.basis_mode != "fixed")
            subspaces.detach_basis = config.basis_mode in ("fixed", "rec")
            subspaces.mean_ema = config.mean_ema
        self._check_budget()

    # ------------------------------------------------------------------ parts
    def subspace_modules(self) -> list[SpuriousSubspaces]:
        if self.config.variant == "feature":
            return [self.spurious]
        blocks = _vit.transformer_blocks(self.backbone.visual)
        return [blocks[index].spurious for index in self.intervened]

    def spurious_bases(self) -> list[torch.Tensor]:
        """Q per site (d x r, orthonormal columns), in site order."""
        return [q for subspaces in self.subspace_modules() for q in subspaces.bases()]

    def declared_trainable(self) -> list[str]:
        """The parameters this configuration trains: bases (unless fixed), adapter (feature), head."""
        names = ["head.weight", "head.bias"]
        if self.config.variant == "feature":
            names += ["adapter_down.weight", "adapter_up.weight"]
        if self.config.basis_mode != "fixed":
            prefix = "backbone.clip.visual.transformer.resblocks"
            names += (["spurious.raw_basis"] if self.config.variant == "feature"
                      else [f"{prefix}.{i}.spurious.raw_basis" for i in self.intervened])
        return sorted(names)

    def _check_budget(self) -> None:
        trainable = count_parameters(self)
        bases = sum(s.raw_basis.numel() for s in self.subspace_modules() if s.raw_basis.requires_grad)
        sites = sum(s.raw_basis.shape[0] for s in self.subspace_modules())
        log.info("selop (%s variant): %d trainable parameters (%d in %d spurious bases of rank %d, %d in the "
                 "adapter and head)", self.config.variant, trainable, bases, sites, self.config.rank,
                 trainable - bases)
        budget = self.config.budget
        if budget is not None and not budget[0] <= trainable <= budget[1]:
            raise ValueError(f"selop: {trainable} trainable parameters, outside the configured budget "
                             f"[{budget[0]}, {budget[1]}]; adjust rank / blocks / sites / adapter_rank")

    def train(self, mode: bool = True) -> SeLop:
        super().train(mode)
        self.backbone.eval()  # frozen tower: no dropout; the interventions' EMA (if any) follows ``mode``
        for subspaces in self.subspace_modules():
            subspaces.train(mode)
        return self

    # ------------------------------------------------------------------ initialisation from data
    def begin_stage(self, name: str, train_set: Any) -> None:
        if name != "main":
            raise ValueError(f"selop has one stage, 'main', not {name!r}")
        if not all(bool(s.calibrated.item()) for s in self.subspace_modules()):
            self.initialise_subspaces(train_set)

    @torch.no_grad()
    def initialise_subspaces(self, train_set: Any) -> None:
        """Q <- top-r principal directions and mu <- mean of the representation at each site (in site
        order, each site seeing the earlier sites' removal)."""
        cfg = self.config
        was_training = self.training
        self.eval()
        try:
            with _vit.on_accelerator(self) as device:
                batches = list(_vit.seeded_batches(train_set, cfg.init_batch_size, cfg.init_samples,
                                                   cfg.init_seed, device))
                if cfg.variant == "feature":
                    features = [b["features"] if "features" in b else self.encode(b["image"]) for b in batches]
                    self.spurious.fit_site(0, features)
                    self.spurious.calibrated.fill_(1.0)
                else:
                    self._initialise_layer_sites([b["image"] for b in batches])
        finally:
            self.train(was_training)
        log.info("selop: spurious subspaces initialised from %d rows", min(cfg.init_samples, len(train_set)))

    def _initialise_layer_sites(self, images: list[torch.Tensor]) -> None:
        visual = self.backbone.visual
        streams = [visual._embeds(x) for x in images]
        if not visual.transformer.batch_first:
            streams = [s.transpose(0, 1) for s in streams]
        for block in _vit.transformer_blocks(visual):
            if not isinstance(block, InterventionBlock):
                streams = [block(s) for s in streams]
                continue
            subspaces = block.spurious
            streams = [block.attention_residual(s) for s in streams]
            if block.after_attention:
                subspaces.fit_site(0, streams)
                streams = [_remove_fitted(subspaces, s, 0) for s in streams]
            streams = [block.mlp_residual(s) for s in streams]
            last = int(block.after_attention)
            subspaces.fit_site(last, streams)
            streams = [_remove_fitted(subspaces, s, last) for s in streams]
            subspaces.calibrated.fill_(1.0)

    # ------------------------------------------------------------------ forward and loss
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.variant == "feature":
            with torch.no_grad():
                return _vit.pooled_features(self.backbone.visual, images)
        return _vit.pooled_features(self.backbone.visual, images)

    def complement(self, features: torch.Tensor) -> torch.Tensor:
        """Feature variant: h = z_c + (I - QQ^T) U_a act(V_a z_c), with z_c = (I - QQ^T)(z - mu)."""
        z_c = self.spurious(features, 0, centred=True)
        branch = self.adapter_down(z_c)
        if self.config.adapter_activation == "gelu":
            branch = F.gelu(branch)
        branch = self.adapter_up(branch)
        if bool(self.spurious.calibrated.item()):
            q = self.spurious.bases()[0].to(branch.dtype).detach()
            branch = branch - (branch @ q) @ q.transpose(0, 1)
        return z_c + branch

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        if self.config.variant == "feature":
            features = self.complement(features)
        return self.head(features).squeeze(-1)

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        collect = self.config.basis_mode in ("rec", "ce+rec") and self.config.lambda_rec > 0
        modules = self.subspace_modules()
        for subspaces in modules:
            subspaces.reconstruction = [] if collect else None
        try:
            logits = self.predict_step(batch)
            terms = [t for subspaces in modules for t in (subspaces.reconstruction or [])]
        finally:
            for subspaces in modules:
                subspaces.reconstruction = None
        bce = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
        logs = {"bce": float(bce.detach())}
        loss = bce
        if terms:
            reconstruction = torch.stack(terms).mean()
            loss = loss + self.config.lambda_rec * reconstruction
            logs["reconstruction"] = float(reconstruction.detach())
        return loss, logs

    # ------------------------------------------------------------------ persistence
    def storable_state_dict(self) -> dict[str, torch.Tensor]:
        """Also the subspaces' centres and flags, which live inside a (possibly pretrained) tower."""
        stored = super().storable_state_dict()
        state = self.state_dict()
        return {**stored, **{k: v for k, v in state.items() if ".spurious." in k}}


def _remove_fitted(subspaces: SpuriousSubspaces, stream: torch.Tensor, site: int) -> torch.Tensor:
    q = orthonormal(subspaces.raw_basis[site]).to(stream.dtype)
    centred = stream - subspaces.mean[site].to(stream.dtype)
    return stream - (centred @ q) @ q.transpose(0, 1)


def build_selop(backbone: dict | None = None, **options) -> SeLop:
    config = SeLopConfig.from_dict(options)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    return SeLop(create_backbone(backbone), config, init_spec={"method": "selop", "backbone": backbone or {},
                                                               **values})
