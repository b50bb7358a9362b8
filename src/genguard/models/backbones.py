"""Backbone factory over open_clip: architecture as data (JSON), weights resolved separately.

The embedded default uses ``genguard-tiny-vit`` (configs/genguard-tiny-vit.json: 64-px ViT, 2 layers,
width 64, random init) so every CLIP method runs on a CPU in seconds. The paper-scale profile names
``ViT-L-14-quickgelu`` with ``pretrained: openai`` (an open_clip tag, fetched into the hub cache) or a
local checkpoint file. Both go through :func:`create_backbone`, so the method code never branches on size. A config with
``"kind": "lit"`` (``genguard-lit-effnet-lite0``) builds the offline *pretrained* pair of
``genguard.models.lit`` instead, behind the same entry points (``encode_image``, ``encode_prompts``,
``visual``, ``embed_dim``, ``add_lora``/``merge_lora``).

Activation check: OpenAI's CLIP weights were trained with QuickGELU (x * sigmoid(1.702 x)); open_clip's
plain ``ViT-L-14`` config builds ``nn.GELU`` and only *warns* when given those weights, so every feature
would silently differ from the CLIP the papers use. :func:`check_activation` refuses a known
mismatch (open_clip's pretrained table records ``quick_gelu`` per weight tag) and names the fix: the
``-quickgelu`` config, or ``extra: {force_quick_gelu: true}``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genguard.models.lit import LiTBackbone, LiTConfig
from genguard.models.lora import LoRAConfig, add_lora, merge_lora
from genguard.registry import PREDICTORS

_CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False
log = logging.getLogger(__name__)


def _register_project_configs() -> None:
    global _registered
    if _registered:
        return
    import open_clip

    for config in sorted(_CONFIG_DIR.glob("*.json")):
        if json.loads(config.read_text()).get("kind") != "lit":  # not an open_clip architecture
            open_clip.add_model_config(config)
    _registered = True


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a CLIP backbone. ``pretrained`` is None (random init), an open_clip tag or a path."""

    name: str = "genguard-tiny-vit"
    pretrained: str | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: dict | None) -> BackboneSpec:
        from genguard.config import dataclass_from_dict

        values = dict(cfg or {})
        if values.get("extra", {}) is None:  # `extra: null` in a profile drops the base profile's options
            values.pop("extra")
        return dataclass_from_dict(cls, values, "backbone")

    def to_dict(self) -> dict:
        return asdict(self)


def check_activation(spec: BackboneSpec) -> None:
    """Raise when ``spec``'s pretrained weights were trained with another activation than its config."""
    import open_clip

    if not spec.pretrained or Path(spec.pretrained).expanduser().exists():
        return  # random init, or a local file: open_clip's table says nothing about it
    _register_project_configs()
    trained_quick = bool(open_clip.pretrained.get_pretrained_cfg(spec.name, spec.pretrained).get("quick_gelu"))
    config = open_clip.get_model_config(spec.name) or {}
    built_quick = bool(config.get("quick_gelu")) or bool(spec.extra.get("force_quick_gelu"))
    if trained_quick and not built_quick:
        raise ValueError(f"backbone {spec.name!r} with pretrained={spec.pretrained!r}: these weights were trained "
                         f"with QuickGELU but the {spec.name!r} config builds nn.GELU, so every feature would differ "
                         f"from the published model. Fix: name '{spec.name}-quickgelu' (or set "
                         "backbone.extra.force_quick_gelu: true)")
    if built_quick and not trained_quick and spec.pretrained in open_clip.list_pretrained_tags_by_model(spec.name):
        raise ValueError(f"backbone {spec.name!r} builds QuickGELU but pretrained={spec.pretrained!r} was trained "
                         "with nn.GELU; drop '-quickgelu' / force_quick_gelu for these weights")


