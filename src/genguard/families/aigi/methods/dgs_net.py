"""DGS-Net (Yan et al., arXiv 2511.13108, ICML 2026): distillation-guided gradient surgery.

Fine-tuning CLIP for AIGI detection forgets transferable priors. DGS-Net splits the gradient on
the student's image feature f_s into what to drop and what to follow (read from the official code,
``networks/trainer.py``):

* harmful direction u_i: the (ReLU'd, unit-norm) gradient of a caption-only classifier's loss
  w.r.t. the caption embedding f_c — what semantics alone predict;
* beneficial direction G_b,i: the negative part of the gradient of a *frozen* linear-probe
  teacher's loss w.r.t. the frozen encoder's feature f_t — the pre-trained prior's discriminative
  direction, distilled through L_align = mean_i <f_s,i, G_b,i>;
* L = BCE(h_i(f_s), y) + BCE(h_c(f_c), y) + lambda * L_align (lambda 0.2); the gradient reaching
  f_s is replaced by gamma_i - <gamma_i, u_i> u_i before it enters the LoRA weights.

Two stages, as the code: ``teacher`` — frozen encoder + Linear(d, 1) probe (UnivFD on
patch-selected inputs; 3 epochs); ``student`` — LoRA (r 6, alpha 6, scale alpha/sqrt(r)) on q, k, v
of every block + image head + caption head, teacher frozen (1 epoch at paper scale).

Where the surgery runs: a tensor hook on f_s, registered by ``training_loss``, edits the gradient
gamma arriving at f_s (from the image head and L_align) during the one ordinary backward, before it
enters the encoder: the paper's form, in any training loop and on any backend. The edit happens on
an activation's gradient, before any parameter gradient exists, so DeepSpeed's ZeRO stages, which
partition and move parameter gradients, do not see it (a two-pass "deferred loss" version lost the
heads' gradients under ZeRO-1: measured, and the reason for this form). With ``surgery: false`` the
hook passes gamma through unchanged and the gradients equal a plain ``loss.backward()`` (tested).

LoRA as the code: r 6, alpha 6, scale alpha/sqrt(r), dropout 0.8 on the LoRA input branch
(``genguard.models.lora``). Deviation, recorded: the teacher probe is trained by the same loop
(``train.optimizer``: conf/gpu uses Adam, the code's).
``align_normalised: true`` is an ablation knob (per-sample unit G_b, removing the 1/B^2 scale the
code's mean-BCE gradients give L_align).

Batch scaling rule. G_b comes from the teacher's *mean* BCE over the batch, so it carries a 1/B factor
and L_align's strength depends on the batch a process sees: split over 8 GPUs, each rank's micro-batch
of 4 would make the alignment 8x stronger than the code's single-GPU batch of 32. ``align_batch_size``
fixes B in that factor (G_b is computed per sample and divided by it), so the objective is the same
whatever the number of processes; ``null`` uses the batch at hand (the code on one process).
``conf/gpu`` sets 32, the code's batch.
"""

from __future__ import annotations

import copy
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

STAGES = ("teacher", "student")


@dataclass(frozen=True)
class DGSNetConfig:
    lora_rank: int = 6
    lora_alpha: float = 6.0
    lora_scaling: str = "alpha/sqrt(r)"  # the CLIP-LoRA convention of the code
    lora_dropout: float = 0.8            # on the LoRA input branch, as the code
    lambda_align: float = 0.2
    surgery: bool = True
    align_normalised: bool = False
    align_batch_size: int | None = None  # B in G_b's 1/B factor (None: the batch at hand); conf/gpu: 32
    teacher_epochs: int = 3
    teacher_lr: float | None = None      # None: the training lr
    normalisation: str = "imagenet"      # imagenet | clip | backbone
    patch_selection: dict | None = field(default_factory=lambda: {"patch_size": 32, "grid": 7})

    @classmethod
    def from_dict(cls, cfg: dict | None) -> DGSNetConfig:
        config = dataclass_from_dict(cls, cfg, "dgs_net")
        if config.normalisation not in (*NORMALISATIONS, "backbone"):
            raise ValueError(f"dgs_net.normalisation must be imagenet, clip or backbone, got {config.normalisation!r}")
        if config.teacher_epochs < 1:
            # Without a trained teacher probe the beneficial direction G_b comes from a random linear
            # layer: the alignment term would pull the student towards noise.
            raise ValueError(f"dgs_net.teacher_epochs must be >= 1 (got {config.teacher_epochs}): the beneficial "
                             "direction comes from the trained teacher probe (the official code trains it 3 epochs)")
        if config.lora_rank < 1:
            raise ValueError("dgs_net.lora_rank must be >= 1")
        if config.align_batch_size is not None and config.align_batch_size < 1:
            raise ValueError("dgs_net.align_batch_size must be >= 1 or null")
        return config


def remove_harmful_component(gradient: torch.Tensor, harmful_unit: torch.Tensor) -> torch.Tensor:
    """gamma_i - <gamma_i, u_i> u_i per row (u_i unit or zero)."""
    return gradient - (gradient * harmful_unit).sum(dim=1, keepdim=True) * harmful_unit


