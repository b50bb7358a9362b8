"""MASM / FMSD (Zhang et al., arXiv 2601.01041): multi-artifact SVD subspaces with selective layer masking.

Mechanism. Each attention projection (q, k, v, out) of the selected visual blocks is split by SVD into a
frozen semantic principal subspace and K learnable artifact subspaces of rank r_a (the K*r_a smallest
singular triplets, consecutive groups of r_a, initialised from the SVD so the model equals the
pretrained one at step 0). A selective layer mask decides which units (a block, a projection, or one
subspace of one projection) may learn, from the learning state of their subspaces: the bias and variance
of their gradients. Orthogonality and spectral-consistency constraints keep the subspaces complementary
and the spectrum close to the pretrained one. Head: Linear(d, 1) on ln_post(CLS) before the projection.

Neither the method section nor code was public; this follows the abstracts (v1: the mask follows the
"learning state of each artifact subspace"; v3: layers scored by the "bias-variance characteristics of
layer-wise gradients") anchored on Effort (arXiv 2411.15633), which the paper extends.

* The mask acts on gradients, never on the forward (v1 calls it a gradient mask; with the mask in the
  forward equation it would be a gate and the model would not equal the pretrained one): tensor hooks
  on the subspace parameters multiply each incoming gradient by its unit's 0/1 mask. Hooks, not the
  loop's ``gradient_hook``, so the mask holds under DeepSpeed ZeRO 1-2 (which moves parameter gradients
  into its own buffers). The mask lives in buffers (``learning_state.<i>.mask``) so checkpoints resume it.
  Subspace parameters get no weight decay (decay would shrink singular vectors, and it would move masked
  units): a unit masked from the start of a stage therefore stays bit-identical under SGD, Adam or AdamW.
  A unit masked *later* (dynamic schedule) stops receiving gradients, but Adam's momentum from before
  still moves it for a while: the loop owns the optimizer, so the mask cannot reset its state.
* ``mask_schedule: probe`` (v3, default): stage ``head`` trains the head alone on the frozen backbone
  (``head_epochs``; a random head's gradients would rank the layers by noise), then ``begin_stage("main")``
  runs ``probe_batches`` batches of BCE gradients without updating, scores each unit by
  SNR = ||mean g||^2 / mean ||g - mean g||^2 and lets the top ``select_ratio`` of units learn.
  The probe reads the same seeded rows in every process, so DeepSpeed ranks agree (and a rank that
  loads the probed state skips it). ``dynamic`` (v1): EMA (``ema_beta``) of each subspace's gradient and
  of its squared deviation, collected in the hooks; every ``update_every`` micro-batches a unit is
  masked when its SNR < ``snr_floor`` x the median SNR, or when its share of the summed mean-gradient norms
  exceeds ``share_cap`` (no single artifact pattern dominates); statistics are averaged over ranks first.
  ``none``: every unit learns (K = 1, lambdas 0 is Effort with residual rank r_a: tested).
* Constraints, per decomposed projection, averaged: L_orth = ||B^T B - I||_F^2 for the full left and
  right bases B = [B_sem | B_1 ... B_K] — one term that holds each subspace orthonormal, the subspaces
  mutually orthogonal (counted twice, as a Gram matrix does) and orthogonal to the frozen semantic
  subspace (computed from the stored initial tail vectors, see ``_spectral.py``). L_spec =
  ((||W'||^2 - ||W||^2) / ||W||^2)^2 + ||s - s0||^2 / ||s0||^2 (relative, so widths compare). Both are 0
  at initialisation. lambda_orth = lambda_spec = 0.1.
* [INFERRED, not in any source] K = 4 (one per FF++ manipulation, without per-type supervision), r_a = 1,
  select_ratio 1/3 (8 of 24 blocks), probe_batches 50 of 32 rows, update_every 100, ema_beta 0.9,
  snr_floor 0.5, share_cap 0.5, both lambdas, the "block" unit. The MLP linears are not decomposed
  (non-square; Effort decomposes attention only).

Trainable at ViT-L/14, K = 4, r_a = 1, all 24 blocks: 96 x 4 x (1024 + 1 + 1024) = 786,816 + head 1,025;
with the probe keeping 8 blocks, 262,272 of them learn (``effective_parameter_count``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genguard.config import dataclass_from_dict
from genguard.families.face.detector import FaceDetector
from genguard.families.face.methods import _vit
from genguard.families.face.methods._spectral import (
    SpectralResidual,
    SplitSite,
    basis_deviation_sq,
    decompose_attention,
    fold_sites,
    select_blocks,
    squared_norm_now,
)
from genguard.models.backbones import CLIPBackbone, create_backbone
from genguard.training.trainable import count_parameters

log = logging.getLogger(__name__)

MASK_SCHEDULES = ("probe", "dynamic", "none")
MASK_UNITS = ("block", "linear", "subspace")
STAGES = ("head", "main")
_FACTORS = ("u", "s", "v")


@dataclass(frozen=True)
class MASMConfig:
    subspaces: int = 4                      # K                                    [inferred]
    subspace_rank: int = 1                  # r_a                                  [inferred]
    blocks: tuple[int, ...] | None = None   # visual blocks decomposed (None: all)
    lambda_orth: float = 0.1                #                                      [inferred]
    lambda_spec: float = 0.1                #                                      [inferred]
    mask_schedule: str = "probe"            # probe (v3) | dynamic (v1) | none
    mask_unit: str = "block"                # block | linear (q, k, v, out) | subspace
    head_epochs: int = 1                    # head-only warm-up before the probe (0: none)
    head_lr: float | None = None            # None: the training lr
    probe_batches: int = 50
    probe_batch_size: int = 32              #                                      [inferred]
    probe_seed: int = 0
    select_ratio: float = 1 / 3             # share of units the probe lets learn  [inferred]
    update_every: int = 100                 # dynamic: micro-batches per mask update (T_upd) [inferred]
    ema_beta: float = 0.9                   # dynamic                              [inferred]
    snr_floor: float = 0.5                  # dynamic: tau, relative to the median SNR [inferred]
    share_cap: float = 0.5                  # dynamic: c                           [inferred]

    @classmethod
    def from_dict(cls, cfg: dict | None) -> MASMConfig:
        cfg = dict(cfg or {})
        if cfg.get("blocks") is not None:
            cfg["blocks"] = tuple(int(b) for b in cfg["blocks"])
        config = dataclass_from_dict(cls, cfg, "masm")
        if config.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"masm.mask_schedule must be one of {MASK_SCHEDULES}, got {config.mask_schedule!r}")
        if config.mask_unit not in MASK_UNITS:
            raise ValueError(f"masm.mask_unit must be one of {MASK_UNITS}, got {config.mask_unit!r}")
        if config.subspaces < 1 or config.subspace_rank < 1:
            raise ValueError("masm.subspaces and masm.subspace_rank must be >= 1")
        if not 0 < config.select_ratio <= 1:
            raise ValueError("masm.select_ratio must be in (0, 1]")
        if min(config.probe_batches, config.probe_batch_size, config.update_every) < 1 or config.head_epochs < 0:
            raise ValueError("masm.probe_batches, probe_batch_size and update_every must be >= 1, head_epochs >= 0")
        if not 0 <= config.ema_beta < 1 or config.lambda_orth < 0 or config.lambda_spec < 0:
            raise ValueError("masm.ema_beta must be in [0, 1) and the lambdas >= 0")
        return config


class SubspaceLearningState(nn.Module):
    """Mask (blocks, K) of one decomposed weight and, for the dynamic schedule, the EMA of each factor's
    gradient and of each subspace's squared gradient deviation."""

    def __init__(self, split: SpectralResidual, track: bool) -> None:
        super().__init__()
        blocks, k = split.s.shape[:2]
        device = split.s.device
        self.register_buffer("mask", torch.ones(blocks, k, device=device))
        for name in _FACTORS:
            shape = getattr(split, name).shape if track else (0,)
            self.register_buffer(f"mean_{name}", torch.zeros(shape, device=device))
        self.register_buffer("variance", torch.zeros(blocks, k, device=device))
        self.pending: dict[str, torch.Tensor] = {}   # raw gradients of the last backward (dynamic)

    def fold(self, beta: float) -> None:
        """EMA update from the pending raw gradients (deviation measured from the previous mean)."""
        if len(self.pending) < len(_FACTORS):
            self.pending.clear()
            return
        deviation = torch.zeros_like(self.variance)
        for name in _FACTORS:
            gradient, mean = self.pending[name].float(), getattr(self, f"mean_{name}")
            deviation += per_subspace((gradient - mean).pow(2))
            mean.mul_(beta).add_(gradient, alpha=1 - beta)
        self.variance.mul_(beta).add_(deviation, alpha=1 - beta)
        self.pending.clear()

    def mean_sq_norm(self) -> torch.Tensor:
        return sum(per_subspace(getattr(self, f"mean_{name}").pow(2)) for name in _FACTORS)


