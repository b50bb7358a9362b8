"""NS-Net (Yan, Wang et al., arXiv 2508.01248): NULL-space projection of CLIP visual features.

Diagnosis (paper): the high-level semantics in CLIP's image embedding hinder real/fake decisions
when real and fake images share content. Mechanism: (i) remove the *text-derived* semantic subspace
from the visual feature by projecting onto its null space, (ii) learn the real/fake gap on the
decoupled feature with a contrastive objective, (iii) feed the encoder the highest- and
lowest-spectral-entropy patches (Patch Selection, ``genguard.data.patch_selection``) so that global
structure — more semantics — is broken up.

Exact module sizes and losses are not public (no official code); every reconstructed choice is an
option, defaulting to the reading that fits the paper's text and its sister code base (DGS-Net):

* ``ns_mode: per_sample`` — the semantic basis of image i is the caption embedding t_i (frozen CLIP
  text tower): v_perp = v - <v, t_hat> t_hat. Needs a caption per image at test time too.
  ``global_svd`` — one basis for all images: the top right-singular vectors of the training
  captions' embeddings (directions above ``svd_rel_tol`` of the largest singular value); no caption
  needed at test time (the third-party replication's reading). The kept rank is capped, because
  with thousands of real captions the numerical rank reaches the full width and the null space (what
  the classifier sees) would vanish: at most ``semantic_rank`` directions, or, when that is null,
  ``max_semantic_fraction`` of the width (default half: 384 of ViT-L/14's 768). Fitting fails, naming
  the numbers, when fewer than ``min_null_dims`` dimensions would be left.
* Visual encoder: LoRA (r 6, alpha 6, scale alpha/sqrt(r), input-branch dropout 0.8) on q, k, v of every
  block, as the sister code base (DGS-Net's official code);
  ``lora_rank: 0`` keeps the encoder frozen (features are then cached by the pipeline).
* Projection head g: MLP d -> 512 -> ReLU -> 128, L2-normalised, for the supervised contrastive loss
  (tau 0.07); classifier h: Linear(d -> 1) on v_perp (``classify_on: feature``) or on the MLP's
  512-d hidden layer (``hidden``). L = BCE + 1.0 * SupCon.
* Anchors without a same-label partner in the batch are left out of SupCon (rather than requiring a
  class-balanced sampler: the shared engine shuffles uniformly and balanced data makes such anchors
  rare at batch 32).
* Input normalisation: ImageNet statistics (the sister code base's choice), selectable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genguard.config import dataclass_from_dict
from genguard.data.images import NORMALISATIONS, input_overrides
from genguard.families.aigi.detector import Detector
from genguard.models.backbones import Backbone, create_backbone
from genguard.models.lora import LoRAConfig

NS_MODES = ("per_sample", "global_svd")


@dataclass(frozen=True)
class NSNetConfig:
    ns_mode: str = "per_sample"
    semantic_rank: int | None = None     # global_svd: cap on removed directions (None: max_semantic_fraction)
    max_semantic_fraction: float = 0.5   # global_svd: cap as a share of the width when semantic_rank is None
    min_null_dims: int = 16              # global_svd: refuse a basis leaving fewer dimensions than this
    svd_rel_tol: float = 1e-3
    lora_rank: int = 6
    lora_alpha: float = 6.0
    lora_scaling: str = "alpha/sqrt(r)"  # the group's code base (DGS-Net, CLIP-LoRA); not stated in the paper
    lora_dropout: float = 0.8            # likewise: DGS-Net's input-branch dropout
    proj_hidden: int = 512
    proj_dim: int = 128
    temperature: float = 0.07
    classify_on: str = "feature"         # feature (v_perp) | hidden (the projection MLP's hidden layer)
    lambda_con: float = 1.0
    lambda_cls: float = 1.0
    normalisation: str = "imagenet"      # imagenet | clip | backbone
    patch_selection: dict | None = field(default_factory=lambda: {"patch_size": 32, "grid": 7})

    @classmethod
    def from_dict(cls, cfg: dict | None) -> NSNetConfig:
        config = dataclass_from_dict(cls, cfg, "ns_net")
        if config.ns_mode not in NS_MODES:
            raise ValueError(f"ns_net.ns_mode must be one of {NS_MODES}, got {config.ns_mode!r}")
        if config.normalisation not in (*NORMALISATIONS, "backbone"):
            raise ValueError(f"ns_net.normalisation must be imagenet, clip or backbone, got {config.normalisation!r}")
        if config.classify_on not in ("feature", "hidden"):
            raise ValueError(f"ns_net.classify_on must be 'feature' or 'hidden', got {config.classify_on!r}")
        if config.temperature <= 0:
            raise ValueError("ns_net.temperature must be > 0")
        if not 0.0 < config.max_semantic_fraction < 1.0 or config.min_null_dims < 1:
            raise ValueError("ns_net needs 0 < max_semantic_fraction < 1 and min_null_dims >= 1")
        return config


def orthonormal_rows(basis: torch.Tensor) -> torch.Tensor:
    """Orthonormalise the k rows of ``basis`` ([..., k, d], k <= d) so that projections are exact."""
    if basis.shape[-2] == 1:
        return F.normalize(basis, dim=-1)
    q, _ = torch.linalg.qr(basis.transpose(-1, -2))  # [..., d, k]
    return q.transpose(-1, -2)


def null_space_project(features: torch.Tensor, basis: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """Remove span(basis) from ``features`` ([N, d]): v - B^T (B v) with B's rows orthonormalised.

    ``basis`` is [k, d] (one subspace for every row) or, with ``per_row``, [N, d] / [N, k, d] (one
    subspace per row, e.g. each image's caption embedding). Equals v - S^T (S S^T)^-1 S v for any
    full-rank S spanning the same subspace.
    """
    if per_row and basis.dim() == 2:
        basis = basis.unsqueeze(1)
    q = orthonormal_rows(basis.to(features.dtype))
    if q.dim() == 2:
        return features - (features @ q.T) @ q
    coefficients = torch.einsum("nkd,nd->nk", q, features)
    return features - torch.einsum("nk,nkd->nd", coefficients, q)


def supervised_contrastive_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on L2-normalised ``z``; anchors with no positive are skipped."""
    similarity = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    has_positive = counts > 0
    if not has_positive.any():
        return z.sum() * 0.0  # keeps the graph (DeepSpeed/DDP expect every step to backward)
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1) / counts.clamp(min=1)
    return -mean_log_prob[has_positive].mean()