class DGSNet(Detector):
    uses_captions = True
    frozen_pretrained_prefixes = ("backbone.", "teacher_encoder.")

    def __init__(self, backbone: Backbone, config: DGSNetConfig, init_spec: dict) -> None:
        super().__init__(init_spec)
        self.config = config
        self.backbone = backbone.freeze()
        # The teacher is the pre-trained image tower before any adaptation, never trained.
        self.teacher_encoder = copy.deepcopy(backbone.visual).requires_grad_(False).eval()
        self.lora_parameters = self.backbone.add_lora(LoRAConfig(config.lora_rank, config.lora_alpha,
                                                                         config.lora_scaling, config.lora_dropout))
        dim = backbone.embed_dim
        self.teacher_head = nn.Linear(dim, 1)
        self.image_head = nn.Linear(dim, 1)
        self.caption_head = nn.Linear(dim, 1)
        self.stage = "student"  # what inference uses; training switches through begin_stage
        self.last_feature_gradient: torch.Tensor | None = None  # the gradient applied to f_s (diagnostics)

    # ------------------------------------------------------------------------------ stages
    def training_stages(self) -> list[tuple[str, dict[str, Any]]]:
        teacher: dict[str, Any] = {"epochs": self.config.teacher_epochs}
        if self.config.teacher_lr is not None:
            teacher["lr"] = self.config.teacher_lr
        return [("teacher", teacher), ("student", {})]

    def begin_stage(self, name: str, train_set: Any) -> None:
        if name not in STAGES:
            raise ValueError(f"dgs_net has stages {STAGES}, not {name!r}")
        self.stage = name
        student = name == "student"
        self.teacher_head.requires_grad_(not student)
        for module in (self.image_head, self.caption_head):
            module.requires_grad_(student)
        for parameter in self.lora_parameters:
            parameter.requires_grad_(student)

    def train(self, mode: bool = True) -> DGSNet:
        super().train(mode)
        self.teacher_encoder.eval()
        if self.stage == "teacher":
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------------------ inputs
    def preprocess_overrides(self) -> dict[str, Any]:
        return input_overrides(self.config.patch_selection, self.config.normalisation)

    # ------------------------------------------------------------------------------ forward
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(images)

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher_encoder(images)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_head(features).squeeze(-1)

    def predict_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.stage == "teacher":
            return self.teacher_head(self.teacher_features(batch["image"])).squeeze(-1)
        return self.classify(self.encode(batch["image"]))

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch["label"].float()
        if self.stage == "teacher":
            loss = F.binary_cross_entropy_with_logits(self.predict_step(batch), target)
            return loss, {"teacher_bce": float(loss.detach())}
        if "text_features" not in batch:
            raise ValueError("dgs_net needs each training image's caption embedding (batch key 'text_features')")
        images = batch["image"]
        student = self.encode(images)
        beneficial = self._beneficial_direction(images, target)
        harmful_unit, loss_caption = self._harmful_direction(batch["text_features"], target)
        if student.requires_grad:
            student.register_hook(self._surgery(harmful_unit))
        loss_image = F.binary_cross_entropy_with_logits(self.image_head(student).squeeze(-1), target)
        loss_align = (student * beneficial).sum(dim=1).mean()
        loss = loss_image + loss_caption + self.config.lambda_align * loss_align
        return loss, {"bce_image": float(loss_image.detach()), "bce_caption": float(loss_caption.detach()),
                      "align": float(loss_align.detach())}

    def _surgery(self, harmful_unit: torch.Tensor):
        """The hook on f_s: gamma -> gamma - <gamma, u> u per row (``surgery: false``: unchanged)."""
        def edit(gradient: torch.Tensor) -> torch.Tensor:
            if self.config.surgery:
                gradient = remove_harmful_component(gradient, harmful_unit.to(gradient.dtype))
            self.last_feature_gradient = gradient.detach()
            return gradient

        return edit

    def _beneficial_direction(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """G_b = min(dL_t/df_t, 0) for the frozen teacher probe (no parameter receives a gradient)."""
        with torch.enable_grad():
            teacher = self.teacher_features(images).detach().requires_grad_(True)
            loss_teacher = F.binary_cross_entropy_with_logits(
                F.linear(teacher, self.teacher_head.weight.detach(), self.teacher_head.bias.detach()).squeeze(-1),
                target)
            (gradient,) = torch.autograd.grad(loss_teacher, teacher)
        beneficial = gradient.clamp(max=0.0)
        if self.config.align_batch_size is not None:
            beneficial = beneficial * (len(target) / self.config.align_batch_size)
        if self.config.align_normalised:
            beneficial = F.normalize(beneficial, dim=1)
        return beneficial.detach()

    def _harmful_direction(self, text_features: torch.Tensor, target: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """u = ReLU(dL_c/df_c) / ||.|| and L_c itself (which trains the caption head only)."""
        caption = text_features.detach().to(self.caption_head.weight.dtype).requires_grad_(True)
        loss_caption = F.binary_cross_entropy_with_logits(self.caption_head(caption).squeeze(-1), target)
        (gradient,) = torch.autograd.grad(loss_caption, caption, retain_graph=True)
        positive = gradient.clamp(min=0.0)
        return (positive / (positive.norm(dim=1, keepdim=True) + 1e-6)).detach(), loss_caption

    # ------------------------------------------------------------------------------ storage
    def prepare_for_inference(self) -> DGSNet:
        self.backbone.merge_lora()
        self.stage = "student"
        return self.eval()


def build_dgs_net(backbone: dict | None = None, **options) -> DGSNet:
    config = DGSNetConfig.from_dict(options)
    spec = {"method": "dgs_net", "backbone": backbone or {}, **asdict(config)}
    return DGSNet(create_backbone(backbone), config, init_spec=spec)