def per_subspace(values: torch.Tensor) -> torch.Tensor:
    """Sum of a factor-shaped tensor (blocks, K, ...) over each subspace: (blocks, K)."""
    return values.flatten(2).sum(2)


class MASM(FaceDetector):
    frozen_backbone = False

    def __init__(self, backbone: CLIPBackbone, config: MASMConfig, init_spec: dict) -> None:
        super().__init__(init_spec)
        self.config = config
        self.backbone = backbone.freeze()
        visual = backbone.visual
        blocks = _vit.transformer_blocks(visual)
        self.sites: list[SplitSite] = [
            site for layer in select_blocks(len(blocks), config.blocks)
            for site in decompose_attention(blocks[layer], layer, config.subspaces, config.subspace_rank)]
        track = config.mask_schedule == "dynamic"
        self.learning_state = nn.ModuleList(SubspaceLearningState(site.split, track) for site in self.sites)
        self.head = nn.Linear(_vit.width(visual), 1, device=visual.ln_post.weight.device)
        device = visual.ln_post.weight.device
        self.register_buffer("probed", torch.zeros(1, device=device))
        self.register_buffer("ema_steps", torch.zeros(1, device=device))
        self.unit_ids, self.unit_names = self._units()
        self.stage = "main"
        for site, state in zip(self.sites, self.learning_state, strict=True):
            for name in _FACTORS:
                getattr(site.split, name).register_hook(self._gradient_mask(state, name))
        log.info("masm: %d trainable parameters (%d in %d x %d artifact subspaces of rank %d over %d projections, "
                 "%d in the head); %d mask units (%s)", count_parameters(self), self.subspace_parameter_count(),
                 len(self.sites), config.subspaces, config.subspace_rank,
                 sum(site.split.blocks for site in self.sites), count_parameters(self.head), len(self.unit_names),
                 config.mask_unit)

    # ------------------------------------------------------------------ units and counts
    def _units(self) -> tuple[list[torch.Tensor], list[str]]:
        """Per site, the unit index of each (block, subspace) pair, and the units' names."""
        names: dict[str, int] = {}
        ids = []
        for site in self.sites:
            split = site.split
            grid = torch.empty(split.blocks, split.subspaces, dtype=torch.long)
            for j, projection in enumerate(site.projections):
                for k in range(split.subspaces):
                    name = {"block": f"block{site.layer}", "linear": f"block{site.layer}.{projection}",
                            "subspace": f"block{site.layer}.{projection}.{k}"}[self.config.mask_unit]
                    grid[j, k] = names.setdefault(name, len(names))
            ids.append(grid)
        return ids, list(names)

    def subspace_parameters(self) -> list[nn.Parameter]:
        return [getattr(site.split, name) for site in self.sites for name in _FACTORS]

    def subspace_parameter_count(self) -> int:
        return sum(site.split.trainable_count() for site in self.sites)

    def effective_parameter_count(self) -> int:
        """Parameters the current mask lets learn (subspaces + head)."""
        per_pair = self.config.subspace_rank * (2 * _vit.width(self.backbone.visual) + 1)
        masked_in = sum(int(state.mask.sum().item()) for state in self.learning_state)
        return masked_in * per_pair + count_parameters(self.head)

    def unit_mask(self) -> dict[str, bool]:
        """Whether each unit learns (a unit learns when any of its subspaces does)."""
        learns = torch.zeros(len(self.unit_names), dtype=torch.bool)
        for ids, state in zip(self.unit_ids, self.learning_state, strict=True):
            learns[ids[state.mask.cpu() > 0]] = True
        return dict(zip(self.unit_names, learns.tolist(), strict=True))

    # ------------------------------------------------------------------ the gradient mask
    def _gradient_mask(self, state: SubspaceLearningState, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(gradient: torch.Tensor) -> torch.Tensor:
            if self._collecting():
                state.pending[name] = gradient.detach().clone()
            mask = state.mask.view(*state.mask.shape, *([1] * (gradient.dim() - 2)))
            return gradient * mask.to(gradient.dtype)

        return hook

    def _collecting(self) -> bool:
        return self.config.mask_schedule == "dynamic" and self.stage == "main" and self.training

    def set_mask(self, learning_units: torch.Tensor) -> None:
        """Masks from a boolean vector over units (True: the unit learns)."""
        for ids, state in zip(self.unit_ids, self.learning_state, strict=True):
            state.mask.copy_(learning_units.to(ids.device)[ids].to(state.mask))

    # ------------------------------------------------------------------ stages
    def training_stages(self) -> list[tuple[str, dict[str, Any]]]:
        stages: list[tuple[str, dict[str, Any]]] = []
        if self.config.head_epochs > 0:
            head: dict[str, Any] = {"epochs": self.config.head_epochs}
            if self.config.head_lr is not None:
                head["lr"] = self.config.head_lr
            stages.append(("head", head))
        return [*stages, ("main", {})]

    def begin_stage(self, name: str, train_set: Any) -> None:
        if name not in STAGES:
            raise ValueError(f"masm has stages {STAGES}, not {name!r}")
        self.stage = name
        for parameter in self.subspace_parameters():
            parameter.requires_grad_(name == "main")
        self.head.requires_grad_(True)
        if name == "main" and self.config.mask_schedule == "probe" and not bool(self.probed.item()):
            self.probe_and_select(train_set)

    def probe_and_select(self, train_set: Any) -> dict[str, float]:
        """Score every unit by the SNR of its BCE gradients over the probe batches (no update) and let the
        top ``select_ratio`` learn. Returns the SNR per unit."""
        cfg = self.config
        bias, variance = self.gradient_statistics(train_set)
        snr = bias / (variance + 1e-12)
        keep = max(1, round(cfg.select_ratio * len(snr)))
        learning = torch.zeros(len(snr), dtype=torch.bool)
        learning[torch.topk(snr, keep).indices] = True
        self.set_mask(learning)
        self.probed.fill_(1.0)
        log.info("masm probe: %d of %d units learn: %s", keep, len(snr),
                 ", ".join(n for n, on in zip(self.unit_names, learning.tolist(), strict=True) if on))
        return dict(zip(self.unit_names, snr.tolist(), strict=True))

    def gradient_statistics(self, train_set: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit: ||mean g||^2 and mean ||g - mean g||^2 of the BCE gradient over the probe batches."""
        cfg = self.config
        for state in self.learning_state:
            state.mask.fill_(1.0)
        was_training = self.training
        self.eval()
        params = self.subspace_parameters()
        wanted = [p.requires_grad for p in params]
        for parameter in params:
            parameter.requires_grad_(True)
        sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        sq_norms = [torch.zeros_like(state.mask) for state in self.learning_state]
        count = 0
        try:
            with _vit.on_accelerator(self) as device, torch.enable_grad():
                sums = [s.to(device) for s in sums]
                sq_norms = [s.to(device) for s in sq_norms]
                for batch in _vit.seeded_batches(train_set, cfg.probe_batch_size,
                                                 cfg.probe_batches * cfg.probe_batch_size, cfg.probe_seed, device):
                    loss = F.binary_cross_entropy_with_logits(self.predict_step(batch), batch["label"].float())
                    gradients = torch.autograd.grad(loss, params)
                    for i, gradient in enumerate(gradients):
                        sums[i] += gradient.float()
                        sq_norms[i // len(_FACTORS)] += per_subspace(gradient.float().pow(2))
                    count += 1
        finally:
            self.train(was_training)
            for parameter, flag in zip(params, wanted, strict=True):
                parameter.requires_grad_(flag)
        if count == 0:
            raise ValueError("masm probe: the training set is empty")
        factors = len(_FACTORS)
        bias = [sum(per_subspace((sums[i * factors + f] / count).pow(2)) for f in range(factors)).cpu()
                for i in range(len(self.sites))]
        variance = [(sq / count).cpu() - b for sq, b in zip(sq_norms, bias, strict=True)]
        return self._to_units(bias), self._to_units([v.clamp_min(0.0) for v in variance])

    def _to_units(self, per_site: list[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(len(self.unit_names), dtype=torch.float64)
        for ids, values in zip(self.unit_ids, per_site, strict=True):
            total.index_add_(0, ids.flatten(), values.flatten().double().cpu())
        return total

    # ------------------------------------------------------------------ dynamic schedule
    def _advance_learning_state(self) -> None:
        """Fold the last backward's gradients into the EMAs; every ``update_every`` micro-batches, re-mask."""
        cfg = self.config
        with torch.no_grad():
            folded = False
            for state in self.learning_state:
                folded |= len(state.pending) == len(_FACTORS)
                state.fold(cfg.ema_beta)
            if not folded:
                return
            self.ema_steps += 1
            if int(self.ema_steps.item()) % cfg.update_every == 0:
                self.update_dynamic_mask()

    @torch.no_grad()
    def update_dynamic_mask(self) -> torch.Tensor:
        cfg = self.config
        if dist.is_available() and dist.is_initialized():  # every rank decides from the same statistics
            world = dist.get_world_size()
            for state in self.learning_state:
                for buffer in (state.mean_u, state.mean_s, state.mean_v, state.variance):
                    dist.all_reduce(buffer)
                    buffer.div_(world)
        correction = 1.0 - cfg.ema_beta ** int(self.ema_steps.item())
        bias = self._to_units([state.mean_sq_norm() / correction ** 2 for state in self.learning_state])
        variance = self._to_units([state.variance / correction for state in self.learning_state])
        snr = bias / (variance + 1e-12)
        share = bias.sqrt() / bias.sqrt().sum().clamp_min(1e-30)
        learning = (snr >= cfg.snr_floor * snr.median()) & (share <= cfg.share_cap)
        if not learning.any():
            learning[snr.argmax()] = True
        self.set_mask(learning)
        return learning

    # ------------------------------------------------------------------ forward and loss
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return _vit.pooled_features(self.backbone.visual, images)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(-1)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if self._collecting():
            self._advance_learning_state()
        logits = self.predict_step(batch)
        bce = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
        logs = {"bce": float(bce.detach())}
        loss = bce
        if self.stage == "main" and self.sites and (self.config.lambda_orth or self.config.lambda_spec):
            orthogonality, spectral = self.constraints()
            loss = loss + self.config.lambda_orth * orthogonality + self.config.lambda_spec * spectral
            logs.update(orthogonality=float(orthogonality.detach()), spectral=float(spectral.detach()))
        if self.stage == "main" and self.learning_state:
            masks = torch.cat([state.mask.flatten() for state in self.learning_state])
            logs["learning_fraction"] = float(masks.mean())
        return loss, logs

    def constraints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_orth, L_spec), each averaged over the decomposed projections."""
        orthogonality, spectral, count = 0.0, 0.0, 0
        for site in self.sites:
            split = site.split
            orthogonality = orthogonality + (basis_deviation_sq(split.u_columns(), split.tail_u)
                                             + basis_deviation_sq(split.v_columns(), split.tail_v)).sum()
            reference = split.weight_sq_norm.float()
            norm_drift = ((squared_norm_now(site) - reference) / reference).pow(2)
            initial = split.initial_s.float()
            spectrum_drift = (split.s.float() - initial).pow(2).flatten(1).sum(1) / initial.pow(2).flatten(1).sum(1)
            spectral = spectral + (norm_drift + spectrum_drift).sum()
            count += split.blocks
        return orthogonality / count, spectral / count

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        subspaces = [p for p in self.subspace_parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": lr, "weight_decay": weight_decay}]
        if subspaces:  # no decay: it would shrink singular vectors and move masked units
            groups.append({"params": subspaces, "lr": lr, "weight_decay": 0.0})
        return groups

    # ------------------------------------------------------------------ inference
    def prepare_for_inference(self) -> MASM:
        fold_sites(self.sites)
        self.sites = []
        self.stage = "main"
        return self.eval()


def build_masm(backbone: dict | None = None, **options) -> MASM:
    config = MASMConfig.from_dict(options)
    values = asdict(config)
    values["blocks"] = list(config.blocks) if config.blocks is not None else None
    return MASM(create_backbone(backbone), config, init_spec={"method": "masm", "backbone": backbone or {}, **values})
