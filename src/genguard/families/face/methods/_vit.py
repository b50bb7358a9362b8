"""The few views of open_clip's VisionTransformer the face detectors need.

The feature is the post-LayerNorm CLS token *before* the projection (``ln_post(x[:, 0])``, 1024-d at
ViT-L/14): what HF CLIP's ``pooler_output`` is, hence what Effort's head reads. open_clip's
``encode_image`` returns the projected 768-d embedding instead, so the tower is run in its own steps
(``_embeds`` -> ``transformer`` -> ``_pool``, open_clip >= 2.24).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from genguard.data.loaders import collate


def require_vit(visual: nn.Module) -> nn.Module:
    """The face detectors decompose attention weights and read the CLS token: a ViT mechanism. The
    offline pretrained pair (``genguard-lit-effnet-lite0``) has a CNN image tower with neither."""
    if not hasattr(visual, "transformer"):
        raise ValueError(f"the face detectors need a CLIP ViT image tower (they work on its attention weights "
                         f"and CLS token); got {type(visual).__name__}. Use genguard-tiny-vit (embedded) or a "
                         "CLIP ViT such as ViT-L-14-quickgelu")
    return visual


def transformer_blocks(visual: nn.Module) -> nn.ModuleList:
    return require_vit(visual).transformer.resblocks


def width(visual: nn.Module) -> int:
    return int(require_vit(visual).transformer.width)


def pooled_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """ln_post(CLS) before the projection: B x width."""
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError("the face detectors read the CLS token of a plain CLIP ViT (no attentional pooling)")
    tokens = visual.transformer(visual._embeds(images))
    pooled, _ = visual._pool(tokens)
    return pooled


def parameter_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextmanager
def on_accelerator(model: nn.Module) -> Iterator[torch.device]:
    """Run a data pass (calibration, probe) on a CUDA device when the model sits on the CPU and one is
    available — e.g. in ``begin_stage``, which the loop calls before any backend moves the model —
    and put the model back where it was afterwards."""
    device = parameter_device(model)
    if device.type != "cpu" or not torch.cuda.is_available():
        yield device
        return
    model.to("cuda")
    try:
        yield torch.device("cuda")
    finally:
        model.to(device)


def seeded_batches(dataset: Dataset, batch_size: int, max_rows: int, seed: int,
                   device: torch.device) -> Iterator[dict[str, Any]]:
    """Batches of a seeded random subset of ``max_rows`` rows (the same in every process)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:max_rows].tolist()
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start:start + batch_size]])
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
