"""Video networks the mixture-of-experts is made of: one registry, every network built the same way.

``build_network({"kind": ..., **options}, out_features)`` makes a router (``out_features`` = number of
experts) or an expert (``out_features`` = number of classes) from a config block, so a profile swaps a
tiny 3-D CNN for torchvision's ``r3d_18`` by config alone.

* ``tiny3d`` (embedded default, CPU): a (1, p, p)-stride patch stem, then 3x3x3 convolutions that halve
  the frame size, GroupNorm (never BatchNorm: an attack in eval mode and a training step in train mode
  then see the same function), global average pooling, a linear head. The temporal kernel of 3 is what
  lets it read motion; a frame alone carries no label in the embedded clips.
* ``r3d_18`` / ``mc3_18`` / ``r2plus1d_18`` (gpu profile): torchvision's video ResNets with a new head of
  ``out_features``; ``width`` < 64 narrows them (the paper's router is a light network), ``weights`` is a
  local state-dict file (no download at run time), loaded before the head is replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from genguard.registry import Registry

NETWORKS: Registry[nn.Module] = Registry("video network")


def build_network(spec: dict[str, Any], out_features: int) -> nn.Module:
    """A network from its config block ``{"kind": name, **options}``."""
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind is None:
        raise ValueError(f"a video network block needs a 'kind' (one of {NETWORKS.names()}), got {spec!r}")
    try:
        return NETWORKS.build(str(kind), out_features=out_features, **options)
    except TypeError as error:
        raise ValueError(f"bad options for video network {kind!r}: {options} ({error})") from None


def _groups(channels: int, wanted: int) -> int:
    """The largest group count <= ``wanted`` that divides ``channels`` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


class Tiny3DCNN(nn.Module):
    def __init__(self, out_features: int, width: int = 16, depth: int = 3, patch: int = 4,
                 norm_groups: int = 4) -> None:
        super().__init__()
        if depth < 1 or width < 1 or patch < 1:
            raise ValueError(f"tiny3d needs depth, width and patch >= 1, got {depth}, {width}, {patch}")
        layers: list[nn.Module] = [
            nn.Conv3d(3, width, kernel_size=(3, patch, patch), stride=(1, patch, patch), padding=(1, 0, 0)),
            nn.GroupNorm(_groups(width, norm_groups), width), nn.ReLU(inplace=True)]
        channels = width
        for _ in range(depth - 1):
            wider = channels * 2
            layers += [nn.Conv3d(channels, wider, kernel_size=3, stride=(1, 2, 2), padding=1),
                       nn.GroupNorm(_groups(wider, norm_groups), wider), nn.ReLU(inplace=True)]
            channels = wider
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, out_features)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(clips).mean(dim=(2, 3, 4)))


@NETWORKS.register("tiny3d")
def tiny3d(out_features: int, **options: Any) -> nn.Module:
    return Tiny3DCNN(out_features, **options)


def _torchvision_video(name: str, out_features: int, width: int = 64, weights: str | None = None) -> nn.Module:
    from torchvision.models import video

    builder = getattr(video, name)
    network = builder(weights=None)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{name} weights not found at {path}: put a torchvision state dict there "
                                    "(the gpu profile never downloads) or set weights: null")
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if width != 64:
        if weights:
            raise ValueError(f"{name}: pretrained weights need the full width 64, got width={width}")
        # torchvision's video ResNets hard-code 64 stem channels; a narrower router is the same
        # topology with every layer scaled, built through the generic VideoResNet class.
        network = _narrow_video_resnet(name, width)
    network.fc = nn.Linear(network.fc.in_features, out_features)
    return network


def _narrow_video_resnet(name: str, width: int) -> nn.Module:
    from torchvision.models.video import resnet as vr

    blocks = {"r3d_18": (vr.BasicBlock, [vr.Conv3DSimple] * 4, vr.BasicStem),
              "mc3_18": (vr.BasicBlock, [vr.Conv3DSimple] + [vr.Conv3DNoTemporal] * 3, vr.BasicStem),
              "r2plus1d_18": (vr.BasicBlock, [vr.Conv2Plus1D] * 4, vr.R2Plus1dStem)}
    block, conv_makers, stem = blocks[name]

    class NarrowVideoResNet(vr.VideoResNet):
        def __init__(self) -> None:
            super().__init__(block, conv_makers, [2, 2, 2, 2], stem)
            self.inplanes = width
            scale = width / 64
            self.stem = _scaled_stem(stem, width)
            planes = [max(1, round(p * scale)) for p in (64, 128, 256, 512)]
            self.layer1 = self._make_layer(block, conv_makers[0], planes[0], 2, stride=1)
            self.layer2 = self._make_layer(block, conv_makers[1], planes[1], 2, stride=2)
            self.layer3 = self._make_layer(block, conv_makers[2], planes[2], 2, stride=2)
            self.layer4 = self._make_layer(block, conv_makers[3], planes[3], 2, stride=2)
            self.fc = nn.Linear(planes[3], 400)

    return NarrowVideoResNet()


def _scaled_stem(stem: type, width: int) -> nn.Module:
    if stem.__name__ == "R2Plus1dStem":
        mid = max(1, width * 45 // 64)
        return nn.Sequential(
            nn.Conv3d(3, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, (3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv3d(3, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                         nn.BatchNorm3d(width), nn.ReLU(inplace=True))


for _name in ("r3d_18", "mc3_18", "r2plus1d_18"):
    NETWORKS.register(_name)(lambda out_features, _n=_name, **options: _torchvision_video(_n, out_features, **options))