class CLIPBackbone(nn.Module):
    """An open_clip CLIP model with the few entry points the detectors use."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        import open_clip

        _register_project_configs()
        check_activation(spec)
        self.spec = spec
        pretrained = spec.pretrained
        if pretrained and Path(pretrained).expanduser().exists():
            pretrained = str(Path(pretrained).expanduser())
        # Random init must not depend on whatever consumed the global RNG before us.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            self.clip = open_clip.create_model(spec.name, pretrained=pretrained, **spec.extra)
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        self._scalars_to_buffers()
        visual = self.clip.visual
        size = visual.image_size
        self.image_size: int = int(size[0] if isinstance(size, tuple | list) else size)
        self.image_mean: tuple[float, ...] = tuple(float(v) for v in visual.image_mean)
        self.image_std: tuple[float, ...] = tuple(float(v) for v in visual.image_std)
        self.embed_dim: int = int(self.clip.text_projection.shape[1]
                                  if self.clip.text_projection is not None else visual.output_dim)

    def _scalars_to_buffers(self) -> None:
        """CLIP's contrastive temperature (and SigLIP's bias) are 0-dim parameters that detectors
        never train; as buffers they keep their state-dict names (checkpoints still load) but leave
        the parameter list, whose 0-dim entries DeepSpeed's initial broadcast cannot handle."""
        for name in ("logit_scale", "logit_bias"):
            value = getattr(self.clip, name, None)
            if isinstance(value, nn.Parameter):
                delattr(self.clip, name)
                self.clip.register_buffer(name, value.detach().clone())

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts)
        return self.clip.encode_text(tokens)

    def freeze(self) -> CLIPBackbone:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def add_lora(self, config: LoRAConfig) -> list[nn.Parameter]:
        """LoRA on q, k, v of every attention of the image tower (``genguard.models.lora``)."""
        return add_lora(self.visual, config)

    def merge_lora(self) -> None:
        merge_lora(self.visual)


#: What detectors hold: either kind answers encode_image / encode_prompts / add_lora / merge_lora.
Backbone = CLIPBackbone | LiTBackbone


def backbone_config(name: str) -> dict | None:
    """A project config (``configs/<name>.json``), or None for open_clip's own names."""
    path = _CONFIG_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def create_backbone(spec: BackboneSpec | dict | None = None) -> Backbone:
    """Every backbone is built here: ``"kind": "lit"`` configs are the offline pretrained pair
    (``genguard.models.lit``), everything else an open_clip model."""
    if not isinstance(spec, BackboneSpec):
        spec = BackboneSpec.from_dict(spec)
    config = backbone_config(spec.name) or {}
    if config.get("kind") == "lit":
        return LiTBackbone(spec, LiTConfig.from_dict(config))
    return CLIPBackbone(spec)


class BackbonePredictor:
    """What a registered backbone's MLflow pyfunc does (``PREDICTORS["backbone"]``): images (uint8
    [N, H, W, 3], PIL images, or a DataFrame with a ``path`` column) -> image embeddings, float32
    [N, embed_dim]. The folder's ``genguard.json`` names the backbone and the file beside it that its
    ``pretrained`` points to (e.g. the LiT prior)."""

    def __init__(self, model_dir: str) -> None:
        from genguard.data.images import Preprocess

        marker = json.loads((Path(model_dir) / "genguard.json").read_text())
        weights = marker.get("pretrained")
        self.backbone = create_backbone({"name": marker["backbone"],
                                         "pretrained": str(Path(model_dir) / weights) if weights else None}).eval()
        self.preprocess = Preprocess(image_size=self.backbone.image_size, mean=self.backbone.image_mean,
                                     std=self.backbone.image_std)

    @torch.no_grad()
    def predict(self, model_input: object) -> np.ndarray:
        from genguard.data.images import image_inputs

        images = image_inputs(model_input)
        rows = [self.backbone.encode_image(self.preprocess.batch(images[i:i + 64])) for i in range(0, len(images), 64)]
        return (torch.cat(rows).float().numpy() if rows else np.zeros((0, self.backbone.embed_dim), np.float32))


PREDICTORS.register("backbone")(BackbonePredictor)