class NSNet(Detector):
    uses_captions = True

    def __init__(self, backbone: Backbone, config: NSNetConfig, init_spec: dict) -> None:
        super().__init__(init_spec)
        self.config = config
        self.backbone = backbone.freeze()
        self.frozen_backbone = config.lora_rank == 0
        if not self.frozen_backbone:
            self.backbone.add_lora(LoRAConfig(config.lora_rank, config.lora_alpha, config.lora_scaling,
                                                  config.lora_dropout))
        dim = backbone.embed_dim
        self.projection_head = nn.Sequential(nn.Linear(dim, config.proj_hidden), nn.ReLU(),
                                             nn.Linear(config.proj_hidden, config.proj_dim))
        self.head = nn.Linear(config.proj_hidden if config.classify_on == "hidden" else dim, 1)
        # global_svd: the semantic subspace fitted on the training captions (rows orthonormal).
        self.register_buffer("semantic_basis", torch.zeros(0, dim))
        self._register_load_state_dict_pre_hook(self._resize_semantic_basis)

    def _resize_semantic_basis(self, state_dict, prefix, *args) -> None:
        # The fitted basis has as many rows as the training captions span; size the buffer to match.
        stored = state_dict.get(prefix + "semantic_basis")
        if stored is not None:
            self.semantic_basis = torch.empty_like(stored)

    # ------------------------------------------------------------------------------ inputs
    @property
    def needs_captions_at_inference(self) -> bool:
        return self.config.ns_mode == "per_sample"

    def preprocess_overrides(self) -> dict[str, Any]:
        return input_overrides(self.config.patch_selection, self.config.normalisation)

    def begin_stage(self, name: str, train_set: Any) -> None:
        if self.config.ns_mode == "global_svd":
            extras = getattr(train_set, "extras", {})
            if "text_features" not in extras:
                raise ValueError("ns_net global_svd needs the training captions' text features")
            self.fit_semantic_basis(extras["text_features"])

    def semantic_rank_cap(self, width: int) -> int:
        if self.config.semantic_rank is not None:
            return int(self.config.semantic_rank)
        return int(self.config.max_semantic_fraction * width)

    def fit_semantic_basis(self, text_features: torch.Tensor) -> torch.Tensor:
        """Top right-singular vectors of the (unit-norm) caption embeddings = the semantic subspace."""
        unit = F.normalize(text_features.float(), dim=-1)
        width = unit.shape[-1]
        _, singular, vh = torch.linalg.svd(unit, full_matrices=False)
        numerical = int((singular > self.config.svd_rel_tol * singular[0]).sum()) if len(singular) else 0
        keep = min(numerical, self.semantic_rank_cap(width))
        if width - keep < self.config.min_null_dims:
            raise ValueError(f"ns_net global_svd would remove {keep} of {width} feature dimensions (caption span "
                             f"{numerical}), leaving {width - keep} < min_null_dims={self.config.min_null_dims} for "
                             "the classifier. Fix: lower ns_net.semantic_rank / max_semantic_fraction, or raise "
                             "svd_rel_tol")
        self.semantic_basis = vh[:keep].contiguous()
        self.semantic_fit = {"numerical_rank": numerical, "kept_rank": keep, "null_dims": width - keep,
                             "width": width}
        return self.semantic_basis

    # ------------------------------------------------------------------------------ forward
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.frozen_backbone:
            with torch.no_grad():
                return self.backbone.encode_image(images)
        return self.backbone.encode_image(images)

    def decouple(self, features: torch.Tensor, text_features: torch.Tensor | None) -> torch.Tensor:
        """The null-space projection: the visual feature without its semantic component."""
        if self.config.ns_mode == "per_sample":
            if text_features is None:
                raise ValueError("ns_net (ns_mode per_sample) needs each image's caption embedding "
                                 "(batch key 'text_features'); pass captions, or train with ns_mode: global_svd "
                                 "to classify without captions")
            return null_space_project(features, text_features, per_row=True)
        if self.semantic_basis.numel() == 0:
            raise RuntimeError("ns_net global_svd: the semantic basis is empty; it is fitted at the start of "
                               "training (begin_stage) from the training captions")
        return null_space_project(features, self.semantic_basis)

    def _logits(self, decoupled: torch.Tensor) -> torch.Tensor:
        if self.config.classify_on == "hidden":
            decoupled = self.projection_head[1](self.projection_head[0](decoupled))
        return self.head(decoupled).squeeze(-1)

    def classify(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self._logits(self.decouple(features, text_features))

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.encode(images), text_features)

    def predict_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        features = batch["features"] if "features" in batch else self.encode(batch["image"])
        return self.classify(features, batch.get("text_features"))

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        features = batch["features"] if "features" in batch else self.encode(batch["image"])
        decoupled = self.decouple(features, batch.get("text_features"))
        target = batch["label"].float()
        loss_cls = F.binary_cross_entropy_with_logits(self._logits(decoupled), target)
        z = F.normalize(self.projection_head(decoupled), dim=-1)
        loss_con = supervised_contrastive_loss(z, batch["label"], cfg.temperature)
        loss = cfg.lambda_cls * loss_cls + cfg.lambda_con * loss_con
        return loss, {"bce": float(loss_cls.detach()), "supcon": float(loss_con.detach())}

    def prepare_for_inference(self) -> NSNet:
        if not self.frozen_backbone:
            self.backbone.merge_lora()
        return self.eval()

    def train(self, mode: bool = True) -> NSNet:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self


def build_ns_net(backbone: dict | None = None, **options) -> NSNet:
    config = NSNetConfig.from_dict(options)
    spec = {"method": "ns_net", "backbone": backbone or {}, **asdict(config)}
    return NSNet(create_backbone(backbone), config, init_spec=spec)
